"""Sleep until one of a few file descriptors is readable, in a thread or under gevent.

The bus loop sleeps on the ROUTER's ZMQ_FD, its mailbox pipe and the tap's ZMQ_FD. In a
plain thread that is `select.poll`. The GotAPI server's gunicorn worker runs under gevent,
whose monkey-patched `poll()` builds, starts, stops and closes one hub watcher per fd on
every call: under load the bus wakes once per reply, and that set-up was a large share of
what a request through the bus cost. `GeventWaiter` keeps one watcher per fd for its life.
"""
from __future__ import annotations

import select
from typing import Any, Protocol


class FdWaiter(Protocol):
    def wait(self, timeout_ms: int) -> set[int]: ...
    def close(self) -> None: ...


def fd_waiter(fds: list[int]) -> FdWaiter:
    """A waiter suited to this process: gevent's hub once `select` is monkey-patched."""
    if gevent_patched():
        return GeventWaiter(fds)
    return PollWaiter(fds)


def gevent_patched() -> bool:
    """Whether this process runs under gevent (the GotAPI server's worker): then blocking
    waits must go through the hub, and blocking socket calls stall every connection."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("select"))


class PollWaiter:
    def __init__(self, fds: list[int]) -> None:
        self._poller = select.poll()
        for fd in fds:
            self._poller.register(fd, select.POLLIN)

    def wait(self, timeout_ms: int) -> set[int]:
        return {fd for fd, _ in self._poller.poll(timeout_ms)}

    def close(self) -> None:
        pass


class GeventWaiter:
    """One persistent read watcher per fd on the hub's loop; `wait` blocks this greenlet only.

    Watchers are level-triggered: a fd left readable is reported again on the next wait.
    The timeout is a repeating timer, not a `gevent.Timeout` per wait (one object and two
    timer calls per wake-up, and the bus wakes once per reply): `wait` returns when a fd is
    ready or the timer next fires, so at most `timeout_ms` later, sometimes sooner. The bus
    loop keeps its own clock for what is due, so an early return only costs a loop turn.
    """

    def __init__(self, fds: list[int]) -> None:
        from gevent import get_hub
        from gevent.event import Event

        self._ready: set[int] = set()
        self._event = Event()
        self._loop = loop = get_hub().loop
        self._timer: Any = None
        self._timer_ms = -1
        self._watchers: list[Any] = []
        for fd in fds:
            watcher = loop.io(fd, 1)  # 1 = EV_READ
            watcher.start(self._on_ready, fd)
            self._watchers.append(watcher)

    def _on_ready(self, fd: int) -> None:
        self._ready.add(fd)
        self._event.set()

    def wait(self, timeout_ms: int) -> set[int]:
        if not self._ready:
            if timeout_ms != self._timer_ms:
                self._start_timer(timeout_ms)
            self._event.wait()
        self._event.clear()
        ready, self._ready = self._ready, set()
        return ready

    def _start_timer(self, timeout_ms: int) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
        seconds = max(timeout_ms, 1) / 1000.0
        self._loop.update_now()  # the loop's cached time may be stale: count from now
        self._timer = self._loop.timer(seconds, seconds)
        self._timer.start(self._event.set)
        self._timer_ms = timeout_ms

    def close(self) -> None:
        for watcher in [*self._watchers, *([self._timer] if self._timer else [])]:
            watcher.stop()
            watcher.close()
        self._watchers, self._timer, self._timer_ms = [], None, -1
