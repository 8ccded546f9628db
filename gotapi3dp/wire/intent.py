"""The GotAPI-4 Intent: one msgpack map, defined once, decoded strictly.

An Intent carries an app request from the GotAPI server to a plug-in (actions GET, POST,
PUT, DELETE), the plug-in's answer back (RESPONSE, echoing the 128-bit `requestCode`),
events (EVENT) and lifecycle notices. Decoding never trusts the peer: size limit, no msgpack
extension types, every field type-checked, unknown actions refused with `IntentError`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import msgpack

INTENT_VERSION = 1
MAX_INTENT_BYTES = 1 << 20  # 1 MiB: an Intent carries parameters, never a model
REQUEST_CODE_BYTES = 16

# Types a parameter or body value may have after decoding (recursively for list/dict).
_SCALARS = (str, int, float, bool, bytes, type(None))
_SCALAR_TYPES = frozenset(_SCALARS)  # exact types: the fast path; subclasses go by isinstance
_MAX_DEPTH = 16


class Action(str, Enum):
    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    DELETE = "DELETE"
    RESPONSE = "RESPONSE"
    EVENT = "EVENT"
    # Lifecycle, as Device Connect's MANAGER_LAUNCHED / EVENT_TRANSMIT_DISCONNECT / ...
    MANAGER_LAUNCHED = "MANAGER_LAUNCHED"
    MANAGER_TERMINATED = "MANAGER_TERMINATED"
    EVENT_TRANSMIT_DISCONNECT = "EVENT_TRANSMIT_DISCONNECT"
    PLUGIN_RESET = "PLUGIN_RESET"

    @property
    def is_request(self) -> bool:
        return self in REQUEST_ACTIONS


REQUEST_ACTIONS = frozenset({Action.GET, Action.POST, Action.PUT, Action.DELETE})


class IntentError(ValueError):
    """A frame that is not a valid Intent. `request_code` is set when it could be read."""

    def __init__(self, message: str, request_code: bytes | None = None) -> None:
        super().__init__(message)
        self.request_code = request_code


def new_request_code() -> bytes:
    return os.urandom(REQUEST_CODE_BYTES)


@dataclass
class Intent:
    """An Android-style Intent as it travels on the bus.

    `params` are the app's parameters (request) or the response payload fields (RESPONSE,
    EVENT). `result`, `error_code` and `error_message` are set on RESPONSE only.
    """

    action: Action
    request_code: bytes = field(default_factory=new_request_code)
    profile: str = ""
    interface: str | None = None
    attribute: str | None = None
    service_id: str | None = None
    origin: str | None = None
    plugin_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    result: int | None = None
    error_code: int | None = None
    error_message: str | None = None
    version: int = INTENT_VERSION
    # Set by the server on state-changing requests (POST/PUT/DELETE) from the app's
    # `Idempotency-Key` header or parameter: a plug-in answers a repeated key with the
    # first answer instead of acting twice.
    idempotency_key: str | None = None

    def response(self, params: dict[str, Any] | None = None) -> "Intent":
        """A successful RESPONSE to this request, echoing its requestCode."""
        return Intent(Action.RESPONSE, self.request_code, self.profile, self.interface,
                      self.attribute, self.service_id, self.origin, self.plugin_id,
                      params or {}, result=0)

    def error(self, code: int, message: str) -> "Intent":
        """An error RESPONSE to this request."""
        return Intent(Action.RESPONSE, self.request_code, self.profile, self.interface,
                      self.attribute, self.service_id, self.origin, self.plugin_id,
                      {}, result=1, error_code=int(code), error_message=message)

    @property
    def path(self) -> str:
        parts = [self.profile, self.interface, self.attribute]
        return "/" + "/".join(p for p in parts if p)

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"v": self.version, "action": self.action.value,
                             "requestCode": self.request_code, "profile": self.profile}
        for key, attr, _ in _OPTIONAL:
            value = getattr(self, attr)
            if value is not None:
                m[key] = value
        m["params"] = self.params
        return m


# The optional header fields as (wire key, attribute, type): one table for both directions.
_OPTIONAL = (("interface", "interface", str), ("attribute", "attribute", str),
             ("serviceId", "service_id", str), ("origin", "origin", str),
             ("pluginId", "plugin_id", str), ("result", "result", int),
             ("errorCode", "error_code", int), ("errorMessage", "error_message", str),
             ("idempotencyKey", "idempotency_key", str))
_OPTIONAL_BY_KEY = {key: (attr, kind) for key, attr, kind in _OPTIONAL}
_REQUIRED_KEYS = frozenset({"v", "action", "requestCode", "profile", "params"})


def encode(intent: Intent) -> bytes:
    """Encode an Intent; refuse what `decode` would refuse (the same checks, and oversize),
    so a peer never has to answer our own malformed message."""
    m = intent.to_map()
    _fields(m)
    try:
        data = msgpack.packb(m, use_bin_type=True)
    except OverflowError:   # an int outside msgpack's 64 bits (JSON allows any size)
        raise IntentError("a number does not fit in 64 bits", intent.request_code) from None
    if len(data) > MAX_INTENT_BYTES:
        raise IntentError(f"intent is {len(data)} bytes, limit {MAX_INTENT_BYTES}",
                          intent.request_code)
    return data


def _reject_ext(code: int, data: bytes) -> Any:
    raise IntentError(f"msgpack extension type {code} is not allowed")


def unpack_strict(data: bytes, limit: int = MAX_INTENT_BYTES) -> Any:
    """msgpack-decode untrusted bytes: bounded, no extension types, str map keys only."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise IntentError("frame is not bytes")
    if len(data) > limit:
        raise IntentError(f"frame is {len(data)} bytes, limit {limit}")
    try:
        return msgpack.unpackb(bytes(data), raw=False, strict_map_key=True,
                               ext_hook=_reject_ext, use_list=True)
    except IntentError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError) as exc:
        raise IntentError(f"not a valid msgpack map: {type(exc).__name__}") from None


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether a value holds only maps with str keys, lists and scalars, not too deep.
    Builds no strings (`_check_value` names the culprit only when this says no) and looks
    at each value's exact type once: it runs on every Intent both ways."""
    if depth > _MAX_DEPTH:
        return False
    kind = type(value)
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str and not isinstance(k, str):
                return False
            if type(v) not in _SCALAR_TYPES and not _plain(v, depth + 1):
                return False
        return True
    if kind is list:
        for v in value:
            if type(v) not in _SCALAR_TYPES and not _plain(v, depth + 1):
                return False
        return True
    return kind in _SCALAR_TYPES or isinstance(value, _SCALARS)


def _check_value(value: Any, where: str, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise IntentError(f"{where} nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise IntentError(f"{where} has a non-string key")
            _check_value(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]", depth + 1)
    elif not isinstance(value, _SCALARS):
        raise IntentError(f"{where} has an unsupported type")


def decode(data: bytes) -> Intent:
    """Decode and validate one Intent; raise IntentError on anything unexpected."""
    m = unpack_strict(data)
    if not isinstance(m, dict):
        raise IntentError("intent is not a map")
    return Intent(**_fields(m))


def _fields(m: dict[str, Any]) -> dict[str, Any]:
    """The Intent fields of a wire map, or IntentError (naming the requestCode once it is
    readable): the one definition of a valid Intent, applied to what arrives and what leaves."""
    rc = m.get("requestCode")
    if not isinstance(rc, bytes) or len(rc) != REQUEST_CODE_BYTES:
        raise IntentError("requestCode must be 16 bytes")
    if m.get("v") != INTENT_VERSION:
        raise IntentError(f"unsupported intent version {m.get('v')!r}", rc)
    try:
        action = _ACTIONS[m.get("action")]
    except (KeyError, TypeError):
        raise IntentError(f"unknown action {m.get('action')!r}", rc) from None
    profile = m.get("profile")
    if not isinstance(profile, str):
        raise IntentError("field 'profile' must be str", rc)
    params = m.get("params", {})
    if not isinstance(params, dict):
        raise IntentError("field 'params' must be a map", rc)
    if not _plain(params):
        _check_value(params, "params")
    fields = {"action": action, "request_code": rc, "profile": profile, "params": params}
    unknown = []
    for key, value in m.items():
        spec = _OPTIONAL_BY_KEY.get(key)
        if spec is None:
            if key not in _REQUIRED_KEYS:
                unknown.append(key)
        elif value is not None:
            attr, kind = spec
            if type(value) is not kind and (not isinstance(value, kind) or type(value) is bool):
                raise IntentError(f"field {key!r} must be {kind.__name__}", rc)
            fields[attr] = value
    if unknown:
        raise IntentError(f"unknown fields {sorted(unknown)}", rc)
    return fields


_ACTIONS = {action.value: action for action in Action}
