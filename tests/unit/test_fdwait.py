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


def test_gevent_timeout_counts_from_the_call_not_a_stale_loop_clock() -> None:
    """A fresh hub's cached time is that of its creation: a timer started from it later
    would fire at once. Run in a fresh process, where the hub has never turned."""
    import subprocess
    import sys
    code = ("import os, time\nfrom gotapi_server.fdwait import GeventWaiter\n"
            "r, w = os.pipe(); waiter = GeventWaiter([r]); time.sleep(0.2)\n"
            "for _ in range(2):\n"
            "    t = time.monotonic(); waiter.wait(50); print(time.monotonic() - t >= 0.04)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True"], out.stdout + out.stderr


GEVENT_SERVER = """
from gevent import monkey; monkey.patch_all()
import sys, tempfile, zmq, gevent
from pathlib import Path
from gotapi_server.auth import AuthStore
from gotapi_server.bus import Bus
bus = Bus("tcp://127.0.0.1:0")
bus.start()
print("sndtimeo", bus._router.getsockopt(zmq.SNDTIMEO))
bus.stop()
store = AuthStore(Path(tempfile.mkdtemp()), 3600)
def app(i):
    client = store.grant(f"http://localhost:{6000 + i}")
    gevent.sleep(0)
    store.grant(f"http://localhost:{7000 + i}")
gevent.joinall([gevent.spawn(app, i) for i in range(20)], raise_error=True)
print("connections", 1 if store._shared is not None else 0, getattr(store._local, "db", None))
"""


def test_a_gevent_server_never_blocks_on_a_full_host_and_shares_one_database_connection(
        ) -> None:
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", GEVENT_SERVER], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split("\n")[:2] == ["sndtimeo 0", "connections 1 None"], out.stderr
