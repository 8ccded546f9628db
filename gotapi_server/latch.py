"""A one-shot result a request waits on while the bus reads its reply, in a thread or a greenlet.

Every request through the bus parks on one of these, so what it costs is paid per request.
In threads a bare lock is the cheapest latch. Under gevent a lock's timed acquire builds a
`gevent.Timeout` and runs gevent's Python-level lock code on both sides; `GreenLatch` parks
on a compiled `Waiter` with one raw loop timer instead, and is woken by a loop callback.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

from .fdwait import gevent_patched


class Latch(Protocol):
    """`set` once (from the bus, under its lock); `wait` once (the requester); `done`:
    whether `set` has run, asked by the requester after a wait that timed out."""

    result: Any
    error: Exception | None

    def done(self) -> bool: ...
    def set(self, result: Any = None, error: Exception | None = None) -> None: ...
    def wait(self, timeout: float) -> bool: ...


def latch_factory() -> Callable[[], Latch]:
    """The latch kind suited to this thread (decide once: the bus makes one per request).
    Under gevent, latches belong to the hub of the thread that calls this."""
    if not gevent_patched():
        return ThreadLatch
    from gevent import get_hub
    from gevent.hub import Waiter

    hub = get_hub()
    return lambda: GreenLatch(hub, Waiter(hub))


class _OneShot:
    """What both latches keep: the outcome, and whether `set` has run."""

    __slots__ = ("_settled", "result", "error")

    def __init__(self) -> None:
        self._settled = False
        self.result: Any = None
        self.error: Exception | None = None

    def done(self) -> bool:
        return self._settled

    def set(self, result: Any = None, error: Exception | None = None) -> None:
        """Settle once; the caller makes sure of once (the bus settles under its lock)."""
        self.result, self.error = result, error
        self._settled = True
        self._wake()

    def _wake(self) -> None:
        raise NotImplementedError


class ThreadLatch(_OneShot):
    """A bare lock, held until `set`: cheaper than a Future."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._lock.acquire()

    def _wake(self) -> None:
        self._lock.release()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=max(0.0, timeout))


class GreenLatch(_OneShot):
    """Park this greenlet until `set` (from any greenlet) or the timeout, whichever is first.

    `set` may run in another request's greenlet (the one that read the reply) but a
    `Waiter` is switched to from the hub only, so it queues a loop callback. A switch that
    comes after `wait` returned (the timer and a `set` in the same loop turn) only stores a
    value in the spent `Waiter`, which nobody reads.
    """

    __slots__ = ("_hub", "_waiter")

    def __init__(self, hub: Any, waiter: Any) -> None:
        super().__init__()
        self._hub = hub
        self._waiter = waiter

    def _wake(self) -> None:
        self._hub.loop.run_callback(self._waiter.switch, None)

    def wait(self, timeout: float) -> bool:
        if self._settled:
            return True
        if timeout <= 0:
            return False
        loop = self._hub.loop
        loop.update_now()  # the loop's cached time may be stale: count from now
        timer = loop.timer(timeout)
        timer.start(self._waiter.switch, None)
        try:
            self._waiter.get()
        finally:
            timer.close()
        return self._settled
