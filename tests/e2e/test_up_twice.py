"""A second `gotapi-3dp up` beside a running stack refuses before touching anything: on the
same data dir (up.json names a live `up`), and on another data dir with the same ports."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from .conftest import Stack, running_stack

pytestmark = pytest.mark.e2e
NAMES = ("contents", "printer", "gotapi", "plugin-host")


def second_up(stack: Stack, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gotapi3dp.cli", "--config", str(stack.config_path),
                           "--data-dir", str(data_dir), "up"],
                          capture_output=True, text=True, timeout=120)


def still_serving(stack: Stack) -> None:
    resp = requests.get(f"{stack.info['gotapi']}/gotapi/availability",
                        headers={"Origin": "http://localhost"}, timeout=10)
    assert resp.status_code == 200 and resp.json()["result"] == 0, resp.text


def test_a_second_up_never_touches_the_running_stack(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    with running_stack(tmp_path / "first") as stack:
        up_json = stack.data_dir / "up.json"
        before = up_json.read_text()
        children = {name: stack.child_pid(name) for name in NAMES}

        same = second_up(stack, stack.data_dir)
        assert same.returncode == 1, same.stdout + same.stderr
        assert (f"a stack is already running on data dir {stack.data_dir} "
                f"(gotapi-3dp up, pid {stack.proc.pid}" in same.stderr), same.stderr
        assert "is up" not in same.stdout

        other_dir = tmp_path / "other"
        other = second_up(stack, other_dir)
        assert other.returncode == 1, other.stdout + other.stderr
        port = stack.ports["gotapi"]
        assert f"port {port} on 127.0.0.1 is taken" in other.stderr, other.stderr
        assert "the GotAPI server (HTTP) needs it" in other.stderr
        assert "is up" not in other.stdout
        assert not (other_dir / "up.json").exists()
        assert not (other_dir / "contents" / "demo.key").exists()   # no child ever started

        assert stack.proc is not None and stack.proc.poll() is None
        assert up_json.read_text() == before
        assert {name: stack.child_pid(name) for name in NAMES} == children  # none restarted
        still_serving(stack)
        printers = stack.cli("printers", "--json")
        assert printers.returncode == 0, printers.stderr
        assert stack.info["serviceId"] in printers.stdout


def test_ctrl_c_while_up_starts_stops_what_it_started(tmp_path: Path) -> None:
    """Ctrl-C during start-up: exit 130, every child stopped, no up.json, and a new `up` on
    the same data dir starts (review: the signal handler stopped everything, then start-up
    went on from where it was)."""
    import signal
    import time
    (tmp_path / "s").mkdir()
    stack = Stack(tmp_path / "s")
    with open(stack.log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gotapi3dp.cli", "--config",
                                 str(stack.config_path), "--data-dir", str(stack.data_dir), "up"],
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:          # the first child is running: mid start-up
        if subprocess.run(["pgrep", "-f", "--", f"--data-dir {stack.data_dir} .*serve contents$"],
                          capture_output=True).returncode == 0:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130, stack.log_path.read_text()
    for name in NAMES:
        assert subprocess.run(["pgrep", "-f", "--", f"--data-dir {stack.data_dir} .*serve {name}$"],
                              capture_output=True).returncode == 1, f"{name} still running"
    assert not (stack.data_dir / "up.json").exists()
    stack.start()
    assert stack.stop() == 0
