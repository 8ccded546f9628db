"""The supervisor's child handling with real processes: leftovers of a crashed child end."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from gotapi3dp.supervisor import Child

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
