"""The shared Intent codec: round trip, and strict refusal of everything else."""
from __future__ import annotations

import msgpack
import pytest

from gotapi3dp.wire.intent import (MAX_INTENT_BYTES, Action, Intent, IntentError, decode, encode,
                                   new_request_code)


def _map(**changes: object) -> dict[str, object]:
    m = Intent(Action.GET, profile="printer3d", attribute="status", service_id="printer-1",
               plugin_id="printer3d").to_map()
    m.update(changes)
    return m


def _pack(m: object) -> bytes:
    return msgpack.packb(m, use_bin_type=True)


def test_round_trip_keeps_every_field() -> None:
    intent = Intent(Action.POST, profile="printer3d", interface="job", attribute="start",
                    service_id="printer-1", origin="app.example", plugin_id="printer3d",
                    params={"n": 1, "f": 1.5, "s": "x", "b": b"\x00\xff", "l": [1, None, True],
                            "d": {"k": ["v"]}})
    assert decode(encode(intent)) == intent


def test_response_and_error_echo_request_code() -> None:
    request = Intent(Action.GET, profile="p")
    ok, bad = request.response({"a": 1}), request.error(7, "late")
    assert decode(encode(ok)).request_code == request.request_code
    back = decode(encode(bad))
    assert (back.action, back.result, back.error_code, back.error_message) == \
        (Action.RESPONSE, 1, 7, "late")


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_is_refused(cut: int) -> None:
    data = encode(Intent(Action.GET, profile="p", params={"x": "y" * 50}))
    with pytest.raises(IntentError):
        decode(data[:-cut])


def test_reserved_byte_0xc1_is_refused() -> None:
    with pytest.raises(IntentError):
        decode(b"\xc1")
    with pytest.raises(IntentError):
        decode(b"\x81\xa1a\xc1")


def test_extension_type_is_refused() -> None:
    data = _pack(_map(params={"x": msgpack.ExtType(5, b"abc")}))
    with pytest.raises(IntentError, match="extension"):
        decode(data)


def test_timestamp_extension_is_refused() -> None:
    data = _pack(_map()) [:-1] + b"\xd6\xff\x00\x00\x00\x01"  # params = Timestamp(1)
    with pytest.raises(IntentError):
        decode(data)


def test_non_string_keys_are_refused() -> None:
    with pytest.raises(IntentError):
        decode(_pack({1: "x", "v": 1}))
    with pytest.raises(IntentError):
        decode(_pack(_map(params={"a": {2: 3}})))


def test_deep_nesting_is_refused() -> None:
    deep: object = "leaf"
    for _ in range(40):
        deep = [deep]
    with pytest.raises(IntentError, match="deeply"):
        decode(_pack(_map(params={"x": deep})))


def test_very_deep_nesting_does_not_blow_the_stack() -> None:
    with pytest.raises(IntentError):
        decode(b"\x91" * 100_000 + b"\xc0")


@pytest.mark.parametrize("field,value", [
    ("profile", 5), ("attribute", 1), ("serviceId", b"x"), ("result", "0"), ("result", True),
    ("errorCode", 1.5), ("params", [1]), ("requestCode", "0" * 16), ("requestCode", b"short"),
    ("v", 2), ("pluginId", ["a"]),
])
def test_wrong_field_types_are_refused(field: str, value: object) -> None:
    with pytest.raises(IntentError):
        decode(_pack(_map(**{field: value})))


def test_unknown_field_is_refused_with_request_code() -> None:
    rc = new_request_code()
    with pytest.raises(IntentError) as info:
        decode(_pack(_map(requestCode=rc, extra=1)))
    assert info.value.request_code == rc


def test_unknown_action_names_the_request_code() -> None:
    rc = new_request_code()
    with pytest.raises(IntentError, match="unknown action") as info:
        decode(_pack(_map(requestCode=rc, action="LAUNCH")))
    assert info.value.request_code == rc


def test_unreadable_request_code_is_none() -> None:
    with pytest.raises(IntentError) as info:
        decode(_pack(_map(requestCode=b"x", action="LAUNCH")))
    assert info.value.request_code is None


def test_not_a_map_is_refused() -> None:
    with pytest.raises(IntentError):
        decode(_pack([1, 2, 3]))


def test_oversize_is_refused_both_ways() -> None:
    big = Intent(Action.POST, profile="p", params={"blob": b"x" * MAX_INTENT_BYTES})
    with pytest.raises(IntentError) as info:
        encode(big)
    assert info.value.request_code == big.request_code
    with pytest.raises(IntentError, match="limit"):
        decode(b"\x00" * (MAX_INTENT_BYTES + 1))


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(IntentError):
        decode(encode(Intent(Action.GET, profile="p")) + b"\x00")


@pytest.mark.parametrize("change", [
    {"service_id": 5}, {"result": True}, {"error_code": "7"}, {"plugin_id": b"p"},
    {"request_code": b"short"}, {"version": 2}, {"profile": None},
    {"params": {"x": object()}}, {"params": {1: "x"}},
])
def test_encode_refuses_what_decode_would(change: dict[str, object]) -> None:
    """One definition of a valid Intent both ways: a peer never receives our malformed one."""
    intent = Intent(Action.RESPONSE, profile="printer3d", plugin_id="printer3d", result=0)
    for name, value in change.items():
        setattr(intent, name, value)
    with pytest.raises(IntentError):
        encode(intent)


def test_str_subclass_fields_encode_and_decode_as_str() -> None:
    class Name(str):
        pass

    back = decode(encode(Intent(Action.GET, profile=Name("printer3d"), service_id=Name("p-1"))))
    assert (back.profile, back.service_id) == ("printer3d", "p-1")
    assert type(back.service_id) is str
