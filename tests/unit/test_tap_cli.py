"""`gotapi-3dp bus tap`: its arguments, its plain lines and its filters (no running bus)."""
from __future__ import annotations

from pathlib import Path

import pytest

from gotapi3dp import cli
from gotapi3dp.wire.busproto import PROTOCOL, REQUEST
from gotapi3dp.wire.intent import Action, Intent, encode
from gotapi_server.tap import Filter, describe, format_line

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


@pytest.mark.parametrize("endpoint", ["foo", "nonsense://x"])
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
    assert record["intent"]["params"]["accessToken"].startswith("<redacted 25 chars sha256:")


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
