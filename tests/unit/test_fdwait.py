"""The bus loop's sleep: select.poll in a thread, persistent hub watchers under gevent."""
from __future__ import annotations

import os
import time
from typing import Iterator

import pytest

from gotapi_server.fdwait import GeventWaiter, PollWaiter, fd_waiter


@pytest.fixture
def pipes() -> Iterator[list[tuple[int, int]]]:
    made = [os.pipe() for _ in range(2)]
    yield made
    for r, w in made:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("kind", [PollWaiter, GeventWaiter])
def test_reports_the_readable_fds_and_times_out(kind: type, pipes: list[tuple[int, int]]) -> None:
    (r1, w1), (r2, w2) = pipes
    waiter = kind([r1, r2])
    try:
        start = time.monotonic()
        assert waiter.wait(50) == set()
        assert time.monotonic() - start >= 0.04
        os.write(w2, b"x")
        assert waiter.wait(1000) == {r2}
        assert waiter.wait(1000) == {r2}      # level-triggered: still unread, still reported
        os.read(r2, 1)
        os.write(w1, b"x")
        os.write(w2, b"x")
        got = waiter.wait(1000)
        if got != {r1, r2}:                   # the hub may report one, then the other
            got |= waiter.wait(1000)
        assert got == {r1, r2}
        os.read(r1, 1)
        os.read(r2, 1)
        assert waiter.wait(20) == set()
    finally:
        waiter.close()


def test_gevent_waiter_stops_watching_when_closed(pipes: list[tuple[int, int]]) -> None:
    (r1, w1), _ = pipes
    waiter = GeventWaiter([r1])
    waiter.close()
    os.write(w1, b"x")
    assert waiter.wait(20) == set()


def test_an_unpatched_process_polls(pipes: list[tuple[int, int]]) -> None:
    (r1, _), _ = pipes
    waiter = fd_waiter([r1])    # the test process is not monkey-patched
    assert isinstance(waiter, PollWaiter)
    waiter.close()


def test_a_gevent_patched_process_uses_the_hub() -> None:
    import subprocess
    import sys
    code = ("from gevent import monkey; monkey.patch_all()\n"
            "import os\nfrom gotapi_server.fdwait import fd_waiter\n"
            "r, w = os.pipe(); waiter = fd_waiter([r]); os.write(w, b'x')\n"
            "print(type(waiter).__name__, sorted(waiter.wait(1000)) == [r])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["GeventWaiter", "True"], out.stderr
