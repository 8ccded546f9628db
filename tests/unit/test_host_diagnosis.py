"""The plug-in host says why it cannot join the bus when the two ends disagree on
`bus_security` (review: a "none" host facing a CURVE bus logged "send queue to the server is
full; b'\\x05' dropped" six times, then "server silent", in a loop, never the cause).

libzmq 4.3.5 reports such a mismatch on the DEALER's monitor, in either direction, as
HANDSHAKE_FAILED_PROTOCOL / ZMTP_MECHANISM_MISMATCH or, when the server noticed first and
closed, HANDSHAKE_FAILED_NO_DETAIL / EPIPE (a race). A "none" host reads both as the
mismatch (a NULL bus never closes a NULL handshake). For a "curve" host, NO_DETAIL / EPIPE
is also what a wrong bus_server_key gives: its line names both causes."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq

from gotapi3dp.buskeys import (CLIENT_NAME, SERVER_NAME, admit, clients_dir,
                               load_or_create_pair, server_dir)
from gotapi3dp.config import PluginHostConfig
from gotapi3dp.wire.busproto import HEARTBEAT, PROTOCOL, REPLY
from gotapi_server.bus import Bus, BusAuth
from plugin_host import host as host_module
from plugin_host.host import HostAuth, PluginHost

from .bus_support import online, wait_until
from .test_plugin_host import EchoPlugin

HB = 0.1
FAST = dict(heartbeat=HB, liveness=5, reconnect_min=0.05, reconnect_max=0.2)
WATCH = 1.5           # how long the host keeps retrying after the cause was named
NONE_CAUSE = 'but this host has bus_security = "none"'
CURVE_CAUSE = 'server has bus_security = "none"'   # sure, or beside a wrong server key


@pytest.fixture
def gotapi_dir(tmp_path: Path) -> Path:
    return tmp_path / "gotapi"


@pytest.fixture
def curve_bus(gotapi_dir: Path) -> Iterator[Bus]:
    pair = load_or_create_pair(server_dir(gotapi_dir), SERVER_NAME)
    b = Bus("tcp://127.0.0.1:0", None, heartbeat=HB, liveness=5,
            auth=BusAuth(pair, clients_dir(gotapi_dir)))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def plain_bus() -> Iterator[Bus]:
    b = Bus("tcp://127.0.0.1:0", None, heartbeat=HB, liveness=5)
    b.start()
    yield b
    b.stop()


def _run(host: PluginHost) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=host.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def _host_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "plugin_host.host" and r.levelno >= logging.WARNING]


def _assert_diagnosed(host: PluginHost, bus: Bus, caplog: pytest.LogCaptureFixture,
                      cause: str) -> None:
    stop, thread = _run(host)
    try:
        assert wait_until(lambda: any(cause in line for line in _host_lines(caplog)),
                          timeout=5), _host_lines(caplog)
        time.sleep(WATCH)          # several back-offs (0.05 .. 0.2 s), no line repeated
        lines = _host_lines(caplog)
        assert len(set(lines)) == len(lines), lines     # each cause once (REPEAT_AFTER)
        assert "check bus_security in [gotapi] and [plugin_host]" in "\n".join(lines)
        assert len(lines) <= 3, lines     # no "send queue ... full" / "server silent" loop
        assert not any("\\x" in line for line in lines), lines
        assert not online(bus, "echo")
        assert host._backoff > FAST["reconnect_min"]      # it backs off between attempts
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_none_host_facing_a_curve_bus_names_the_mismatch_once(curve_bus, caplog) -> None:
    config = PluginHostConfig(bus_endpoint=curve_bus.endpoint, host_id="host-1")
    host = PluginHost(config, [EchoPlugin()], **FAST)          # bus_security = "none"
    with caplog.at_level(logging.WARNING, logger="plugin_host.host"):
        _assert_diagnosed(host, curve_bus, caplog, NONE_CAUSE)
    assert sum(NONE_CAUSE in line for line in _host_lines(caplog)) == 1


def test_a_curve_host_facing_a_none_bus_names_the_mismatch_once(plain_bus, tmp_path,
                                                                caplog) -> None:
    pair = load_or_create_pair(tmp_path / "host", CLIENT_NAME)
    server_key = load_or_create_pair(tmp_path / "server", SERVER_NAME).public
    config = PluginHostConfig(bus_endpoint=plain_bus.endpoint, host_id="host-1")
    host = PluginHost(config, [EchoPlugin()], auth=HostAuth(pair, server_key=server_key),
                      **FAST)
    with caplog.at_level(logging.WARNING, logger="plugin_host.host"):
        _assert_diagnosed(host, plain_bus, caplog, CURVE_CAUSE)
    for line in _host_lines(caplog):      # the sure line, or the one naming both causes
        assert ('does not speak CurveZMQ but this host has bus_security = "curve"' in line
                or "either bus_server_key is not the server's public key" in line), line


def test_a_curve_host_with_the_right_key_is_served_without_a_diagnosis(
        curve_bus, gotapi_dir, tmp_path, caplog) -> None:
    directory = tmp_path / "host"
    pair = load_or_create_pair(directory, CLIENT_NAME)
    admit(clients_dir(gotapi_dir), "host-1", directory / f"{CLIENT_NAME}.key")
    server_key = load_or_create_pair(server_dir(gotapi_dir), SERVER_NAME).public
    config = PluginHostConfig(bus_endpoint=curve_bus.endpoint, host_id="host-1")
    host = PluginHost(config, [EchoPlugin()], auth=HostAuth(pair, server_key=server_key),
                      **FAST)
    with caplog.at_level(logging.WARNING, logger="plugin_host.host"):
        stop, thread = _run(host)
        try:
            assert wait_until(lambda: online(curve_bus, "echo"))
        finally:
            stop.set()
            thread.join(timeout=5)
    assert not _host_lines(caplog)


def test_a_none_host_on_a_none_bus_is_served_without_a_diagnosis(plain_bus, caplog) -> None:
    """The monitor now runs under "none" too: its HANDSHAKE_SUCCEEDED is no failure."""
    config = PluginHostConfig(bus_endpoint=plain_bus.endpoint, host_id="host-1")
    host = PluginHost(config, [EchoPlugin()], **FAST)
    with caplog.at_level(logging.WARNING, logger="plugin_host.host"):
        stop, thread = _run(host)
        try:
            assert wait_until(lambda: online(plain_bus, "echo"))
        finally:
            stop.set()
            thread.join(timeout=5)
    assert not _host_lines(caplog)


def test_dropped_and_unexpected_commands_are_logged_by_name_and_not_every_time(
        monkeypatch, caplog) -> None:
    host = PluginHost(PluginHostConfig(bus_endpoint="tcp://127.0.0.1:9", host_id="h"),
                      [EchoPlugin()], **FAST)

    def full(sock: Any, frames: Any, flags: int = 0) -> None:
        raise zmq.Again()

    monkeypatch.setattr(host_module, "send_frames", full)
    host._socket = object()  # type: ignore[assignment]   # never used: send_frames is faked
    with caplog.at_level(logging.WARNING, logger="plugin_host.host"):
        for _ in range(6):
            host._send(HEARTBEAT)
        host._send(REPLY, b"x")
        host._on_frames([PROTOCOL, REPLY])
        host._on_frames([PROTOCOL, b"\x09"])
    host._socket = None
    lines = _host_lines(caplog)
    assert lines.count("send queue to the server is full; HEARTBEAT dropped") == 1, lines
    assert "send queue to the server is full; REPLY dropped" in lines
    assert "unexpected REPLY with 0 body frames" in lines
    assert "unexpected command b'\\t' with 0 body frames" in lines
    assert not any("b'\\x" in line for line in lines), lines
