"""A queue other threads post to, plus a wake-up pipe the owning thread polls with its socket.

ZeroMQ sockets are not thread-safe: one thread owns each socket and polls this mailbox's fd
in the same `zmq.Poller`; other threads post work here instead of touching the socket.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Any


class Mailbox:
    """A queue other threads post to, plus a pipe whose read end the owning thread polls."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards the pipe's life, never a socket
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)

    @property
    def fd(self) -> int:
        return self._rfd

    def post(self, item: Any) -> bool:
        """Queue `item` and wake the owner; False once the mailbox is closed."""
        with self._lock:
            if self._wfd < 0:
                return False
            self._queue.put(item)
            try:
                os.write(self._wfd, b"\0")
            except BlockingIOError:
                pass  # pipe full: a wake-up is already pending
        return True

    def drain(self) -> list[Any]:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        return self._take_all()

    def close(self) -> list[Any]:
        """Refuse further posts; return what was still queued."""
        with self._lock:
            if self._wfd >= 0:
                os.close(self._wfd)
                os.close(self._rfd)
                self._wfd = self._rfd = -1
            return self._take_all()

    def _take_all(self) -> list[Any]:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items
