"""A real Bus and a real PluginHost over TCP: dispatch, errors, concurrency, timeouts, restarts."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import msgpack
import pytest
import zmq

from gotapi3dp.config import PluginHostConfig
from gotapi3dp.wire.busproto import (
    PROTOCOL,
    READY,
    REPLY,
    REQUEST,
    Announce,
    PluginInfo,
    decode_announce,
    host_id_of,
)
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.intent import Action, Intent, decode, encode
from gotapi_server.bus import Bus
from plugin_host.host import PluginHost
from plugin_host.plugin import Plugin

from .bus_support import online, wait_until

HB = 0.1
LIVENESS = 5      # a silent peer is dead after 0.5 s on either side
FAST = dict(heartbeat=HB, liveness=LIVENESS, reconnect_min=0.05, reconnect_max=0.4)


class EchoPlugin(Plugin):
    """Echoes params; `sleep`, `raise`, `fail` and `bad` params select misbehaviour."""

    info = PluginInfo("echo", "Echo", "1.0", ["echo"])

    def __init__(self) -> None:
        self.notices: list[Intent] = []

    def services(self) -> list[dict[str, Any]]:
        return [{"id": "svc1", "name": "Echo One", "online": True, "type": "test"}]

    def handle(self, intent: Intent) -> Intent:
        p = intent.params
        if "sleep" in p:
            time.sleep(p["sleep"])
        if "fail" in p:
            raise P3DError(ErrorCode.PRINTER_BUSY, p["fail"])
        if "raise" in p:
            raise RuntimeError(p["raise"])
        if p.get("bad") == "type":
            return intent.response({"obj": object()})
        if p.get("bad") == "keys":
            return intent.response({"m": {1: 2}})
        if p.get("bad") == "none":
            return None  # type: ignore[return-value]
        if p.get("emit"):
            self.emit(self.event("echo", "tick", params={"n": p["emit"]}))
        return intent.response({"echo": p, "service": intent.service_id})

    def notice(self, intent: Intent) -> None:
        self.notices.append(intent)


class Running:
    """A PluginHost serving on its own thread."""

    def __init__(self, endpoint: str, host_id: str = "host-1",
                 plugins: list[Plugin] | None = None) -> None:
        self.plugins = plugins if plugins is not None else [EchoPlugin()]
        config = PluginHostConfig(bus_endpoint=endpoint, host_id=host_id)
        self.host = PluginHost(config, self.plugins, **FAST)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.host.run, args=(self.stop_event,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.host.stop()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


@pytest.fixture
def bus() -> Iterator[Bus]:
    b = Bus("tcp://127.0.0.1:0", heartbeat=HB, liveness=LIVENESS)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def hosts(bus: Bus) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(host_id: str = "host-1", plugins: list[Plugin] | None = None) -> Running:
        run = Running(bus.endpoint, host_id, plugins)
        started.append(run)
        assert wait_until(lambda: all(online(bus, p.info.id) for p in run.plugins))
        return run

    yield start
    for run in started:
        run.stop()


def get(**params: Any) -> Intent:
    return Intent(Action.GET, profile="echo", attribute="say", service_id="svc1", params=params)


def error_of(bus: Bus, intent: Intent, plugin_id: str = "echo", timeout: float = 5.0) -> P3DError:
    with pytest.raises(P3DError) as info:
        bus.request(intent, plugin_id, timeout)
    return info.value


# ---- dispatch ----

def test_response_echoes_request_code(bus, hosts) -> None:
    hosts()
    intent = get(word="hello")
    reply = bus.request(intent, "echo", 5.0)
    assert reply.action is Action.RESPONSE and reply.result == 0
    assert reply.request_code == intent.request_code
    assert reply.params == {"echo": {"word": "hello"}, "service": "svc1"}


class CachedPlugin(EchoPlugin):
    """`answer_now` answers `cached` from memory, says None to `miss`, fails on `boom`."""

    info = PluginInfo("cached", "Cached", "1.0", ["echo"])

    def answer_now(self, intent: Intent) -> Intent | None:
        if "boom" in intent.params:
            raise RuntimeError("boom")
        if "cached" not in intent.params:
            return None
        return intent.response({"thread": threading.current_thread().name})

    def handle(self, intent: Intent) -> Intent:
        return intent.response({"thread": threading.current_thread().name})


def test_answer_now_skips_the_pool_and_falls_back_to_handle(bus, hosts) -> None:
    hosts(plugins=[CachedPlugin()])
    fast = bus.request(get(cached=1), "cached", 5.0).params["thread"]
    slow = bus.request(get(), "cached", 5.0).params["thread"]
    failed = bus.request(get(boom=1, cached=1), "cached", 5.0).params["thread"]
    keyed = Intent(Action.PUT, profile="echo", attribute="say", service_id="svc1",
                   params={"cached": 1}, idempotency_key="k1")
    assert not fast.startswith("plugin")        # the loop thread answered
    assert slow.startswith("plugin") and failed.startswith("plugin")
    assert bus.request(keyed, "cached", 5.0).params["thread"].startswith("plugin")


class WrongTypePlugin(EchoPlugin):
    """Answers with a header field of the wrong type, on the fast path and on the pool."""

    info = PluginInfo("wrongtype", "Wrong type", "1.0", ["echo"])

    def answer_now(self, intent: Intent) -> Intent | None:
        return self.handle(intent)

    def handle(self, intent: Intent) -> Intent:
        reply = intent.response({"ok": True})
        reply.service_id = 5  # type: ignore[assignment]
        return reply


def test_a_response_the_server_could_not_read_becomes_an_error(bus, hosts) -> None:
    """`encode` refuses what `decode` would: the host answers UNKNOWN instead of sending
    a reply the server would drop (and the app would wait for until its timeout)."""
    hosts(plugins=[WrongTypePlugin()])
    reply = bus.request(get(), "wrongtype", 3.0)
    assert (reply.result, reply.error_code) == (1, ErrorCode.UNKNOWN)
    assert "serviceId" in (reply.error_message or "")


def test_host_answers_service_discovery(bus, hosts) -> None:
    hosts()
    intent = Intent(Action.GET, profile="networkServiceDiscovery", attribute="getNetworkServices")
    reply = bus.request(intent, "echo", 5.0)
    assert reply.params == {"services": [{"id": "svc1", "name": "Echo One", "online": True,
                                          "type": "test"}]}


class RawServer:
    """A ROUTER driven by the test thread, to talk to a real PluginHost directly."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def recv(self, command: bytes, timeout: float = 3.0) -> list[bytes]:
        end = time.monotonic() + timeout
        while self.sock.poll(max(1, int((end - time.monotonic()) * 1000))):
            frames = self.sock.recv_multipart()
            if frames[2] == command:
                return frames
        raise AssertionError(f"no {command!r} within {timeout} s")

    def close(self) -> None:
        self.ctx.destroy(linger=0)


class _Named(Plugin):
    def __init__(self, plugin_id: str) -> None:
        self.info = PluginInfo(plugin_id, plugin_id.title(), "1.0", [plugin_id])

    def handle(self, intent: Intent) -> Intent:
        reply = intent.response({"me": self.info.id})
        reply.plugin_id = None  # sloppy plug-in: the host restores it
        return reply


def test_host_side_unknown_plugin_and_garbage_requests() -> None:
    server = RawServer()
    run = Running(server.endpoint)
    try:
        peer, _, _, body = server.recv(READY)
        assert host_id_of(peer) == b"host-1" and decode_announce(body).plugins[0].id == "echo"
        ask = get(x=1)
        ask.plugin_id = "missing"
        server.sock.send_multipart([peer, PROTOCOL, REQUEST, encode(ask)])
        reply = decode(server.recv(REPLY)[3])
        assert (reply.request_code, reply.result, reply.error_code) == \
            (ask.request_code, 1, ErrorCode.NOT_SUPPORT_PROFILE)
        bad = msgpack.packb({"v": 1, "requestCode": ask.request_code, "action": "JUMP",
                             "profile": "echo"})
        for junk in ([b"\x93x"], [PROTOCOL], [b"XX", REQUEST, b""], [PROTOCOL, b"\x42"],
                     [PROTOCOL, REQUEST, b"\xc1"], [PROTOCOL, REQUEST, bad]):
            server.sock.send_multipart([peer, *junk])
        reply = decode(server.recv(REPLY)[3])  # the JUMP request names its requestCode
        assert (reply.request_code, reply.error_code) == (ask.request_code, ErrorCode.BAD_INTENT)
        ok = get(y=2)
        ok.plugin_id = "echo"
        server.sock.send_multipart([peer, PROTOCOL, REQUEST, encode(ok)])
        assert decode(server.recv(REPLY)[3]).params["echo"] == {"y": 2}
    finally:
        run.stop()
        server.close()


def test_host_reconnects_with_back_off_when_the_server_is_silent() -> None:
    server = RawServer()
    run = Running(server.endpoint)
    try:
        times = []
        for _ in range(3):  # never answered: READY again after each expiry, back-off growing
            server.recv(READY, timeout=5)
            times.append(time.monotonic())
        first, second = times[1] - times[0], times[2] - times[1]
        assert first >= HB * LIVENESS and second > first
    finally:
        run.stop()
        server.close()


def test_plugin_errors_become_error_responses(bus, hosts) -> None:
    hosts()
    reply = bus.request(get(fail="busy printing"), "echo", 5.0)
    assert (reply.result, reply.error_code, reply.error_message) == \
        (1, ErrorCode.PRINTER_BUSY, "busy printing")
    reply = bus.request(get(**{"raise": "kaboom"}), "echo", 5.0)
    assert (reply.result, reply.error_code, reply.error_message) == (1, ErrorCode.UNKNOWN, "kaboom")
    for bad in ("type", "keys", "none"):
        reply = bus.request(get(bad=bad), "echo", 5.0)
        assert (reply.result, reply.error_code) == (1, ErrorCode.UNKNOWN), bad
    assert bus.request(get(after=1), "echo", 5.0).result == 0


def test_one_intent_fanned_out_to_several_plugins(bus, hosts) -> None:
    hosts("host-1", [EchoPlugin(), _Named("second")])
    hosts("host-2", [_Named("third")])
    intent = get(fan="out")  # the same requestCode to three plug-ins, as discovery does
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda pid: bus.request(intent, pid, 5.0),
                                ["echo", "second", "third"]))
    assert [r.plugin_id for r in replies] == ["echo", "second", "third"]
    assert all(r.request_code == intent.request_code and r.result == 0 for r in replies)
    assert replies[1].params == {"me": "second"}


def test_same_request_code_twice_to_one_plugin_is_refused(bus, hosts) -> None:
    hosts()
    intent = get(sleep=0.5)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(bus.request, intent, "echo", 5.0)
        time.sleep(0.1)
        err = error_of(bus, intent)
        assert err.code == ErrorCode.ILLEGAL_SERVER_STATE and "in flight" in err.message
        assert first.result().result == 0


def test_fifty_concurrent_requests(bus, hosts) -> None:
    hosts()

    def one(i: int) -> tuple[int, Intent, Intent]:
        intent = get(i=i, sleep=0.01 * (i % 5))
        return i, intent, bus.request(intent, "echo", 10.0)

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    for i, intent, reply in results:
        assert reply.request_code == intent.request_code
        assert reply.params["echo"]["i"] == i


def test_slow_handler_times_out_then_host_keeps_serving(bus, hosts) -> None:
    hosts()
    started = time.monotonic()
    err = error_of(bus, get(sleep=1.0), timeout=0.3)
    assert err.code == ErrorCode.TIMEOUT and time.monotonic() - started < 0.9
    assert bus.request(get(n=1), "echo", 5.0).params["echo"] == {"n": 1}
    time.sleep(0.8)  # the late reply arrives and is dropped
    assert bus.request(get(n=2), "echo", 5.0).params["echo"] == {"n": 2}


def test_events_and_notices(bus, hosts) -> None:
    got: list[tuple[str, Intent]] = []
    bus.on_event(lambda pid, it: got.append((pid, it)))
    run = hosts()
    bus.request(get(emit=7), "echo", 5.0)
    assert wait_until(lambda: len(got) == 1)
    assert got[0][0] == "echo" and got[0][1].params == {"n": 7}
    bus.notify(Intent(Action.EVENT_TRANSMIT_DISCONNECT, profile="", origin="app.example"))
    plugin = run.plugins[0]
    assert wait_until(lambda: len(plugin.notices) == 1)  # type: ignore[attr-defined]
    assert plugin.notices[0].origin == "app.example"  # type: ignore[attr-defined]


# ---- host going away and coming back ----

def test_stopped_host_fails_waiting_request_promptly(bus, hosts) -> None:
    run = hosts()
    stopper = threading.Timer(0.2, run.stop)
    stopper.start()
    started = time.monotonic()
    err = error_of(bus, get(sleep=3.0), timeout=20.0)
    assert err.code == ErrorCode.TIMEOUT and time.monotonic() - started < 2.0
    stopper.join()
    assert not online(bus, "echo")


def _serve_in_child(endpoint: str, host_id: str) -> None:
    config = PluginHostConfig(bus_endpoint=endpoint, host_id=host_id)
    PluginHost(config, [EchoPlugin()], **FAST).run(threading.Event())


def test_killed_host_is_expired_and_a_restart_with_the_same_id_serves(bus, hosts) -> None:
    spawn = multiprocessing.get_context("spawn")
    child = spawn.Process(target=_serve_in_child, args=(bus.endpoint, "host-1"), daemon=True)
    child.start()
    try:
        assert wait_until(lambda: online(bus, "echo"), timeout=10)
        threading.Timer(0.2, os.kill, (child.pid, signal.SIGKILL)).start()
        started = time.monotonic()
        # No goodbye: the next HEARTBEAT to it fails (EHOSTUNREACH), or liveness expires.
        err = error_of(bus, get(sleep=5.0), timeout=20.0)
        assert err.code == ErrorCode.TIMEOUT and time.monotonic() - started < 3.0
        assert not online(bus, "echo") and [p.id for p in bus.plugins()] == ["echo"]
    finally:
        child.kill()
        child.join(5)
    hosts("host-1")
    assert bus.request(get(back=True), "echo", 5.0).params["echo"] == {"back": True}


def test_graceful_restart_with_the_same_id(bus, hosts) -> None:
    first = hosts()
    first.stop()
    assert wait_until(lambda: not online(bus, "echo"), timeout=2)
    assert error_of(bus, get()).code == ErrorCode.ILLEGAL_SERVER_STATE
    hosts()
    assert bus.request(get(again=1), "echo", 5.0).result == 0


def test_restart_while_old_connection_still_holds_the_id(bus, hosts) -> None:
    """A dead host whose TCP link is still open keeps its routing id; ROUTER_HANDOVER frees it."""
    ctx = zmq.Context()
    try:
        zombie = ctx.socket(zmq.DEALER)
        zombie.linger = 0
        zombie.routing_id = b"host-1"
        zombie.setsockopt(zmq.RECONNECT_IVL, -1)  # dead: it will not come back
        zombie.connect(bus.endpoint)
        infos = [EchoPlugin.info]
        zombie.send_multipart([PROTOCOL, READY,
                               msgpack.packb(Announce("host-1", infos).to_map())])
        assert wait_until(lambda: online(bus, "echo"))
        hosts("host-1")  # a second READY on the id: registered again at once
        assert wait_until(lambda: _answers(bus), timeout=2)
    finally:
        ctx.destroy(linger=0)


def test_host_reconnects_when_the_server_restarts(hosts) -> None:
    first = Bus("tcp://127.0.0.1:0", heartbeat=HB, liveness=LIVENESS)
    first.start()
    endpoint = first.endpoint
    run = Running(endpoint)
    try:
        assert wait_until(lambda: online(first, "echo"))
        first.stop()
        time.sleep(0.2)
        second = Bus(endpoint, heartbeat=HB, liveness=LIVENESS)
        second.start()
        try:
            assert wait_until(lambda: _answers(second), timeout=8)
        finally:
            second.stop()
    finally:
        run.stop()


def _answers(bus: Bus) -> bool:
    try:
        return bus.request(get(), "echo", 1.0).result == 0
    except P3DError:
        return False


def test_serve_runs_until_sigterm(bus, monkeypatch, tmp_path) -> None:
    import sys
    import types

    from gotapi3dp.config import Config
    from plugin_host.main import serve

    fake = types.ModuleType("plugin_host.printer3d.plugin")
    fake.build_plugins = lambda config: [EchoPlugin()]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "plugin_host.printer3d.plugin", fake)
    config = Config(data_dir=tmp_path)
    config.plugin_host.bus_endpoint = bus.endpoint
    config.plugin_host.bus_security = "none"     # the `bus` fixture takes any peer
    before = signal.getsignal(signal.SIGTERM)
    seen: list[bool] = []

    def check_then_term() -> None:
        seen.append(wait_until(lambda: online(bus, "echo")))
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=check_then_term)
    killer.start()
    serve(config)  # returns on SIGTERM
    killer.join()
    assert seen == [True]
    assert signal.getsignal(signal.SIGTERM) is before
    assert wait_until(lambda: not online(bus, "echo"), timeout=2)


def test_printer3d_status_fast_path_and_one_refresh_at_a_time(monkeypatch) -> None:
    """`answer_now` serves a fresh cache only; a stale one is refreshed by one worker while
    the others get the stale copy (up to STATUS_STALE_MAX), not one printer call each."""
    from gotapi3dp.config import PrinterEntry
    from plugin_host.printer3d import plugin as p3d

    class NoStore:
        def close(self) -> None: ...

    plugin = p3d.Printer3DPlugin([PrinterEntry()], None, NoStore(), 1.0,  # type: ignore[arg-type]
                                 follow_jobs=False)
    release, calls = threading.Event(), []

    class Client:
        def status(self, timeout: float | None = None) -> dict[str, Any]:
            calls.append(1)
            if len(calls) > 1:
                release.wait(5)
            return {"state": "idle", "temperatures": {"n": len(calls)}}
    plugin._clients["printer-1"] = Client()  # type: ignore[assignment]
    ask = Intent(Action.GET, profile="printer3d", attribute="status", service_id="printer-1")
    assert plugin.answer_now(ask) is None                  # nothing cached: not now
    plugin._on_live("printer-1", True)
    assert plugin.handle(ask).params["temperatures"] == {"n": 1}
    assert plugin.answer_now(ask).params["temperatures"] == {"n": 1}   # fresh: from memory
    assert plugin.answer_now(get()) is None                 # other paths never
    monkeypatch.setattr(p3d, "STATUS_TTL", 0.0)            # now stale
    assert plugin.answer_now(ask) is None
    with ThreadPoolExecutor(4) as pool:
        refresher = pool.submit(plugin.handle, ask)
        assert wait_until(lambda: len(calls) == 2)
        others = [pool.submit(plugin.handle, ask) for _ in range(3)]
        assert [f.result(5).params["temperatures"] for f in others] == [{"n": 1}] * 3
        release.set()
        assert refresher.result(5).params["temperatures"] == {"n": 2}
    assert len(calls) == 2


def test_printing_an_expired_connection_is_1111_and_never_reaches_the_printer(tmp_path) -> None:
    """Review: 1111 was documented but never produced; the printer recorded a failed job."""
    import time as _time

    from gotapi3dp.config import PrinterEntry
    from plugin_host.printer3d import plugin as p3d
    from plugin_host.printer3d.connections import ConnectionStore

    store = ConnectionStore(tmp_path / "connections.sqlite3")
    plugin = p3d.Printer3DPlugin([PrinterEntry()], None, store, 1.0,  # type: ignore[arg-type]
                                 follow_jobs=False)
    submitted: list[str] = []
    from gotapi3dp.wire.token import job_id_for
    known = {job_id_for("p3t1.lost"): "printing",   # the printer made a job from this token
             job_id_for("p3t1.retryable"): "failed"}  # ...that failed before redeeming it

    class Printer:
        def submit(self, token: str) -> dict:
            submitted.append(token)
            return {"id": "j" * 32}

        def job(self, job_id: str, timeout: float | None = None) -> dict:
            if job_id not in known:
                raise P3DError(ErrorCode.JOB_NOT_FOUND, f"no job {job_id}")
            return {"id": job_id, "state": known[job_id],
                    "error": {"code": 1100} if known[job_id] == "failed" else None}

    plugin._clients["printer-1"] = Printer()  # type: ignore[assignment]
    origin = "http://localhost"
    from gotapi3dp.wire.token import CLOCK_SKEW
    skewed = store.add("printer-1", origin, "p3t1.skew", {"id": "c"}, _time.time() - 1)
    stale = store.add("printer-1", origin, "p3t1.sealed", {"id": "c"},
                      _time.time() - CLOCK_SKEW - 1)
    fresh = store.add("printer-1", origin, "p3t1.sealed2", {"id": "c"}, _time.time() + 60)

    def print_(conn_id: str) -> dict:
        return plugin.print_(PrinterEntry(), Intent(Action.POST, profile="printer3d",
                                                    attribute="print", origin=origin,
                                                    params={"connectionId": conn_id}))
    with pytest.raises(P3DError) as expired:
        print_(stale.id)
    assert expired.value.code == ErrorCode.CONNECTION_EXPIRED and submitted == []
    assert print_(fresh.id) == {"jobId": "j" * 32}
    assert print_(skewed.id) == {"jobId": "j" * 32}   # within the skew: the printer decides
    store.set_job(stale.id, "k" * 32)        # a connection that already printed: a retry
    assert print_(stale.id) == {"jobId": "j" * 32} and len(submitted) == 3
    # Review: a print whose answer was lost (job_id never stored), retried after expiry,
    # answered 1111 while its job ran; the printer knows the token, so it answers again.
    lost = store.add("printer-1", origin, "p3t1.lost", {"id": "c"},
                     _time.time() - CLOCK_SKEW - 1)
    assert print_(lost.id) == {"jobId": "j" * 32} and submitted[-1] == "p3t1.lost"
    assert store.get(lost.id, "printer-1", origin).job_id == "j" * 32
    retryable = store.add("printer-1", origin, "p3t1.retryable", {"id": "c"},
                          _time.time() - CLOCK_SKEW - 1)
    with pytest.raises(P3DError) as again:
        print_(retryable.id)
    assert again.value.code == ErrorCode.CONNECTION_EXPIRED and submitted[-1] == "p3t1.lost"
