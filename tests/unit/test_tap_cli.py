"""`gotapi-3dp bus tap`: its arguments, its plain lines, its filters (no running bus), and
what it says about its connection (against real sockets coming and going)."""
from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import pytest
import zmq

from gotapi3dp import cli
from gotapi3dp.wire.busproto import EVENT, PROTOCOL, REQUEST
from gotapi3dp.wire.intent import Action, Intent, decode, encode
from gotapi3dp.config import ConfigError
from gotapi_server.redaction import redact, redact_body, redact_value
from gotapi_server.tap import Filter, _tcp_host, describe, format_line, tap

ORIGIN = "http://localhost:8080"


def _tapped(intent: Intent) -> dict:
    """The record the tap makes of `intent` sent to a plug-in host."""
    return describe([b"out", b"plugin-host-1", PROTOCOL, REQUEST, encode(intent)], 1_700_000_000.25)


# -- D10: bad arguments are operator errors, not silence or tracebacks ---------------------------
@pytest.mark.parametrize("count", ["0", "-1", "many"])
def test_a_count_that_is_not_positive_is_a_usage_error(tmp_path: Path, count: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--data-dir", str(tmp_path / "d"), "bus", "tap", "--count", count])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --count: must be a positive integer, not {count!r}" in err


@pytest.mark.parametrize("endpoint", ["foo", "nonsense://x", "tcp://no-such-host.invalid:4041",
                                      "tcp://[::1", "tcp://[x]:1"])
def test_a_bad_endpoint_is_a_one_line_error(tmp_path: Path, endpoint: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--data-dir", str(tmp_path / "d"), "bus", "tap", "--endpoint", endpoint,
                     "--count", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"gotapi-3dp: error: cannot tap {endpoint!r}: ")
    assert captured.err.count("\n") == 1, captured.err      # no banner, no traceback


# -- D11: the origin, and lifecycle notices through --profile ------------------------------------
def test_a_disconnect_notice_shows_its_origin() -> None:
    line = format_line(_tapped(Intent(Action.EVENT_TRANSMIT_DISCONNECT, origin=ORIGIN)))
    assert " REQUEST EVENT_TRANSMIT_DISCONNECT / " in line
    assert f"origin={ORIGIN} " in line


def test_a_request_shows_its_origin_and_keeps_secrets_redacted() -> None:
    secret = "s3cr3t-access-token-value"
    record = _tapped(Intent(Action.POST, profile="printer3d", attribute="connect",
                            service_id="printer-1", origin=ORIGIN, plugin_id="printer3d",
                            params={"accessToken": secret, "contentId": "abc"}))
    line = format_line(record)
    assert f"origin={ORIGIN} " in line and "/printer3d/connect" in line
    assert secret not in line and secret not in str(record)
    assert record["intent"]["params"]["accessToken"].startswith("<redacted 25 chars id:")


@pytest.mark.parametrize("params", [
    {"contentsKey": {"nested": "s3cr3t-in-a-map"}},          # a map under a secret name
    {"accessTokens": ["s3cr3t-in-a-list"]},                   # names that only hold `token`
    {"password": "s3cr3t-password"},
    {"passwd": "s3cr3t-passwd"},
    {"sealed": b"p3t1.s3cr3t-sealed-bytes"},                 # a sealed token sent as bytes
    {"list": [{"apiKey": "s3cr3t-deep"}]},
])
def test_secrets_in_any_shape_are_redacted(params: dict) -> None:
    record = _tapped(Intent(Action.POST, profile="printer3d", attribute="connect",
                            params=params))
    assert "s3cr3t" not in str(record) and "s3cr3t" not in format_line(record)
    assert "<redacted " in str(record)


def test_redacting_twice_keeps_the_first_marker() -> None:
    once = redact({"accessToken": "s3cr3t-value"})
    assert redact(once) == once
    assert once["accessToken"] == redact_value("s3cr3t-value")


def test_the_bus_publishes_intents_already_redacted() -> None:
    secret = "s3cr3t-contents-key"
    intent = Intent(Action.POST, profile="printer3d", attribute="connect",
                    params={"contentsKey": secret, "contentId": "abc"}, idempotency_key="k-1")
    body = redact_body(encode(intent))
    assert secret.encode() not in body and b"k-1" not in body
    shown = decode(body)
    assert shown.params["contentId"] == "abc" and shown.request_code == intent.request_code
    assert shown.params["contentsKey"].startswith("<redacted 19 chars id:")
    plain = encode(Intent(Action.GET, profile="printer3d", attribute="status"))
    assert redact_body(plain) == plain           # nothing secret: the same bytes
    assert redact_body(b"\xc1 not msgpack") == b""  # unchecked bytes never leave


def test_text_a_peer_chose_cannot_forge_or_drive_the_terminal() -> None:
    forged = "x\n12:00:00.000 out plugin-host-1 REPLY RESPONSE / result=0"
    intent = Intent(Action.EVENT, profile="printer3d", attribute="\x1b[2Jjob",
                    service_id="s\x1b]0;owned\x07", plugin_id=forged)
    record = describe([b"in", b"peer REPLY", PROTOCOL, EVENT, encode(intent)], 1_700_000_000.0)
    line = format_line(record)
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line
    assert "'peer REPLY'" in line        # a routing id with a space is quoted too


def test_a_body_the_bus_withheld_says_so() -> None:
    record = describe([b"in", b"peer", PROTOCOL, EVENT, b""], 1_700_000_000.0)
    assert "withheld by the bus" in format_line(record)


def test_a_line_without_origin_has_no_origin_field() -> None:
    line = format_line(_tapped(Intent(Action.GET, profile="printer3d", attribute="status")))
    assert "origin=" not in line


@pytest.mark.parametrize("action", [Action.EVENT_TRANSMIT_DISCONNECT, Action.MANAGER_LAUNCHED,
                                    Action.MANAGER_TERMINATED, Action.PLUGIN_RESET])
def test_lifecycle_notices_to_every_plugin_pass_profile_and_service_filters(action: Action) -> None:
    assert Filter(profile="printer3d").keeps(_tapped(Intent(action, origin=ORIGIN)))
    assert Filter(service="printer-1").keeps(_tapped(Intent(action, origin=ORIGIN)))
    assert Filter(profile="printer3d", service="printer-1.printer3d").keeps(
        _tapped(Intent(action, origin=ORIGIN)))


def test_a_profile_filter_still_drops_other_profiles() -> None:
    keep = Filter(profile="printer3d")
    assert not keep.keeps(_tapped(Intent(Action.GET, profile="echo", attribute="say")))
    assert not keep.keeps(_tapped(Intent(Action.GET)))          # a request with no profile
    assert not keep.keeps(_tapped(Intent(Action.EVENT_TRANSMIT_DISCONNECT, profile="echo")))
    assert keep.keeps(_tapped(Intent(Action.GET, profile="Printer3D", attribute="status")))
    other = Filter(service="printer-1")
    assert not other.keeps(_tapped(Intent(Action.GET, profile="printer3d", service_id="printer-2",
                                          plugin_id="printer3d")))


# -- D12: what the latency is --------------------------------------------------------------------
def test_tap_help_says_what_the_latency_measures(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bus", "tap", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("the time between this tap receiving the REQUEST and receiving its REPLY" in text)
    assert "includes the tap's own scheduling" in text
    assert "two taps can show different latencies for the same request" in text


# -- a tap whose bus is down says so, instead of looking like a quiet bus -------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(notices: list[str], text: str, nth: int = 1, timeout: float = 10.0) -> bool:
    """Whether `text` appears in `nth` of the notices within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(text in n for n in notices) >= nth:
            return True
        time.sleep(0.02)
    return False


def test_the_tap_says_when_nothing_answers_when_it_connects_and_when_the_bus_goes() -> None:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    notices: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(target=tap, args=(endpoint, False, io.StringIO(), stop),
                              kwargs={"notice": notices.append}, daemon=True)
    thread.start()
    ctx = zmq.Context()
    try:
        assert _wait_for(notices, f"nothing answers at {endpoint} yet"), notices
        pub = ctx.socket(zmq.XPUB)
        pub.bind(endpoint)
        assert _wait_for(notices, f"connected to {endpoint}"), notices
        pub.close(linger=0)
        assert _wait_for(notices, f"lost {endpoint}; reconnecting"), notices
        pub = ctx.socket(zmq.XPUB)
        pub.bind(endpoint)
        assert _wait_for(notices, f"connected to {endpoint}", nth=2), notices
        pub.close(linger=0)
    finally:
        stop.set()
        thread.join(timeout=5)
        ctx.destroy(linger=0)
    assert not thread.is_alive()
    # said once each time, not once per retry (the last close may add a last "lost")
    assert [n.split(" ")[0] for n in notices][:4] == ["nothing", "connected", "lost", "connected"]
    assert len(notices) <= 5, notices


def _notices_of(endpoint: str, wanted: str) -> list[str]:
    """Run a tap on `endpoint` until a notice containing `wanted` (or 10 s); its notices."""
    notices: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(target=tap, args=(endpoint, False, io.StringIO(), stop),
                              kwargs={"notice": notices.append}, daemon=True)
    thread.start()
    try:
        _wait_for(notices, wanted)
    finally:
        stop.set()
        thread.join(timeout=5)
    return notices


def test_tapping_the_bus_endpoint_by_mistake_says_it_is_not_a_tap() -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)       # what gotapi.bus_endpoint is
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        notices = _notices_of(f"tcp://127.0.0.1:{port}", "not as a bus tap")
    finally:
        ctx.destroy(linger=0)
    assert len(notices) == 1 and "is it gotapi.tap_endpoint, not the bus endpoint?" in notices[0]


def test_tapping_something_that_is_not_zeromq_says_so() -> None:
    with socket.socket() as server:       # accepts, then hangs up without a ZMTP greeting
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        closer = threading.Thread(target=lambda: server.accept()[0].close(), daemon=True)
        closer.start()
        notices = _notices_of(f"tcp://127.0.0.1:{port}", "not as a bus tap")
    assert any("something answers" in n for n in notices), notices


def test_a_host_that_drops_connection_attempts_is_reported_within_seconds() -> None:
    """A listener whose accept queue is full drops SYNs, as a firewall does; the kernel's
    own connect timeout would take minutes."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        for filler in fillers:
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
        try:
            start = time.monotonic()
            notices = _notices_of(f"tcp://127.0.0.1:{port}", "nothing answers")
            took = time.monotonic() - start
        finally:
            for filler in fillers:
                filler.close()
    assert any("nothing answers" in n for n in notices) and took < 8, (notices, took)


def test_an_ipv6_tap_endpoint_connects() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.IPV6, 1)
    try:
        port = pub.bind_to_random_port("tcp://[::1]")
    except zmq.ZMQError:
        ctx.destroy(linger=0)
        pytest.skip("no IPv6 loopback here")
    try:
        notices = _notices_of(f"tcp://[::1]:{port}", "connected to")
    finally:
        ctx.destroy(linger=0)
    assert notices == [f"connected to tcp://[::1]:{port}"], notices


def test_an_unresolvable_tap_host_is_an_error_at_once() -> None:
    with pytest.raises(ConfigError, match="host 'no-such-host.invalid' does not resolve"):
        tap("tcp://no-such-host.invalid:4041", False, io.StringIO(), limit=1)


@pytest.mark.parametrize("endpoint, host", [
    ("tcp://127.0.0.1:4041", "127.0.0.1"), ("tcp://localhost:4041", "localhost"),
    ("tcp://*:4041", None), ("tcp://[::1]:4041", "::1"), ("ipc:///tmp/tap", None),
    ("tcp://127.0.0.1;bus.example:4041", "bus.example")])
def test_the_host_a_tap_looks_up(endpoint: str, host: str | None) -> None:
    assert _tcp_host(endpoint) == host


def test_redaction_by_word_by_shape_anywhere_and_with_a_keyed_id() -> None:
    """Review: `pin`, `pwd` and `sessionId` passed; "see p3t1.BBBB" was shown; the plain
    SHA-256 prefix of a short secret (a PIN) could be found by trying every value."""
    import hashlib

    from gotapi_server.redaction import redact
    shown = redact({"pin": "1234", "userPwd": "x", "sessionId": "s", "otp_code": "9",
                    "spin": "fast", "pinned": True, "consider": "it",
                    "errorMessage": "token p3t1.BBBB.cc refused", "note": "p3t1. alone"})
    for name in ("pin", "userPwd", "sessionId", "otp_code"):
        assert shown[name].startswith("<redacted "), name
    assert shown["spin"] == "fast" and shown["pinned"] is True and shown["consider"] == "it"
    assert "p3t1.BBBB" not in shown["errorMessage"]
    assert shown["errorMessage"].startswith("token <redacted 12 chars id:")
    assert shown["errorMessage"].endswith(" refused")
    assert hashlib.sha256(b"1234").hexdigest()[:8] not in shown["pin"]
    assert redact(shown) == shown                      # twice changes nothing
