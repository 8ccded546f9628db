"""The supervisor's child handling with real processes: leftovers of a crashed child end;
and its refusal to start beside a running stack (up.json, ports, someone else's server)."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gotapi3dp import supervisor as sup
from gotapi3dp.config import Config, load_config
from gotapi3dp.supervisor import Child, StartError, Supervisor

# A parent that starts a grandchild in its own session's group, prints its pid, and dies:
# what a Gunicorn master killed with SIGKILL leaves behind (its worker).
ORPHANING = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", {worker!r}])
print(worker.pid, flush=True)
time.sleep(0.3)
"""
POLITE = "import time\nwhile True: time.sleep(0.1)"
STUBBORN = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "while True: time.sleep(0.1)")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:                   # a zombie is not alive
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def crashed_child(tmp_path: Path, worker: str) -> tuple[Child, int]:
    child = Child("printer", [sys.executable, "-c", ORPHANING.format(worker=worker)],
                  tmp_path / "printer.log")
    child.start()
    assert child._ended_within(10)                          # noqa: SLF001 (as the supervisor)
    grandchild = int((tmp_path / "printer.log").read_text().split()[0])
    assert alive(grandchild)                                # the leftover is really there
    return child, grandchild


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def test_leftovers_of_a_crashed_child_are_stopped(tmp_path):
    child, grandchild = crashed_child(tmp_path, POLITE)
    assert child.end_group(timeout=5.0)
    assert wait_gone(grandchild)
    assert not child.end_group()                            # nothing left the second time


def test_the_warning_names_the_leftovers(tmp_path, caplog):
    child, grandchild = crashed_child(tmp_path, POLITE)
    with caplog.at_level(logging.WARNING, logger="gotapi3dp.supervisor"):
        assert child.end_group(timeout=5.0, settle=0.2)
    assert f"{grandchild} (" in caplog.text and "left processes behind" in caplog.text


def test_helpers_that_leave_on_their_own_are_no_leftovers(tmp_path, caplog):
    """A clean stop of the printer always finds multiprocessing's fork server and resource
    tracker for a moment (they leave once they read EOF from the ended worker): that is
    no cause for a warning, nor for a SIGTERM."""
    child, grandchild = crashed_child(tmp_path, "import time; time.sleep(0.6)")
    with caplog.at_level(logging.WARNING, logger="gotapi3dp.supervisor"):
        assert not child.end_group(timeout=5.0, settle=5.0)
    assert not alive(grandchild)
    assert "left processes behind" not in caplog.text


def test_leftovers_that_ignore_sigterm_are_killed(tmp_path):
    child, grandchild = crashed_child(tmp_path, STUBBORN)
    assert child.end_group(timeout=0.5)
    assert wait_gone(grandchild)


def test_exit_code_peeks_and_keeps_the_pid_until_reaped(tmp_path):
    child = Child("contents", [sys.executable, "-c", "raise SystemExit(3)"],
                  tmp_path / "contents.log")
    child.start()
    assert child._ended_within(10)                          # noqa: SLF001
    assert child.exit_code() == 3
    assert child.proc is not None and os.path.exists(f"/proc/{child.proc.pid}")  # a zombie
    child.reap()
    assert child.exit_code() == 3 and not os.path.exists(f"/proc/{child.proc.pid}")
    killed = Child("printer", [sys.executable, "-c", "import time; time.sleep(60)"],
                   tmp_path / "printer.log")
    killed.start()
    assert killed.proc is not None
    os.kill(killed.proc.pid, 9)
    assert killed._ended_within(10) and killed.exit_code() == -9   # noqa: SLF001
    killed.reap()


def test_a_child_that_left_nothing_behind(tmp_path):
    child = Child("contents", [sys.executable, "-c", "pass"], tmp_path / "contents.log")
    child.start()
    assert child.proc is not None
    child.proc.wait(10)
    assert not child.end_group()


def test_stop_ends_the_whole_group(tmp_path):
    script = ("import subprocess, sys, time\n"
              f"w = subprocess.Popen([sys.executable, '-c', {POLITE!r}])\n"
              "print(w.pid, flush=True)\n"
              "__import__('signal').signal(15, lambda *a: sys.exit(0))\n"
              "while True: time.sleep(0.1)\n")
    child = Child("gotapi", [sys.executable, "-c", script], tmp_path / "gotapi.log")
    child.start()
    end = time.monotonic() + 10
    while not (tmp_path / "gotapi.log").read_text().strip() and time.monotonic() < end:
        time.sleep(0.05)
    grandchild = int((tmp_path / "gotapi.log").read_text().split()[0])
    child.stop(timeout=5.0)
    assert child.exit_code() is not None
    assert wait_gone(grandchild)


def children_of(pid: int, timeout: float = 10.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        if found.stdout.split():
            return int(found.stdout.split()[0])
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no child")


def test_only_the_leftover_gets_sigterm_not_its_children(tmp_path):
    """A leftover's own children (a printer's slicer pool, its fork server) are stopped by
    it, or killed at the end: a SIGTERM to them too would fail its job mid-print."""
    marker = tmp_path / "term.txt"
    pool = ("import signal, sys, time\n"
            f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').write('TERM'),"
            " sys.exit(0)))\n"
            "while True: time.sleep(0.1)\n")
    leftover = ("import subprocess, sys, time\n"
                f"subprocess.Popen([sys.executable, '-c', {pool!r}])\n"
                "while True: time.sleep(0.1)\n")
    child, grandchild = crashed_child(tmp_path, leftover)
    pool_pid = children_of(grandchild)
    assert child.end_group(timeout=1.0)
    assert wait_gone(grandchild) and wait_gone(pool_pid)
    assert not marker.exists()


# -- refusing to start beside a running stack ------------------------------------------------
def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def stack_config(data_dir: Path) -> Config:
    gotapi, bus, tap, contents, printer = free_ports(5)
    return load_config(None, data_dir, overrides={
        "gotapi": {"port": gotapi, "bus_endpoint": f"tcp://127.0.0.1:{bus}",
                   "tap_endpoint": f"tcp://127.0.0.1:{tap}"},
        "contents": {"port": contents}, "printer": {"port": printer}})


@pytest.fixture
def held() -> Iterator[socket.socket]:
    """A listening socket on a loopback port: someone else's server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def nothing_started(supervisor: Supervisor) -> bool:
    return all(child.proc is None for child in supervisor.children.values())


def test_every_port_of_the_stack_is_checked(tmp_path):
    config = stack_config(tmp_path)
    listeners = {(x.server, x.port) for x in sup.stack_listeners(config)}
    bus, tap = (int(e.rsplit(":", 1)[1]) for e in (config.gotapi.bus_endpoint, config.gotapi.tap_endpoint))
    assert listeners == {("gotapi", config.gotapi.port), ("gotapi", bus), ("gotapi", tap),
                         ("contents", config.contents.port), ("printer", config.printer.port)}
    sup.check_ports_free(config)                            # all free: no error
    config.gotapi.tap_endpoint = ""                         # tap off, bus on any port, ipc:
    config.gotapi.bus_endpoint = "tcp://127.0.0.1:0"
    assert {x.what for x in sup.stack_listeners(config)} == {
        "GotAPI server (HTTP)", "contents server", "printer"}
    config.gotapi.bus_endpoint = "ipc:///tmp/bus"
    assert len(sup.stack_listeners(config)) == 3


def test_a_taken_port_is_refused_naming_it_and_its_server(tmp_path, held):
    port = held.getsockname()[1]
    config = stack_config(tmp_path)
    config.contents.port = port
    with pytest.raises(StartError, match=f"port {port} on 127.0.0.1 is taken .*contents server"):
        sup.check_ports_free(config)
    config = stack_config(tmp_path)
    config.gotapi.bus_endpoint = f"tcp://127.0.0.1:{port}"
    with pytest.raises(StartError, match=f"port {port} .*intent bus"):
        sup.check_ports_free(config)


def test_start_with_a_taken_port_starts_nothing_and_writes_no_up_json(tmp_path, held):
    config = stack_config(tmp_path)
    config.printer.port = held.getsockname()[1]
    supervisor = Supervisor(config)
    with pytest.raises(StartError, match="printer needs it"):
        supervisor.start()
    assert nothing_started(supervisor)
    assert not (tmp_path / "up.json").exists()


# The command line of a real `gotapi-3dp up` (console script), sleeping instead of serving.
FAKE_UP = "import time\ntime.sleep(60)\n"


@pytest.fixture
def fake_up(tmp_path) -> Iterator[subprocess.Popen[bytes]]:
    script = tmp_path / "bin" / "gotapi-3dp"
    script.parent.mkdir()
    script.write_text(FAKE_UP)
    proc = subprocess.Popen([sys.executable, str(script), "--data-dir", str(tmp_path), "up"])
    # Popen returns when exec closed its pipe, a moment before the kernel sets the new
    # command line: until then /proc/<pid>/cmdline reads empty.
    end = time.monotonic() + 10
    while not Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < end:
        time.sleep(0.01)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def write_up_json(data_dir: Path, pid: int) -> str:
    text = json.dumps({"gotapi": "http://127.0.0.1:1", "dataDir": str(data_dir), "pid": pid})
    (data_dir / "up.json").write_text(text)
    return text


def test_a_live_up_named_in_up_json_is_refused_and_its_up_json_kept(tmp_path, fake_up):
    config = stack_config(tmp_path)
    text = write_up_json(tmp_path, fake_up.pid)
    assert sup.is_up_process(fake_up.pid)
    supervisor = Supervisor(config)
    with pytest.raises(StartError, match=f"already running on data dir {tmp_path} .*pid {fake_up.pid}"):
        supervisor.start()
    assert nothing_started(supervisor)
    assert (tmp_path / "up.json").read_text() == text
    supervisor.stop()                                       # as cli/demo may: still not ours
    assert (tmp_path / "up.json").read_text() == text


def test_of_two_ups_starting_at_once_one_is_refused_before_it_starts_anything(tmp_path):
    """Both would find no up.json yet: `up.lock` decides. The kernel drops the lock with its
    holder, so a refused or stopped up leaves none behind."""
    config = stack_config(tmp_path)
    first = Supervisor(config)
    first._take_lock()                                      # noqa: SLF001 (mid-start)
    second = Supervisor(config)
    with pytest.raises(StartError, match=f"another gotapi-3dp up is starting on data dir {tmp_path}"):
        second.start()
    assert nothing_started(second)
    holder = subprocess.run([sys.executable, "-c", LOCK_HOLDER.format(path=str(tmp_path / "up.lock"))],
                            capture_output=True, text=True, timeout=30)
    assert holder.stdout == "taken\n"                      # held across processes too
    first.stop()                                            # releases it
    holder = subprocess.run([sys.executable, "-c", LOCK_HOLDER.format(path=str(tmp_path / "up.lock"))],
                            capture_output=True, text=True, timeout=30)
    assert holder.stdout == "free\n"


def test_a_refused_start_releases_the_lock(tmp_path, held):
    config = stack_config(tmp_path)
    config.printer.port = held.getsockname()[1]
    with pytest.raises(StartError, match="printer needs it"):
        Supervisor(config).start()
    again = Supervisor(config)
    again._take_lock()                                      # noqa: SLF001 (no StartError)
    again.stop()


LOCK_HOLDER = """
import fcntl, os
fd = os.open({path!r}, os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("taken")
"""


def test_a_dead_pid_in_up_json_is_stale(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_up_json(tmp_path, gone.pid)
    assert not sup.is_up_process(gone.pid)
    sup.check_not_running(stack_config(tmp_path))           # no error: replaced at start-up


def test_a_live_pid_that_is_no_up_is_stale_where_proc_tells(tmp_path, sleeper, monkeypatch):
    write_up_json(tmp_path, sleeper.pid)                    # e.g. the pid reused since
    assert not sup.is_up_process(os.getpid())               # ourselves: never "another" up
    sup.check_not_running(stack_config(tmp_path))
    monkeypatch.setattr(sup, "_cmdline", lambda pid: None)  # no /proc: alive is enough
    with pytest.raises(StartError, match=f"pid {sleeper.pid}"):
        sup.check_not_running(stack_config(tmp_path))


def test_an_unreadable_up_json_is_stale(tmp_path):
    (tmp_path / "up.json").write_text("{not json")
    sup.check_not_running(stack_config(tmp_path))
    (tmp_path / "up.json").write_text("[1, 2]")
    sup.check_not_running(stack_config(tmp_path))


def test_stop_deletes_up_json_only_if_it_names_us(tmp_path):
    text = write_up_json(tmp_path, os.getpid() + 1)
    Supervisor(stack_config(tmp_path)).stop()
    assert (tmp_path / "up.json").read_text() == text
    write_up_json(tmp_path, os.getpid())
    supervisor = Supervisor(stack_config(tmp_path))
    supervisor.stop()
    assert not (tmp_path / "up.json").exists()
    write_up_json(tmp_path, os.getpid())
    supervisor.stop()                         # once: a second stop touches nothing
    assert (tmp_path / "up.json").exists()


def test_a_group_listens_on_its_own_port_not_on_someone_elses(held):
    port = held.getsockname()[1]
    assert sup.group_listens_on(os.getpgrp(), port) is True
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert sup.group_listens_on(other.pid, port) is False
    finally:
        other.kill()
        other.wait()
    assert sup.group_listens_on(os.getpgrp(), free_ports(1)[0]) is False


# A contents server that cannot bind (someone else answers on its port): Gunicorn retries,
# then exits 1.
CANNOT_BIND = ("import sys, time\n"
               "print('[ERROR] Connection in use: (127.0.0.1, PORT)', flush=True)\n"
               "time.sleep(1.5)\n"
               "print('[ERROR] Can\\'t connect to (127.0.0.1, PORT)', flush=True)\n"
               "sys.exit(1)\n")
# A contents server that does bind and answer.
SERVES = """
import http.server, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


class Foreign:
    """Someone else's HTTP server answering 200 to anything, in a thread of this process."""

    def __init__(self) -> None:
        import http.server
        import threading

        class Health(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Health)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def contents_supervisor(tmp_path: Path, port: int, argv: list[str]) -> tuple[Supervisor, list[str]]:
    config = stack_config(tmp_path)
    config.contents.port = port
    said: list[str] = []
    supervisor = Supervisor(config, say=said.append)
    supervisor.children["contents"] = Child("contents", argv, tmp_path / "contents.log")
    return supervisor, said


def test_start_up_is_not_fooled_by_someone_elses_server(tmp_path):
    foreign = Foreign()
    supervisor, said = contents_supervisor(
        tmp_path, foreign.port, [sys.executable, "-c", CANNOT_BIND.replace("PORT", str(foreign.port))])
    try:
        supervisor.children["contents"].start()
        with pytest.raises(StartError, match="(?s)contents exited with code 1 during start-up.*Connection in use"):
            supervisor._wait_ready("contents")              # noqa: SLF001 (as start() does)
        assert "contents is up" not in said
    finally:
        supervisor.stop()
        foreign.close()


def test_start_up_reports_a_child_up_once_it_listens_on_its_port(tmp_path):
    port = free_ports(1)[0]
    supervisor, said = contents_supervisor(tmp_path, port, [sys.executable, "-c", SERVES, str(port)])
    try:
        supervisor.children["contents"].start()
        supervisor._wait_ready("contents")                  # noqa: SLF001
        assert said == ["contents is up"]
    finally:
        supervisor.stop()
