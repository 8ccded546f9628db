"""Serial link throughput: lines/s of our host against the virtual firmware on a pty.

Simulated 115200 and 250000 baud (a UART each way, 10 bits a byte: 11520 and 25000 bytes/s),
with and without ADVANCED_OK, beside a plain one-line-per-ok sender in the same run. The
firmware runs each command for `--command-time` seconds and answers `ok` when it is done,
BUFSIZE 4, RX buffer 128 bytes. The wire column is the host->firmware byte rate as a share of
the simulated byte rate.

    python bench/serial.py [--lines N] [--command-time S]
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

# `python bench/serial.py` puts bench/ first on sys.path, where this file would shadow pyserial.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.modules.pop("serial", None)

import serial  # noqa: E402

from gotapi3dp.config import FirmwareConfig  # noqa: E402
from printer.firmware import PtyFirmware  # noqa: E402
from printer.gcode import format_line  # noqa: E402
from printer.serial_link import SerialLink  # noqa: E402

COMMAND_TIME = 0.001        # seconds a command runs: parse and plan a short G1 (planner not full)


def workload(n: int) -> list[str]:
    """Typical slicer moves (~30 bytes framed)."""
    return [f"G1 X{100 + (i % 50) * 0.7:.3f} Y{100 + (i % 37) * 0.9:.3f} E{i * 0.031:.5f}"
            for i in range(n)]


def plain(port: str, lines: list[str]) -> float:
    """The classic host: one numbered line, wait for its `ok`, next."""
    with serial.Serial(port, 115200, timeout=2.0) as link:
        link.write(format_line(0, "M110 N0"))
        while not link.readline().startswith(b"ok"):
            pass
        started = time.monotonic()
        for n, command in enumerate(lines, 1):
            link.write(format_line(n, command))
            while not link.readline().startswith(b"ok"):
                pass
        return time.monotonic() - started


def ours(port: str, lines: list[str]) -> float:
    link = SerialLink(port, ok_timeout=5.0)
    link.open()
    try:
        started = time.monotonic()
        stats = link.stream(lines)
        assert stats.lines_sent == len(lines) and stats.resends == 0
        return time.monotonic() - started
    finally:
        link.close()


def serve_firmware(config: FirmwareConfig, log: Path, conn: Connection) -> None:
    """The firmware in its own process, as a board is: no GIL shared with the host."""
    firmware = PtyFirmware(config, log)
    conn.send(firmware.start())
    conn.recv()                                  # until told to stop
    firmware.stop()


def run(baud: int, advanced_ok: bool, host: str, lines: list[str], tmp: Path,
        command_time: float) -> float:
    config = FirmwareConfig(baud=baud, advanced_ok=advanced_ok, heat_rate=1e6,
                            command_time=command_time)
    ours_end, its_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(
        target=serve_firmware, args=(config, tmp / f"{baud}-{advanced_ok}-{host}.log", its_end))
    child.start()
    try:
        return (ours if host == "ours" else plain)(ours_end.recv(), lines)
    finally:
        ours_end.send("stop")
        child.join(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--command-time", type=float, default=COMMAND_TIME,
                        help=f"seconds the firmware runs each command (default {COMMAND_TIME})")
    args = parser.parse_args(argv)
    lines = workload(args.lines)
    wire = sum(len(format_line(n, c)) for n, c in enumerate(lines, 1))
    print(f"{args.lines} lines, {wire / args.lines:.1f} bytes a line framed, "
          f"{args.command_time * 1000:g} ms a command")
    print(f"{'baud':>7} {'ADVANCED_OK':>11} {'host':>6} {'lines/s':>8} {'wire':>6} {'vs plain':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for baud in (115200, 250000):
            for advanced_ok in (False, True):
                base = run(baud, advanced_ok, "plain", lines, Path(tmp), args.command_time)
                for host in ("plain", "ours"):
                    seconds = base if host == "plain" else run(
                        baud, advanced_ok, host, lines, Path(tmp), args.command_time)
                    share = wire / seconds / (baud / 10)
                    print(f"{baud:>7} {'yes' if advanced_ok else 'no':>11} {host:>6} "
                          f"{len(lines) / seconds:>8.0f} {share:>6.0%} {base / seconds:>7.2f}x",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
