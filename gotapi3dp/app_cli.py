"""The command-line app: `print`, `printers`, `contents list`, `jobs` against a running stack.

A GotAPI client like any other (GotAPI-1/2 over HTTP, GotAPI-5 events when the server has
them, else polling), driven by `<data-dir>/up.json` for the addresses and the contents key.
`jobs` is the operator's view: it reads the printer's own job API with the printer key from
the data dir, since GotAPI has no call that lists jobs.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import requests

from .client import GotapiClient, GotapiError
from .config import Config, ConfigError
from .http_json import call
from .wire.errors import ErrorCode
from .wire.ids import CONTENT_ID_RE

SCOPES = ["printer3d", "serviceDiscovery", "serviceInformation"]
APP_NAME = "gotapi-3dp CLI"
FINAL = ("completed", "failed", "cancelled")
JOB_POLL = 1.0          # seconds between job polls without events
SAFETY_POLL = 5.0       # with events, a slow poll in case one is lost
STATUS_POLL = 2.0
EXIT_OK, EXIT_FAIL, EXIT_INTERRUPTED = 0, 1, 130
MODEL_SUFFIXES = (".stl", ".3mf", ".obj", ".gcode")


# -- the stack and its clients ---------------------------------------------------------------
def load_up(config: Config) -> dict[str, Any]:
    path = Path(config.data_dir) / "up.json"
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"no running stack: {path} is missing (start one with `gotapi-3dp up`)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def gotapi_client(up: dict[str, Any]) -> GotapiClient:
    """An authorized client; the CLI ships with the server and uses the server's origin."""
    app = GotapiClient(up["gotapi"], origin=up["gotapi"].rstrip("/"), timeout=90)
    app.authorize(APP_NAME, SCOPES)
    return app


def contents_call(up: dict[str, Any], method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    return call(requests.Session(), method, f"{up['contents'].rstrip('/')}{path}",
                unavailable=ErrorCode.CONTENTS_UNAVAILABLE,
                headers={"X-Api-Key": up["contentsKey"]}, **kwargs)


def _emit(args: Any, rows: list[dict[str, Any]], columns: list[tuple[str, str]], title: str,
          table_rows: list[dict[str, Any]] | None = None) -> None:
    """`rows` as JSON (`--json`), else `table_rows` (default `rows`) as a table of `columns`.
    Id columns (key `id` or `...Id`) are never cut, so an id can be pasted into a command:
    they keep the width of their longest value. Other columns fold, down to one character;
    nothing is elided. A terminal too narrow even for that gets a wider table."""
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    from rich.cells import cell_len
    from rich.table import Table

    from .console import console
    shown = rows if table_rows is None else table_rows
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in shown]
    table = Table(title=title, title_justify="left")
    needed = 1                                          # the left border
    for index, (key, header) in enumerate(columns):
        is_id = key == "id" or key.endswith("Id")
        least = max([cell_len(header), *(cell_len(line[index]) for line in cells)]) if is_id else 1
        table.add_column(header, no_wrap=is_id, min_width=least, overflow="fold")
        needed += least + 3                             # padding each side, right border
    for line in cells:
        table.add_row(*line)
    out = console(highlight=False)
    out.width = max(out.width, needed)
    out.print(table if shown else f"{title}: none", crop=False)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


# -- printers, contents list, jobs -------------------------------------------------------------
def cmd_printers(args: Any, config: Config) -> int:
    try:
        services = gotapi_client(load_up(config)).request("GET", "serviceDiscovery")["services"]
    except GotapiError as exc:
        print(f"gotapi-3dp: GotAPI error {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAIL
    _emit(args, services, [("id", "service id"), ("name", "name"), ("online", "online"),
                           ("type", "type")], "printers")
    return EXIT_OK


def cmd_contents_list(args: Any, config: Config) -> int:
    contents = contents_call(load_up(config), "GET", "/api/contents")["contents"]
    _emit(args, contents, [("id", "id"), ("name", "name"), ("format", "format"),
                           ("bytes", "bytes"), ("prints", "prints")], "contents")
    return EXIT_OK


def cmd_jobs(args: Any, config: Config) -> int:
    """The printer's jobs (operator view: the printer key from the data dir)."""
    up = load_up(config)
    key_path = Path(up.get("dataDir") or config.data_dir) / "printer" / "api.key"
    try:
        key = key_path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the printer key {key_path}: {exc.strerror}") from None
    jobs = call(requests.Session(), "GET", f"{up['printer'].rstrip('/')}/api/jobs",
                unavailable=ErrorCode.PRINTER_UNAVAILABLE, headers={"X-Api-Key": key})["jobs"]
    rows = [{k: v for k, v in job.items() if k != "stats"} for job in jobs]
    table_rows = [{**row, "errorText": _error_text(row.get("error"))} for row in rows]
    _emit(args, rows, [("id", "job id"), ("state", "state"), ("progress", "progress %"),
                       ("layers", "layers"), ("contentId", "content"), ("errorText", "error")],
          "jobs", table_rows)
    return EXIT_OK


def _error_text(error: Any) -> str | None:
    if not isinstance(error, dict):
        return None
    return f"{error.get('code')} {error.get('name', '')}: {error.get('message', '')}".strip()


# -- print ----------------------------------------------------------------------------------
def looks_like_path(target: str) -> bool:
    """Whether `target` names a file: a path separator, a leading "." or "~", or a model
    suffix. A content id (letters, digits, "_", "-": CONTENT_ID_RE) has none of these."""
    if CONTENT_ID_RE.fullmatch(target):
        return False
    return ("/" in target or "\\" in target or target.startswith((".", "~"))
            or target.lower().endswith(MODEL_SUFFIXES))


def check_target(target: str) -> None:
    """Refuse a file that is not there before any request (else it reaches the server as a
    malformed content id)."""
    path = Path(target).expanduser()
    if not path.is_file() and looks_like_path(target):
        raise ConfigError(f"not a file: {target}" if path.exists() else f"no such file: {target}")


def resolve_content(up: dict[str, Any], target: str, say: Any) -> str:
    """A content id, or a model file that is added to the contents server first."""
    path = Path(target).expanduser()
    if not path.is_file():
        return target
    with open(path, "rb") as fh:
        content = contents_call(up, "POST", "/api/contents", timeout=120,
                                files={"file": (path.name, fh, "application/octet-stream")},
                                data={"name": path.stem})
    say(f"added {path.name} to the contents server as {content['id']}")
    return str(content["id"])


def choose_printer(app: GotapiClient, wanted: str | None) -> dict[str, Any]:
    services = app.request("GET", "serviceDiscovery")["services"]
    for service in services:
        if wanted in (service["id"], service["id"].split(".")[0]) or (wanted is None and service["online"]):
            return dict(service)
    if wanted:
        raise GotapiError(ErrorCode.NOT_FOUND_SERVICE, f"no printer {wanted!r}")
    raise GotapiError(ErrorCode.NOT_FOUND_SERVICE, "no printer is online")


def cmd_print(args: Any, config: Config) -> int:
    from .console import console as make_console
    console = make_console(highlight=False)
    check_target(args.target)
    up = load_up(config)
    try:
        content_id = resolve_content(up, args.target, console.print)
        app = gotapi_client(up)
        printer = choose_printer(app, args.printer)
        conn = app.request("POST", "printer3d/connect", serviceId=printer["id"],
                           contentId=content_id, contentsKey=up["contentsKey"])
        content = conn["content"]
        console.print(f"printer [bold]{printer['name']}[/] ({printer['id']}), model [bold]"
                      f"{content['name']}[/] ({content['format']}, {content['bytes']} bytes)")
        job_id = app.request("POST", "printer3d/print", serviceId=printer["id"],
                             connectionId=conn["connectionId"])["jobId"]
        console.print(f"job {job_id} started")
        job = JobFollower(app, printer["id"], job_id, console).run()
    except GotapiError as exc:
        console.print(f"[red]GotAPI error {exc.code}: {exc.message}[/]")
        return EXIT_FAIL
    return _summary(job, console)


def _summary(job: dict[str, Any], console: Any) -> int:
    colour = "green" if job["state"] == "completed" else "red"
    console.print(f"job {job['id']}: [bold {colour}]{job['state']}[/] "
                  f"({job.get('progress', 0):.0f} %, layer {job.get('layer', 0)}/{job.get('layers', 0)})")
    if job.get("error"):
        console.print(f"[red]error {_error_text(job['error'])}[/]")
    return EXIT_OK if job["state"] == "completed" else EXIT_FAIL


# -- following a job ------------------------------------------------------------------------------
class JobEvents:
    """GotAPI-5: the WebSocket and the onJobChange registration, or nothing (`open` False)."""

    def __init__(self, app: GotapiClient, service_id: str) -> None:
        self._app = app
        self._service_id = service_id
        self._ws: Any = None

    def open(self) -> bool:
        import simple_websocket
        url = self._app.base_url.replace("http://", "ws://", 1).rstrip("/") + "/gotapi/websocket"
        try:
            ws = simple_websocket.Client.connect(url, headers={"Origin": self._app.origin})
            ws.send(json.dumps({"accessToken": self._app.access_token}))
            first = json.loads(ws.receive(timeout=10) or "{}")
            if first.get("result") != 0:
                ws.close()
                return False
            self._app.request("PUT", "printer3d/onJobChange", serviceId=self._service_id)
        except (OSError, ValueError, GotapiError, simple_websocket.ConnectionError,
                simple_websocket.ConnectionClosed):
            return False
        self._ws = ws
        return True

    def next_job(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        """The next onJobChange for `job_id` within `timeout` seconds, else None."""
        import simple_websocket
        deadline = time.monotonic() + timeout
        while self._ws is not None and time.monotonic() < deadline:
            try:
                raw = self._ws.receive(timeout=max(0.05, deadline - time.monotonic()))
            except simple_websocket.ConnectionClosed:
                self._ws = None
                return None
            event = _json(raw)
            job = event.get("job") if event.get("attribute") == "onJobChange" else None
            if isinstance(job, dict) and job.get("id") == job_id:
                return job
        return None

    @property
    def live(self) -> bool:
        return self._ws is not None

    def close(self) -> None:
        if self._ws is None:
            return
        try:
            self._app.request("DELETE", "printer3d/onJobChange", serviceId=self._service_id)
        except (GotapiError, requests.RequestException):
            pass
        self._ws.close()
        self._ws = None


def _json(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class View:
    """What the live display shows."""

    job: dict[str, Any]
    temps: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    printing_since: float = 0.0
    channel: str = "polling"

    def eta(self) -> str:
        progress = float(self.job.get("progress") or 0)
        if self.job.get("state") != "printing" or progress <= 0 or not self.printing_since:
            return "-"
        return _seconds((time.monotonic() - self.printing_since) * (100 - progress) / progress)

    def temps_text(self) -> str:
        parts = []
        for name in ("hotend", "bed"):
            t = self.temps.get(name) or {}
            actual, target = t.get("actual"), t.get("target")
            if actual is not None:
                parts.append(f"{name} {actual:.0f}/{target or 0:.0f} °C")
        return "  ".join(parts) or "-"

    def line(self) -> str:
        job = self.job
        layer = f"{job.get('layer', 0)}/{job.get('layers', 0)}" if job.get("layers") else "-"
        return (f"{job['state']:<14} {float(job.get('progress') or 0):5.1f} %  layer {layer:<9} "
                f"{self.temps_text()}  elapsed {_seconds(time.monotonic() - self.started)}  "
                f"ETA {self.eta()}")

    def render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        grid = Table.grid(padding=(0, 2))
        grid.add_row("[bold]" + self.job["state"], ProgressBar(total=100, completed=float(
            self.job.get("progress") or 0), width=40), f"{float(self.job.get('progress') or 0):5.1f} %")
        layer = f"{self.job.get('layer', 0)}/{self.job.get('layers', 0)}" if self.job.get("layers") else "-"
        grid.add_row("layer", layer, "")
        grid.add_row("temperatures", self.temps_text(), "")
        grid.add_row("elapsed / ETA", f"{_seconds(time.monotonic() - self.started)} / {self.eta()}", "")
        grid.add_row("events", self.channel, "[dim]Ctrl-C to cancel[/]")
        return grid


def _seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


class JobFollower:
    """Follow one job to its end: events or polling, temperatures, a live view, Ctrl-C."""

    def __init__(self, app: GotapiClient, service_id: str, job_id: str, console: Any) -> None:
        self.app = app
        self.service_id = service_id
        self.job_id = job_id
        self.console = console
        self.events = JobEvents(app, service_id)
        self.view = View({"id": job_id, "state": "queued", "progress": 0, "layer": 0, "layers": 0})

    def run(self) -> dict[str, Any]:
        live = self.events.open()
        self.view.channel = "GotAPI-5 WebSocket" if live else "polling every second"
        self.console.print(f"following the job: {self.view.channel}")
        try:
            while True:
                try:
                    return self._follow()
                except KeyboardInterrupt:
                    self._ask_cancel()
        finally:
            self.events.close()

    def _follow(self) -> dict[str, Any]:
        last_line = ""
        for job in self._updates():
            self._set(job)
            if self.console.is_terminal:
                self._live_until_done()
                return self.view.job
            line = f"{job['state']} layer {job.get('layer', 0)}/{job.get('layers', 0)}"
            if line != last_line:           # a plain log when the output is not a terminal
                self.console.print(self.view.line())
                last_line = line
            if job["state"] in FINAL:
                return job
        return self.view.job

    def _live_until_done(self) -> None:
        from rich.live import Live
        with Live(self.view.render(), console=self.console, refresh_per_second=4) as live:
            if self.view.job["state"] in FINAL:
                return
            for job in self._updates():
                self._set(job)
                live.update(self.view.render())
                if job["state"] in FINAL:
                    return

    def _updates(self) -> Iterator[dict[str, Any]]:
        """Job views as they change: events when live, polls otherwise; temperatures too."""
        next_poll = next_status = 0.0
        while True:
            now = time.monotonic()
            if now >= next_status:
                self._poll_status()
                next_status = now + STATUS_POLL
            if now >= next_poll:
                next_poll = now + (SAFETY_POLL if self.events.live else JOB_POLL)
                yield self.app.request("GET", "printer3d/job", serviceId=self.service_id,
                                       jobId=self.job_id)["job"]
                continue
            wait = min(next_poll, next_status) - time.monotonic()
            if self.events.live:
                job = self.events.next_job(self.job_id, max(wait, 0.05))
                if job is not None:
                    yield job
            else:
                time.sleep(max(wait, 0.05))

    def _set(self, job: dict[str, Any]) -> None:
        if job["state"] == "printing" and not self.view.printing_since:
            self.view.printing_since = time.monotonic()
        self.view.job = {**self.view.job, **job}

    def _poll_status(self) -> None:
        try:
            status = self.app.request("GET", "printer3d/status", serviceId=self.service_id)
            self.view.temps = status.get("temperatures") or {}
        except GotapiError:
            pass                        # temperatures are a nicety; the job poll reports errors

    def _ask_cancel(self) -> None:
        try:
            answer = input(f"\nCancel job {self.job_id}? [y/N] ").strip().lower()
        except EOFError:
            answer = ""
        if answer in ("y", "yes"):
            self.app.request("DELETE", "printer3d/job", serviceId=self.service_id, jobId=self.job_id)
            self.console.print("cancel requested")
        else:
            self.console.print("the job goes on")
        sys.stdout.flush()
