"""`gotapi-3dp up`: start the four processes, pair them, supervise, and stop them cleanly.

Each process is `gotapi-3dp serve NAME` in its own session (Ctrl-C reaches only us, and we
stop the children in reverse order); its output goes to `<data-dir>/logs/NAME.log`. A child
that dies is restarted with back-off. Linux children also get SIGTERM if we die.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import requests

from .client import GotapiClient, GotapiError
from .config import Config
from .fsutil import replace_file
from .http_json import call
from .pairing import pair_printer
from .sample import sample_path
from .wire.errors import ErrorCode, P3DError

log = logging.getLogger(__name__)

START_ORDER = ("contents", "printer", "gotapi", "plugin-host")
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
RESTART_MIN, RESTART_MAX = 1.0, 30.0
GROUP_GRACE = 6.0       # s a crashed child's leftovers get to stop (Gunicorn's graceful timeout is 5)
SUPERVISOR_ORIGIN = "gotapi-3dp-supervisor"


class StartError(RuntimeError):
    """A process did not come up; the message carries the tail of its log."""


@dataclass
class UpInfo:
    """What `up.json` holds: everything a client needs to drive the embedded default."""

    gotapi: str
    bus: str
    tap: str
    contents: str
    printer: str
    contentsKey: str
    sampleContentId: str
    serviceId: str
    dataDir: str
    pid: int


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _signal_group(group: int, sig: int) -> bool:
    """Send `sig` to a process group; False if the group has no process left."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a pid reused by someone else's group: not ours to touch
        return False
    return True


def _group_alive(group: int) -> bool:
    """Whether a process group has a live (not zombie) process left."""
    try:
        return any(True for _ in _group_members(group))
    except OSError:
        return _signal_group(group, 0)


def _terminate_orphans(group: int) -> None:
    """SIGTERM the processes of `group` whose parent is not in it: what the dead child left
    (e.g. its Gunicorn worker), not their own children, which they stop themselves (a
    printer's slicer pool: killed under it, its job would fail instead of being interrupted).
    Without /proc, the whole group."""
    try:
        members = dict(_group_members(group))
    except OSError:
        _signal_group(group, signal.SIGTERM)
        return
    for pid, parent in members.items():
        if parent not in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)


def _group_members(group: int) -> Iterator[tuple[int, int]]:
    """(pid, parent pid) of every live process in a process group, from /proc."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue                          # gone meanwhile
        if int(fields[2]) == group and fields[0] != "Z":
            yield int(entry.name), int(fields[1])


class Child:
    """One supervised process."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started_at = 0.0

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.started_at = time.monotonic()

    def exit_code(self) -> int | None:
        """The exit code once the process has ended (negative: the signal that killed it).

        Peeks without reaping: the zombie keeps its pid, so its process group's id cannot be
        taken by another process while `end_group` cleans up. `reap()` collects it.
        """
        if self.proc is None:
            return None
        if self.proc.returncode is not None:
            return self.proc.returncode
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:       # already reaped elsewhere
            return self.proc.poll()
        if info is None or info.si_pid == 0:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def reap(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM); `wait` then reaps it."""
        if self.proc is not None and self.exit_code() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        """Wait for the process, killing it if it has not stopped within `timeout` s; end
        what is left of its process group; reap it."""
        if self.proc is None:
            return
        if not self._ended_within(timeout):
            log.warning("%s did not stop in time; killing it", self.name)
            self.proc.kill()
            self._ended_within(5.0)
        self.end_group(timeout=1.0)
        self.reap()

    def _ended_within(self, timeout: float) -> bool:
        end = time.monotonic() + max(0.0, timeout)
        while self.exit_code() is None:
            if time.monotonic() >= end:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        self.terminate()
        self.wait(timeout)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def end_group(self, timeout: float = GROUP_GRACE) -> bool:
        """Stop the processes the child left behind in its session (e.g. a Gunicorn worker
        whose master died: it would keep the printer's serial port and go on printing while
        its replacement starts). SIGTERM, then SIGKILL after `timeout` s. True if any."""
        if self.proc is None:
            return False
        group = self.proc.pid                 # start_new_session: the group is the child's pid
        if not _group_alive(group):
            return False
        log.warning("%s left processes behind; stopping them", self.name)
        _terminate_orphans(group)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _group_alive(group):
                return True
            time.sleep(0.05)
        _signal_group(group, signal.SIGKILL)
        return True


class Supervisor:
    def __init__(self, config: Config, config_path: str | None = None,
                 say: Callable[[str], None] = lambda msg: None) -> None:
        self.config = config
        self._say = say
        self._stopping = threading.Event()
        self._http = requests.Session()
        log_dir = config.dir_for("logs")
        base = [sys.executable, "-m", "gotapi3dp.cli", "--data-dir", str(config.data_dir)]
        if config_path:
            base += ["--config", str(config_path)]
        self.children = {name: Child(name, base + ["serve", name], log_dir / f"{name}.log")
                         for name in START_ORDER}

    # -- start-up -------------------------------------------------------------------------
    def start(self) -> UpInfo:
        """Start everything in order, pair, add the sample; return what up.json holds."""
        try:
            for name in ("contents", "printer", "gotapi"):
                self.children[name].start()
            for name in ("contents", "printer", "gotapi"):
                self._wait_ready(name)
            contents_key, service_id = self._pair()
            sample_id = self._add_sample(contents_key)
            self.children["plugin-host"].start()
            self._wait_service(service_id)
        except BaseException:
            self.stop()
            raise
        info = UpInfo(gotapi=self._gotapi_url, bus=self.config.gotapi.bus_endpoint,
                      tap=self.config.gotapi.tap_endpoint, contents=self.config.contents.url,
                      printer=self._printer_url, contentsKey=contents_key,
                      sampleContentId=sample_id, serviceId=service_id,
                      dataDir=str(self.config.data_dir), pid=os.getpid())
        replace_file(self.config.data_dir / "up.json", json.dumps(asdict(info), indent=1).encode(), 0o600)
        return info

    @property
    def _gotapi_url(self) -> str:
        return f"http://{self.config.gotapi.host}:{self.config.gotapi.port}"

    @property
    def _printer_url(self) -> str:
        return f"http://{self.config.printer.host}:{self.config.printer.port}"

    def _probe(self, name: str) -> bool:
        urls = {"contents": f"{self.config.contents.url}/api/health",
                "printer": f"{self._printer_url}/api/identity",
                "gotapi": f"{self._gotapi_url}/gotapi/availability"}
        try:
            resp = self._http.get(urls[name], timeout=2, headers={"X-GotAPI-Origin": SUPERVISOR_ORIGIN})
            return resp.status_code == 200
        except requests.RequestException:
            return False

    def _wait_ready(self, name: str) -> None:
        child = self.children[name]
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if child.exit_code() is not None:
                raise StartError(f"{name} exited with code {child.exit_code()}:\n{child.log_tail()}")
            if self._probe(name):
                self._say(f"{name} is up")
                return
            time.sleep(0.2)
        raise StartError(f"{name} did not answer within {READY_TIMEOUT:.0f} s:\n{child.log_tail()}")

    def _pair(self) -> tuple[str, str]:
        from plugin_host.printer3d.printers import save_paired
        contents_key = (self.config.dir_for("contents") / "demo.key").read_text().strip()
        printer_key = (self.config.dir_for("printer") / "api.key").read_text().strip()
        service_id = self.config.printer.printer_id
        entry = pair_printer(self._printer_url, printer_key, self.config.contents.url,
                             contents_key, service_id, self.config.printer.name)
        save_paired(self.config, entry)
        self._say(f"printer {entry.printer_id} paired with the contents server and the plug-in")
        return contents_key, service_id

    def _add_sample(self, contents_key: str) -> str:
        path = sample_path()
        with open(path, "rb") as fh:
            content = call(self._http, "POST", f"{self.config.contents.url}/api/contents",
                           unavailable=ErrorCode.CONTENTS_UNAVAILABLE,
                           headers={"X-Api-Key": contents_key},
                           files={"file": (path.name, fh, "model/stl")},
                           data={"name": "Calibration piece"})
        return str(content["id"])

    def _wait_service(self, local_id: str) -> None:
        """Wait until serviceDiscovery shows the printer online through the plug-in."""
        client = GotapiClient(self._gotapi_url, origin=SUPERVISOR_ORIGIN, timeout=15)
        child = self.children["plugin-host"]
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if child.exit_code() is not None:
                raise StartError(f"plugin-host exited with code {child.exit_code()}:\n{child.log_tail()}")
            try:
                if client.access_token is None:
                    client.authorize("gotapi-3dp supervisor", ["serviceDiscovery"])
                services = client.request("GET", "serviceDiscovery")["services"]
                if any(s["id"].split(".")[0] == local_id and s["online"] for s in services):
                    self._say("plug-in host is up; the printer is online")
                    return
            except (GotapiError, requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.3)
        raise StartError(f"the printer service did not come online:\n{child.log_tail()}")

    # -- supervision ----------------------------------------------------------------------
    def supervise(self) -> None:
        """Restart children that die, with back-off, until stop() is called."""
        while not self._stopping.wait(0.5):
            for child in self.children.values():
                self._maybe_restart(child)

    def _maybe_restart(self, child: Child) -> None:
        code = child.exit_code()
        if code is None or self._stopping.is_set():
            return
        if time.monotonic() - child.started_at > 60:
            child.restarts = 0
        delay = min(RESTART_MAX, RESTART_MIN * 2 ** child.restarts)
        self._say(f"{child.name} exited with code {code}; restarting in {delay:.0f} s")
        log.warning("%s exited (%s):\n%s", child.name, code, child.log_tail())
        if child.end_group():
            self._say(f"{child.name} had left processes running; stopped them")
        child.reap()
        if self._stopping.wait(delay):
            return
        child.restarts += 1
        child.start()

    def stop(self) -> None:
        """Stop every child, last started first."""
        self._stopping.set()
        # All at once (last started first), then reap: stopping takes the slowest child's
        # time, not the sum of them all.
        for name in reversed(START_ORDER):
            self.children[name].terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for name in reversed(START_ORDER):
            self.children[name].wait(deadline - time.monotonic())
        up_json = self.config.data_dir / "up.json"
        try:
            if json.loads(up_json.read_text()).get("pid") == os.getpid():
                up_json.unlink()
        except (OSError, ValueError):
            pass


def read_up_json(config: Config) -> dict[str, Any]:
    path = config.data_dir / "up.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise P3DError(ErrorCode.ILLEGAL_SERVER_STATE,
                       f"no running stack found ({path} missing): start one with `gotapi-3dp up`") from None
