"""`gotapi-3dp up`: start the four processes, pair them, supervise, and stop them cleanly.

Each process is `gotapi-3dp serve NAME` in its own session (Ctrl-C reaches only us, and we
stop the children in reverse order); its output goes to `<data-dir>/logs/NAME.log`. A child
that dies is restarted with back-off. Linux children also get SIGTERM if we die.

Before starting anything it refuses to run beside a live stack: one whose `up.json` names a
live `up`, or any process holding a port the stack needs. During start-up a child is up only
when its own process group listens on its ports (from /proc), not whoever answers there.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

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
GROUP_SETTLE = 2.0      # s a stopped child's helpers get to notice and leave on their own
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


# -- pre-flight: never start beside a running stack ------------------------------------------
@dataclass(frozen=True)
class Listener:
    """A TCP address a supervised process binds."""

    server: str           # the child that binds it (START_ORDER name)
    what: str             # what it is, for messages
    host: str
    port: int


def stack_listeners(config: Config) -> list[Listener]:
    """Every TCP address the stack binds: the three HTTP servers and the bus's tcp://
    endpoints (a port 0 or a non-tcp endpoint needs no check)."""
    found = [Listener("gotapi", "GotAPI server (HTTP)", config.gotapi.host, config.gotapi.port),
             Listener("contents", "contents server", config.contents.host, config.contents.port),
             Listener("printer", "printer", config.printer.host, config.printer.port)]
    for what, endpoint in (("intent bus", config.gotapi.bus_endpoint),
                           ("bus tap", config.gotapi.tap_endpoint)):
        parts = urlsplit(endpoint)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme == "tcp" and parts.hostname and port:
            host = "" if parts.hostname == "*" else parts.hostname
            found.append(Listener("gotapi", f"GotAPI server ({what})", host, port))
    return [x for x in found if x.port]


def port_in_use(host: str, port: int) -> OSError | None:
    """The error binding host:port gives (as the servers bind: SO_REUSEADDR), or None if it
    is free. The socket is closed at once. An address that does not resolve is not checked
    (the server reports it itself)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        return None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            return exc
    return None


def check_ports_free(config: Config) -> None:
    """Refuse (StartError) if a port the stack binds is taken, naming it and its server."""
    for listener in stack_listeners(config):
        error = port_in_use(listener.host, listener.port)
        if error is not None:
            raise StartError(f"port {listener.port} on {listener.host or '*'} is taken "
                             f"({error.strerror or error}); the {listener.what} needs it. "
                             f"Is another gotapi-3dp stack running? Stop it or change the port.")


def _cmdline(pid: int) -> list[str] | None:
    """A process's arguments from /proc; None without /proc (not Linux); [] if it is gone
    or a zombie."""
    if not os.path.isdir("/proc/self"):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [arg.decode(errors="replace") for arg in fh.read().split(b"\0") if arg]
    except OSError:
        return []


def is_up_process(pid: int) -> bool:
    """Whether `pid` is a live `gotapi-3dp up` (or `demo`, which runs one): by its command
    line where /proc tells it, else by its being alive."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                  # alive, someone else's
    args = _cmdline(pid)
    if args is None:
        return True
    ours = any("gotapi-3dp" in os.path.basename(a) or a.startswith("gotapi3dp") for a in args)
    return ours and ("up" in args or "demo" in args)


def check_not_running(config: Config) -> None:
    """Refuse (StartError) if `up.json` names a live supervisor; a stale one is left to
    be replaced."""
    path = config.data_dir / "up.json"
    try:
        pid = json.loads(path.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(pid, int) and is_up_process(pid):
        raise StartError(f"a stack is already running on data dir {config.data_dir} "
                         f"(gotapi-3dp up, pid {pid}; see {path}); stop it first")


def _listening_inodes(port: int) -> set[int] | None:
    """Inodes of the sockets listening on TCP `port`, any address; None without /proc."""
    inodes: set[int] = set()
    tables = [t for t in ("/proc/net/tcp", "/proc/net/tcp6") if os.path.exists(t)]
    if not tables:
        return None
    for table in tables:
        with open(table) as fh:
            next(fh, None)                    # the header
            for line in fh:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(int(fields[9]))
    return inodes


def _socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets a process has open."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    found.add(int(target[8:-1]))
    return found


def group_listens_on(group: int, port: int) -> bool | None:
    """Whether a process of `group` listens on TCP `port`; None if /proc cannot tell."""
    listening = _listening_inodes(port)
    if listening is None:
        return None
    if not listening:
        return False
    try:
        members = [pid for pid, _ in _group_members(group)]
    except OSError:
        return None
    return any(_socket_inodes(pid) & listening for pid in members)


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

    def end_group(self, timeout: float = GROUP_GRACE, settle: float = GROUP_SETTLE) -> bool:
        """Stop the processes the child left behind in its session (e.g. a Gunicorn worker
        whose master died: it would keep the printer's serial port and go on printing while
        its replacement starts). True if any had to be stopped.

        First `settle` s for them to leave by themselves: multiprocessing's forkserver and
        resource tracker (the printer's slicer pool) exit only once they read EOF from the
        worker that has just ended, so a clean stop always finds them for a moment. Then
        SIGTERM, and SIGKILL after `timeout` s."""
        if self.proc is None:
            return False
        group = self.proc.pid                 # start_new_session: the group is the child's pid
        if not _wait_group_gone(group, settle):
            return False
        log.warning("%s left processes behind; stopping them: %s", self.name,
                    _describe_group(group))
        _terminate_orphans(group)
        if _wait_group_gone(group, timeout):
            _signal_group(group, signal.SIGKILL)
        return True


def _wait_group_gone(group: int, timeout: float) -> bool:
    """Poll until the group is empty or `timeout` s passed; True if something is left."""
    deadline = time.monotonic() + timeout
    while _group_alive(group):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)
    return False


def _describe_group(group: int) -> str:
    """'pid (command), ...' of the group's live processes, for the log."""
    try:
        members = [pid for pid, _ in _group_members(group)]
    except OSError:
        return f"process group {group}"
    names = [f"{pid} ({' '.join(_cmdline(pid) or ['?'])[:80]})" for pid in members]
    return ", ".join(names) or f"process group {group}"


class Supervisor:
    def __init__(self, config: Config, config_path: str | None = None,
                 say: Callable[[str], None] = lambda msg: None) -> None:
        self.config = config
        self._say = say
        self._stopping = threading.Event()
        # Start-up is the only time we speak HTTP, a few calls: no keep-alive. A connection
        # of ours left idle held a server's graceful stop (Gunicorn lets kept-alive
        # connections linger up to 2 s, its keep-alive timeout under gevent).
        self._http = requests.Session()
        self._http.headers["Connection"] = "close"
        log_dir = config.dir_for("logs")
        base = [sys.executable, "-m", "gotapi3dp.cli", "--data-dir", str(config.data_dir)]
        if config_path:
            base += ["--config", str(config_path)]
        self.children = {name: Child(name, base + ["serve", name], log_dir / f"{name}.log")
                         for name in START_ORDER}
        self._lock_fd: int | None = None
        self._stopped = False

    # -- start-up -------------------------------------------------------------------------
    def start(self) -> UpInfo:
        """Start everything in order, pair, add the sample; return what up.json holds.

        Refuses (StartError) before touching anything if a stack already runs on the data
        dir or a port the stack needs is taken."""
        self._take_lock()
        try:
            check_not_running(self.config)
            check_ports_free(self.config)
        except BaseException:
            self._release_lock()
            raise
        try:
            for name in ("contents", "printer", "gotapi"):
                self.children[name].start()
            for name in ("contents", "printer", "gotapi"):
                self._wait_ready(name)
            contents_key, service_id = self._pair()
            sample_id = self._add_sample(contents_key)
            self.children["plugin-host"].start()
            service_id = self._wait_service(service_id)
        except BaseException:
            self.stop()
            raise
        finally:
            self._http.close()
        info = UpInfo(gotapi=self._gotapi_url, bus=self.config.gotapi.bus_endpoint,
                      tap=self.config.gotapi.tap_endpoint, contents=self.config.contents.url,
                      printer=self._printer_url, contentsKey=contents_key,
                      sampleContentId=sample_id, serviceId=service_id,
                      dataDir=str(self.config.data_dir), pid=os.getpid())
        replace_file(self.config.data_dir / "up.json", json.dumps(asdict(info), indent=1).encode(), 0o600)
        return info

    def _take_lock(self) -> None:
        """Hold `<data-dir>/up.lock` (flock) for this supervisor's life: of two `up`s
        started at the same instant, where both would find no up.json, one wins. The kernel
        drops the lock when the process ends, however it ends, so no lock is ever stale."""
        path = self.config.data_dir / "up.lock"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            check_not_running(self.config)    # says which up, if up.json names it already
            raise StartError(f"another gotapi-3dp up is starting on data dir "
                             f"{self.config.data_dir} (it holds {path}); stop it first") from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

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
            resp = self._http.get(urls[name], timeout=2,
                                  headers={"X-GotAPI-Origin": SUPERVISOR_ORIGIN})
            return resp.status_code == 200
        except requests.RequestException:
            return False

    def _wait_ready(self, name: str) -> None:
        """Wait until `name` answers and is the one listening on its ports: another
        server on the port answers too, while ours fails to bind and exits."""
        child = self.children[name]
        deadline = time.monotonic() + READY_TIMEOUT
        foreign: list[Listener] = []
        while time.monotonic() < deadline:
            if child.exit_code() is not None:
                raise StartError(f"{name} exited with code {child.exit_code()} during start-up:"
                                 f"\n{child.log_tail()}")
            if self._probe(name):
                foreign = self._foreign_listeners(child)
                if not foreign:
                    self._say(f"{name} is up")
                    return
            time.sleep(0.2)
        why = (f"another process answers on port {foreign[0].port}" if foreign
               else "it did not answer")
        raise StartError(f"{name} is not up after {READY_TIMEOUT:.0f} s ({why}):\n{child.log_tail()}")

    def _foreign_listeners(self, child: Child) -> list[Listener]:
        """The child's ports that a process outside its group listens on (none where /proc
        cannot tell: the probe alone decides there)."""
        assert child.proc is not None
        return [x for x in stack_listeners(self.config)
                if x.server == child.name and group_listens_on(child.proc.pid, x.port) is False]

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

    def _wait_service(self, local_id: str) -> str:
        """Wait until serviceDiscovery shows the printer online through the plug-in; return
        the serviceId GotAPI gives it (`printer-1.printer3d`), the one apps pass back."""
        child = self.children["plugin-host"]
        deadline = time.monotonic() + READY_TIMEOUT
        client = GotapiClient(self._gotapi_url, origin=SUPERVISOR_ORIGIN, timeout=15)
        client.session.headers["Connection"] = "close"      # see __init__
        with client.session:
            while time.monotonic() < deadline:
                if child.exit_code() is not None:
                    raise StartError(f"plugin-host exited with code {child.exit_code()}:\n"
                                     f"{child.log_tail()}")
                try:
                    if client.access_token is None:
                        client.authorize("gotapi-3dp supervisor", ["serviceDiscovery"])
                    for service in client.request("GET", "serviceDiscovery")["services"]:
                        if service["id"].split(".")[0] == local_id and service["online"]:
                            self._say("plug-in host is up; the printer is online")
                            return str(service["id"])
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

    def request_stop(self) -> None:
        """Make supervise() return (safe from a signal handler); stop() does the stopping."""
        self._stopping.set()

    def stop_requested(self) -> bool:
        return self._stopping.is_set()

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
        child.start()      # a stop requested meanwhile ends it: stop() follows supervise()

    def stop(self) -> None:
        """Stop every child, last started first. Once: a call after one that finished does
        nothing."""
        self._stopping.set()
        if self._stopped:
            return
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
        self._release_lock()
        self._stopped = True


def read_up_json(config: Config) -> dict[str, Any]:
    path = config.data_dir / "up.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise P3DError(ErrorCode.ILLEGAL_SERVER_STATE,
                       f"no running stack found ({path} missing): start one with `gotapi-3dp up`") from None
