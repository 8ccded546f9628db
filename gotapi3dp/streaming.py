"""`gotapi-3dp stream`: a standalone serial host for a G-code file, with progress and a report."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from printer.gcode import strip_comment
from printer.serial_link import SerialLink

from .config import Config


def stream_file(path: Path, port: str, baud: int, config: Config, console: Console) -> int:
    lines = path.read_text(errors="replace").splitlines()
    total = sum(1 for line in lines if strip_comment(line))
    link = SerialLink(port, baud, ok_timeout=config.printer.ok_timeout,
                      max_resends=config.printer.max_resends)
    link.open()
    try:
        columns = (TextColumn(f"[bold]{path.name}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("stream", total=total)
            stats = link.stream(lines, on_sent=lambda n: progress.update(task, completed=n))
    finally:
        link.close()
    console.print(f"lines {stats.lines_sent}, resends {stats.resends}, checksum errors "
                  f"{stats.checksum_errors}, timeouts {stats.timeouts}, time {stats.seconds:.1f} s")
    return 0
