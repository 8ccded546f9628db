"""Multipart send and receive on the bus sockets, at the cost of the C calls alone.

pyzmq's `send_multipart` ORs its `SNDMORE` IntFlag into the flags for every frame,
`recv_multipart` looks its option up by enum, `Socket.send` and `getsockopt` are Python
wrappers over the backend's methods, and a non-blocking receive on an empty socket builds a
`zmq.Again` through Python-level `ZMQError.__init__`; even the backend's `get` turns its
option into an enum. Per request through the bus that was more than the sends and receives
themselves, so this module calls the backend directly with plain-int flags, learns "more
frames" from the received frame, and asks `zmq_poll` (ZMQ_EVENTS underneath) instead of
catching `Again`.
"""
from __future__ import annotations

from typing import Any, Sequence

import zmq
import zmq.backend

NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
POLLIN = int(zmq.POLLIN)

_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_poll = zmq.backend.zmq_poll


def send_frames(sock: "zmq.Socket[Any]", frames: Sequence[bytes], flags: int = 0) -> None:
    """Send `frames` as one message; raises zmq.ZMQError like `send_multipart`."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(sock, frame, flags | _SNDMORE if i < last else flags)


def recv_frames(sock: "zmq.Socket[Any]", flags: int = 0, limit: int = 0) -> list[bytes]:
    """Receive one whole message; zmq.Again (with NOBLOCK) when none is waiting. With a
    `limit`, at most that many frames: the rest of a longer message stays in the socket, to
    be read or thrown away (`discard_frames`) before the next message."""
    return recv_frames_and_user(sock, flags, limit, user=False)[0]


def recv_frames_and_user(sock: "zmq.Socket[Any]", flags: int = 0, limit: int = 0,
                         user: bool = True) -> tuple[list[bytes], str | None]:
    """`recv_frames`, and the User-Id the ZAP handler gave the sending connection (None
    without authentication): what ties a message to the key it came in with."""
    frame = _recv(sock, flags, False)
    user_id: str | None = None
    if user:
        try:
            user_id = frame.get("User-Id")
        except zmq.ZMQError:
            user_id = None
    frames = [frame.bytes]
    while frame.more and len(frames) != limit:
        frame = _recv(sock, flags, False)
        frames.append(frame.bytes)
    return frames, user_id


def more_frames(sock: "zmq.Socket[Any]") -> bool:
    """Whether the message being read has frames left (after a `recv_frames` limit)."""
    return bool(sock.getsockopt(zmq.RCVMORE))


def discard_frames(sock: "zmq.Socket[Any]", count: int) -> bool:
    """Read and drop at most `count` more frames of the message being read (it must have
    some left: `more_frames`); True if it has more still. A message of millions of frames is
    thrown away a slice at a time, so the loop reading it serves everything else between
    slices."""
    for _ in range(count):
        if not _recv(sock, NOBLOCK, False).more:
            return False
    return True


def readable(sock: "zmq.Socket[Any]") -> bool:
    """Whether a message is waiting (ZMQ_EVENTS; also re-arms the edge-triggered ZMQ_FD)."""
    return bool(_poll([(sock, POLLIN)], 0))


def poll_readable(items: list[tuple[Any, int]], timeout_ms: int) -> list[Any]:
    """`zmq.Poller.poll` without its Python bookkeeping: the sockets and fds of `items`
    (`(socket or fd, POLLIN)` pairs) that are readable, waiting at most `timeout_ms`."""
    return [sock for sock, _ in _poll(items, timeout_ms)]
