"""GotAPI-5 routing (EventHub), onJobChange registration, nonce/hmac, the origin default,
idempotency keys on the Intent, and `bus tap` decoding (latency, filters, redaction)."""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from gotapi3dp.wire.busproto import PROTOCOL, REPLY, REQUEST
from gotapi3dp.wire.intent import Action, Intent, encode
from gotapi_server import tap as tapmod
from gotapi_server.events import EventHub
from gotapi_server.websocket import (ALREADY_CONNECTED, BAD_TOKEN, NO_ORIGIN, NO_TOKEN,
                                     UNPARSABLE, Refused, handshake)
from plugin_host.printer3d.plugin import SPEC_PATH

from .gotapi_fakes import HEADERS, ORIGIN, get_token, make_app, printer_bus

SERVICE = "printer-1.printer3d"


class NoticeBus:
    def __init__(self) -> None:
        self.notices: list[Intent] = []

    def notify(self, intent: Intent, plugin_id: str | None = None) -> None:
        self.notices.append(intent)


def _event(progress: float, service: str = "printer-1") -> Intent:
    return Intent(Action.EVENT, profile="printer3d", attribute="onJobChange",
                  service_id=service, plugin_id="printer3d",
                  params={"job": {"id": "j", "state": "printing", "progress": progress}})


def test_hub_routes_in_order_to_registered_origins_only() -> None:
    bus = NoticeBus()
    hub = EventHub(bus)
    a, b = hub.open("http://localhost:1"), hub.open("http://localhost:2")
    assert a is not None and b is not None
    hub.register("http://localhost:1", SERVICE, "printer3d", None, "onJobChange")
    for p in range(5):
        hub.dispatch("printer3d", _event(p))
    hub.dispatch("printer3d", _event(9, service="printer-2"))   # another service
    got = [json.loads(a.outbox.get_nowait()) for _ in range(a.outbox.qsize())]
    assert [g["job"]["progress"] for g in got] == [0, 1, 2, 3, 4]
    assert got[0]["serviceId"] == SERVICE and got[0]["profile"] == "printer3d"
    assert got[0]["attribute"] == "onJobChange"
    assert b.outbox.empty()


def test_one_socket_per_origin_and_close_unregisters_and_tells_plugins() -> None:
    bus = NoticeBus()
    hub = EventHub(bus)
    session = hub.open("http://localhost:1")
    assert session is not None and hub.open("http://localhost:1") is None
    hub.register("http://localhost:1", SERVICE, "printer3d", None, "onJobChange")
    hub.close(session)
    assert hub.registered("http://localhost:1") == []
    assert [(n.action, n.origin) for n in bus.notices] == [
        (Action.EVENT_TRANSMIT_DISCONNECT, "http://localhost:1")]
    assert hub.open("http://localhost:1") is not None


def test_unregister_stops_events() -> None:
    hub = EventHub(NoticeBus())
    session = hub.open(ORIGIN)
    assert session is not None
    hub.register(ORIGIN, SERVICE, "printer3d", None, "onJobChange")
    hub.unregister(ORIGIN, SERVICE, "Printer3D", None, "onjobchange")
    hub.dispatch("printer3d", _event(1))
    assert session.outbox.empty()


@pytest.mark.parametrize("raw,origin,code", [
    (None, ORIGIN, NO_TOKEN), ('{"x": 1}', ORIGIN, NO_TOKEN), ("{", ORIGIN, UNPARSABLE),
    ('[1]', ORIGIN, UNPARSABLE), ('{"accessToken": "t"}', None, NO_ORIGIN),
    ('{"accessToken": "forged"}', ORIGIN, BAD_TOKEN), ('{"accessToken": null}', ORIGIN, NO_TOKEN),
    ('{"accessToken": 5}', ORIGIN, BAD_TOKEN),   # review: was 1, "not specified"
])
def test_websocket_handshake_codes(tmp_path: Path, raw: Any, origin: str | None,
                                   code: int) -> None:
    app = make_app(tmp_path, bus=printer_bus())
    with pytest.raises(Refused) as err:
        handshake(raw, origin, app.extensions["gotapi"].auth)
    assert err.value.code == code
    assert ALREADY_CONNECTED == 4


def test_websocket_handshake_accepts_a_token_of_this_origin(tmp_path: Path) -> None:
    app = make_app(tmp_path, bus=printer_bus())
    token = get_token(app.test_client())
    handshake(json.dumps({"accessToken": token}), ORIGIN, app.extensions["gotapi"].auth)
    with pytest.raises(Refused):
        handshake(json.dumps({"accessToken": token}), "http://localhost:1",
                  app.extensions["gotapi"].auth)


def test_put_and_delete_onjobchange_register_with_the_hub(tmp_path: Path) -> None:
    bus = printer_bus()
    bus.records["printer3d"].apis = {"printer3d": json.loads(SPEC_PATH.read_text())}
    app = make_app(tmp_path, bus=bus)
    client = app.test_client()
    token = get_token(client)
    hub = app.extensions["gotapi"].events
    body = client.put("/gotapi/printer3d/onJobChange", headers=HEADERS,
                      data={"serviceId": SERVICE, "accessToken": token}).get_json()
    assert body["result"] == 0
    assert hub.registered(ORIGIN) == [(ORIGIN, SERVICE, "printer3d", "", "onjobchange")]
    client.delete("/gotapi/printer3d/onJobChange", headers=HEADERS,
                  query_string={"serviceId": SERVICE, "accessToken": token})
    assert hub.registered(ORIGIN) == []


def test_nonce_gets_hmac_of_the_registered_key(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    key = "00112233445566778899aabbccddeeff"
    assert client.get("/gotapi/availability", headers=HEADERS,
                      query_string={"key": key}).get_json()["result"] == 0
    nonce = "0a0b0c0d0e0f1011"
    body = client.get("/gotapi/authorization/grant", headers=HEADERS,
                      query_string={"nonce": nonce}).get_json()
    expected = hmac.new(bytes.fromhex(key), bytes.fromhex(nonce), hashlib.sha256).hexdigest()
    assert body["hmac"] == expected
    other = client.get("/gotapi/authorization/grant", headers={"Origin": "http://localhost:1"},
                       query_string={"nonce": nonce}).get_json()
    assert "hmac" not in other  # that origin registered no key
    assert "hmac" not in client.get("/gotapi/availability", headers=HEADERS).get_json()


@pytest.mark.parametrize("nonce", ["a" * 258, "abc", "0a0b0c", "0a0b0c0d\n"])
def test_a_refused_nonce_is_not_signed(tmp_path: Path, nonce: str) -> None:
    """Too long, odd, too short, a trailing newline: 10, and no `hmac` over it."""
    client = make_app(tmp_path).test_client()
    client.get("/gotapi/availability", headers=HEADERS, query_string={"key": "ab" * 32})
    body = client.get("/gotapi/availability", headers=HEADERS,
                      query_string={"nonce": nonce}).get_json()
    assert body["errorCode"] == 10 and "hmac" not in body, body


@pytest.mark.parametrize("query,code", [({"key": "zz"}, 10), ({"key": "ab" * 8}, 10),
                                        ({"nonce": "not-hex"}, 10)])
def test_bad_key_or_nonce_is_10(tmp_path: Path, query: dict[str, str], code: int) -> None:
    body = make_app(tmp_path).test_client().get("/gotapi/availability", headers=HEADERS,
                                                query_string=query).get_json()
    assert body["errorCode"] == code


@pytest.mark.parametrize("headers,ok", [
    ({"Origin": "http://localhost:4035"}, True),      # the server's own web app
    ({"Origin": "http://127.0.0.1:8080"}, True),
    ({"Origin": "http://[::1]:4035"}, True),
    ({"Origin": "https://evil.example"}, False),       # any web site
    ({"Origin": "http://localhost.evil.example"}, False),
    ({"X-GotAPI-Origin": "com.example.app"}, True),    # a native app names itself
    ({"X-GotAPI-Origin": "null"}, False),
])
def test_default_origin_policy(tmp_path: Path, headers: dict[str, str], ok: bool) -> None:
    body = make_app(tmp_path).test_client().get("/gotapi/availability",
                                                headers=headers).get_json()
    assert (body["result"] == 0) is ok, body


def test_preflight_only_for_allowed_origins_by_default(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    req = {"Access-Control-Request-Method": "PUT"}
    good = client.options("/gotapi/printer3d/pause", headers={**req, **HEADERS})
    assert good.status_code == 204 and good.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Idempotency-Key" in good.headers["Access-Control-Allow-Headers"]
    bad = client.options("/gotapi/printer3d/pause",
                         headers={**req, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in bad.headers


def test_idempotency_key_travels_in_the_intent(tmp_path: Path) -> None:
    bus = printer_bus(lambda i: i.response({"jobId": "j"}))
    client = make_app(tmp_path, bus=bus).test_client()
    token = get_token(client)
    client.post("/gotapi/printer3d/print", headers={**HEADERS, "Idempotency-Key": "k-1"},
                data={"serviceId": SERVICE, "accessToken": token, "connectionId": "c"})
    client.post("/gotapi/printer3d/print", headers=HEADERS,
                data={"serviceId": SERVICE, "accessToken": token, "connectionId": "c",
                      "idempotencyKey": "k-2"})
    sent = [i for i, _, _ in bus.sent if i.profile == "printer3d"]
    assert [i.idempotency_key for i in sent] == ["k-1", "k-2"]
    assert all("idempotencyKey" not in i.params for i in sent)
    bad = client.post("/gotapi/printer3d/print", headers={**HEADERS, "Idempotency-Key": "a b"},
                      data={"serviceId": SERVICE, "accessToken": token, "connectionId": "c"})
    assert bad.get_json()["errorCode"] == 10


def _frames(direction: bytes, command: bytes, intent: Intent) -> list[bytes]:
    return [direction, b"plugin-host-1", PROTOCOL, command, encode(intent)]


def test_tap_latency_filters_and_redaction() -> None:
    req = Intent(Action.POST, profile="printer3d", attribute="connect", service_id="printer-1",
                 plugin_id="printer3d", origin=ORIGIN,
                 params={"contentsKey": "secret-key-123", "contentId": "abc"})
    rep = req.response({"connectionId": "c1", "token": "p3t1.AAAA"})
    other = Intent(Action.GET, profile="serviceInformation", service_id="printer-2",
                   plugin_id="printer3d")
    latency, keep = tapmod.Latency(), tapmod.Filter(profile="printer3d", service=SERVICE)
    records = []
    for t, frames in ((1.0, _frames(b"out", REQUEST, req)), (1.0, _frames(b"out", REQUEST, other)),
                      (1.25, _frames(b"in", REPLY, rep))):
        record = tapmod.describe(frames, t)
        latency.note(record)
        if keep.keeps(record):
            records.append(record)
    assert [r["command"] for r in records] == ["REQUEST", "REPLY"]
    assert records[1]["latencyMs"] == 250.0
    text = json.dumps(records) + "".join(tapmod.format_line(r) for r in records)
    assert "secret-key-123" not in text and "p3t1.AAAA" not in text
    from gotapi_server.redaction import redact_value
    assert records[0]["intent"]["params"]["contentsKey"] == redact_value("secret-key-123")
    assert redact_value("secret-key-123").startswith("<redacted 14 chars id:")
    assert records[0]["intent"]["params"]["contentId"] == "abc"
    assert "latency=250.00ms" in tapmod.format_line(records[1])


def test_tap_pub_never_blocks_without_subscribers() -> None:
    """The bus's tap is a PUB: with nobody subscribed every send returns at once."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 10)
    pub.bind("tcp://127.0.0.1:*")
    try:
        frame = msgpack.packb({"x": "y" * 1000})
        for _ in range(10_000):      # far beyond the HWM: dropped, never EAGAIN, never blocks
            pub.send_multipart([b"out", frame], zmq.NOBLOCK)
    finally:
        pub.close(linger=0)
        ctx.term()


def test_tap_prints_json_lines_from_a_real_pub() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    out = io.StringIO()
    import threading
    done = threading.Event()
    thread = threading.Thread(target=lambda: (tapmod.tap(endpoint, True, out, stop=done,
                                                         limit=1, profile="printer3d"),
                                              done.set()))
    thread.start()
    try:
        req = Intent(Action.GET, profile="printer3d", attribute="status",
                     service_id="printer-1", plugin_id="printer3d",
                     params={"accessToken": "tok"})
        deadline = time.monotonic() + 10
        while not done.is_set() and time.monotonic() < deadline:
            pub.send_multipart(_frames(b"out", REQUEST, req))
            time.sleep(0.05)
    finally:
        done.set()
        thread.join(5)
        pub.close(linger=0)
        ctx.term()
    line = json.loads(out.getvalue().splitlines()[0])
    assert line["intent"]["attribute"] == "status"
    assert line["intent"]["params"]["accessToken"].startswith("<redacted 3 chars")


def test_session_stop_drops_the_queue_and_wakes_the_sender() -> None:
    """A stopped session's sender sees None next, even behind a full queue."""
    from gotapi_server.events import SESSION_QUEUE, Session

    session = Session("http://localhost:4035")
    for i in range(SESSION_QUEUE):
        session.outbox.put_nowait(f"event {i}")
    session.stop()
    assert session.outbox.get_nowait() is None
    assert session.outbox.empty()


# ---- review: nonce in any body, never forwarded; WebSocket upgrades and handshakes ----

def _signed(key: str, nonce: str) -> str:
    return hmac.new(bytes.fromhex(key), bytes.fromhex(nonce), hashlib.sha256).hexdigest()


def test_a_nonce_in_a_json_body_is_checked_and_signed_and_the_body_wins(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    key = "00112233445566778899aabbccddeeff"
    client.get("/gotapi/availability", headers=HEADERS, query_string={"key": key})
    body = client.post("/gotapi/authorization/grant", headers=HEADERS,
                       json={"nonce": "0a0b0c0d0e0f1011"}).get_json()
    assert body["hmac"] == _signed(key, "0a0b0c0d0e0f1011")
    both = client.post("/gotapi/authorization/grant", headers=HEADERS,
                       query_string={"nonce": "1111111111111111"},
                       data={"nonce": "2222222222222222"}).get_json()
    assert both["hmac"] == _signed(key, "2222222222222222")
    for bad in ("zz", 12345678, ["0a0b0c0d"]):
        refused = client.post("/gotapi/authorization/grant", headers=HEADERS,
                              json={"nonce": bad}).get_json()
        assert refused["errorCode"] == 10 and "hmac" not in refused, bad


def test_the_nonce_is_not_forwarded_so_a_retry_keeps_its_idempotency_key(tmp_path: Path) -> None:
    bus = printer_bus(lambda i: i.response({"jobId": "j1"}))
    client = make_app(tmp_path, bus=bus).test_client()
    token = get_token(client)
    for nonce in ("0a0b0c0d", "1a1b1c1d"):          # a Device Connect retry: a fresh nonce
        client.post("/gotapi/printer3d/print", headers={**HEADERS, "Idempotency-Key": "k-1"},
                    data={"serviceId": SERVICE, "accessToken": token, "connectionId": "c1",
                          "nonce": nonce})
    sent = [(i.params, i.idempotency_key) for i, _, _ in bus.sent if i.attribute == "print"]
    assert sent == [({"connectionId": "c1"}, "k-1")] * 2


def test_an_integer_beyond_64_bits_is_10_not_a_traceback(tmp_path: Path) -> None:
    bus = printer_bus(lambda i: (encode(i), i.response({}))[1])   # encodes, as the bus does
    client = make_app(tmp_path, bus=bus).test_client()
    token = get_token(client)
    body = client.post("/gotapi/printer3d/print", headers=HEADERS,
                       json={"serviceId": SERVICE, "accessToken": token, "connectionId": "c1",
                             "x": 123456789012345678901234567890}).get_json()
    assert body["errorCode"] == 10 and "Intent" in body["errorMessage"]


@pytest.mark.parametrize("headers,status", [
    ({"Sec-WebSocket-Version": "8"}, 426),
    ({}, 426),                                                   # no version at all
    ({"Sec-WebSocket-Version": "13", "Connection": "keep-alive"}, 400),
    ({"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "short"}, 400),
    ({"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": None}, 400),
])
def test_a_malformed_websocket_upgrade_is_refused_in_json(tmp_path: Path, headers: dict,
                                                         status: int) -> None:
    upgrade = {**HEADERS, "Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **headers}
    resp = make_app(tmp_path).test_client().get(
        "/gotapi/websocket", headers={k: v for k, v in upgrade.items() if v is not None})
    assert resp.status_code == status and resp.get_json()["errorCode"] == 10
    if status == 426:
        assert resp.headers["Sec-WebSocket-Version"] == "13"


def test_a_deeply_nested_handshake_message_is_unparsable(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    with pytest.raises(Refused) as refused:
        handshake("[" * 30000 + "]" * 30000, ORIGIN, app.extensions["gotapi"].auth)
    assert refused.value.code == UNPARSABLE


def test_an_expired_token_is_3_with_a_message_that_says_so(tmp_path: Path) -> None:
    app = make_app(tmp_path, bus=printer_bus())
    auth = app.extensions["gotapi"].auth
    token = get_token(app.test_client())
    auth.clock = lambda: time.time() + 10 ** 9
    with pytest.raises(Refused) as err:
        handshake(json.dumps({"accessToken": token}), ORIGIN, auth)
    assert err.value.code == BAD_TOKEN and "expired" in str(err.value)


class _Socket:
    """What `_pump` uses of a flask-sock socket."""

    def __init__(self) -> None:
        self.connected, self.sent, self.closed = True, [], None

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def close(self, reason: int, message: str) -> None:
        self.connected, self.closed = False, (reason, message)


def test_a_socket_closes_with_12_once_its_token_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: a socket kept streaming events after its token expired (and held the
    origin's one slot, so a fresh token could not open another)."""
    import queue
    import threading

    from gotapi3dp.wire.errors import ErrorCode, P3DError
    from gotapi_server import websocket as wsmod
    monkeypatch.setattr(wsmod, "TOKEN_RECHECK", 0.05)
    expired = threading.Event()

    def still_valid() -> None:
        if expired.is_set():
            raise P3DError(ErrorCode.EXPIRED_ACCESS_TOKEN)
    ws, outbox = _Socket(), queue.Queue()
    outbox.put('{"n": 1}')
    pump = threading.Thread(target=wsmod._pump, args=(ws, outbox, still_valid))
    pump.start()
    time.sleep(0.2)                       # several checks pass while the token is valid
    assert ws.sent == [{"n": 1}] and ws.connected
    expired.set()
    outbox.put('{"n": 2}')
    pump.join(5)
    assert not pump.is_alive()
    assert ws.sent[-1] == {"result": 1, "errorCode": 12, "errorMessage": "Access token expired."}
    assert ws.closed == (1008, "Access token expired.")


def test_tap_shows_where_frames_were_dropped_and_when_the_bus_restarted() -> None:
    """Review: a tap that read too slowly lost 11 % of the frames and said nothing."""
    import threading
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    out, done, notices = io.StringIO(), threading.Event(), []
    thread = threading.Thread(target=lambda: (tapmod.tap(endpoint, True, out, stop=done, limit=4,
                                                         notice=notices.append), done.set()))
    thread.start()
    req = Intent(Action.GET, profile="printer3d", attribute="status", service_id="printer-1",
                 plugin_id="printer3d")
    try:
        deadline = time.monotonic() + 10
        while not any("connected" in n for n in notices) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)                          # the subscription reaches the PUB
        for seq in (7, 8, 12, 3):                # 9-11 lost; then a restarted bus
            frames = _frames(b"out", REQUEST, req)
            pub.send_multipart([tapmod.tap_topic(b"out", seq), *frames[1:]])
        thread.join(10)
    finally:
        done.set()
        thread.join(5)
        pub.close(linger=0)
        ctx.term()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r.get("seq", r.get("dropped", "restarted" if r.get("restarted") else None))
            for r in lines] == [7, 8, 3, 12, "restarted", 3]
    assert lines[2]["dropped"] == 3
    assert "3 frames dropped here" in tapmod.format_line(lines[2])
