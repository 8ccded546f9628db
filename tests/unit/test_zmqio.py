"""Multipart I/O on the bus sockets through pyzmq's backend calls."""
from __future__ import annotations

import os
import time
from typing import Any, Iterator

import pytest
import zmq

from gotapi3dp.zmqio import NOBLOCK, POLLIN, poll_readable, readable, recv_frames, send_frames


@pytest.fixture
def pair() -> Iterator[tuple[Any, Any]]:
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind("tcp://127.0.0.1:*")
    dealer.setsockopt(zmq.ROUTING_ID, b"host-1")
    dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
    yield router, dealer
    for sock in (router, dealer):
        sock.close(linger=0)
    ctx.term()


def _until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_frames_round_trip_whole_and_in_order(pair: tuple[Any, Any]) -> None:
    router, dealer = pair
    assert not readable(router)
    with pytest.raises(zmq.Again):
        recv_frames(router, NOBLOCK)
    big = os.urandom(300_000)          # above pyzmq's zero-copy threshold
    send_frames(dealer, [b"P", b"\x03", big])
    send_frames(dealer, [b"P", b"\x05"])
    assert _until(lambda: readable(router))
    assert recv_frames(router, NOBLOCK) == [b"host-1", b"P", b"\x03", big]
    assert _until(lambda: readable(router))
    assert recv_frames(router) == [b"host-1", b"P", b"\x05"]
    assert not readable(router)
    send_frames(router, [b"host-1", b"P", b"\x02", b"body"])
    assert recv_frames(dealer) == [b"P", b"\x02", b"body"]


def test_send_to_an_unknown_peer_raises_like_send_multipart(pair: tuple[Any, Any]) -> None:
    router, _ = pair
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    with pytest.raises(zmq.ZMQError) as info:
        send_frames(router, [b"nobody", b"P", b"\x05"], NOBLOCK)
    assert info.value.errno == zmq.EHOSTUNREACH


def test_poll_readable_reports_sockets_and_plain_fds(pair: tuple[Any, Any]) -> None:
    router, dealer = pair
    r, w = os.pipe()
    try:
        items = [(r, POLLIN), (router, POLLIN)]
        assert poll_readable(items, 20) == []
        os.write(w, b"x")
        assert poll_readable(items, 1000) == [r]
        os.read(r, 1)
        send_frames(dealer, [b"P", b"\x05"])
        assert poll_readable(items, 5000) == [router]
    finally:
        os.close(r)
        os.close(w)
