"""A plug-in profile's Swagger 2.0 document as the server's parameter check (error 10).

The document a plug-in announces (READY `apis`, also shown by serviceInformation's
`supportApis`) is the single source: `check_request(doc, method, interface, attribute,
params)` finds the operation (unknown attribute 4, unknown interface 8, method not there 3)
and checks every declared parameter but `serviceId`/`accessToken` (handled before):
required, type (string, integer, number, boolean; form values are strings and are
converted), `enum`, `pattern`, `minLength`/`maxLength`, `minimum`/`maximum`. The message
names the parameter. Undeclared parameters pass through untouched, as Device Connect does.
No I/O here.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import re2

from gotapi3dp.wire.errors import ErrorCode, P3DError

_SKIPPED = frozenset({"serviceId", "accessToken"})
_TRUE, _FALSE = frozenset({"true", "1"}), frozenset({"false", "0"})
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False   # a refused pattern is our ValueError, not a line on stderr


def _bad(name: str, why: str) -> P3DError:
    return P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                    f"Request parameters are invalid: {name} {why}.")


def find_operation(doc: dict[str, Any], method: str, interface: str | None,
                   attribute: str | None) -> dict[str, Any]:
    """The operation object for this call, or P3DError 4 / 8 / 3."""
    wanted = "/" + "/".join(p for p in (interface, attribute) if p)
    paths = {k.lower(): v for k, v in (doc.get("paths") or {}).items()}
    ops = paths.get(wanted.lower())
    if not isinstance(ops, dict):
        if interface is not None:
            raise P3DError(ErrorCode.UNKNOWN_ATTRIBUTE,
                           f"No interface/attribute {wanted} in this profile.")
        raise P3DError(ErrorCode.NOT_SUPPORT_ATTRIBUTE, f"Attribute {wanted} is not supported.")
    op = ops.get(method.lower())
    if not isinstance(op, dict):
        raise P3DError(ErrorCode.NOT_SUPPORT_ACTION, f"{method} is not supported on {wanted}.")
    return op


def is_event(op: dict[str, Any]) -> bool:
    return op.get("x-type") == "event"


def check_request(doc: dict[str, Any], method: str, interface: str | None,
                  attribute: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """Validate `params` against the operation; return it (P3DError otherwise)."""
    op = find_operation(doc, method, interface, attribute)
    for spec in op.get("parameters") or []:
        if not isinstance(spec, dict) or spec.get("name") in _SKIPPED:
            continue
        name = str(spec.get("name"))
        value = params.get(name)
        if value is None or value == "":
            if spec.get("required"):
                raise _bad(name, "is required")
            continue
        _check_value(name, spec, value)
    return op


def _check_value(name: str, spec: dict[str, Any], value: Any) -> None:
    kind = spec.get("type", "string")
    typed = _typed(name, kind, value)
    if "enum" in spec and typed not in spec["enum"] and value not in spec["enum"]:
        raise _bad(name, f"must be one of {spec['enum']}")
    if kind == "string":
        if len(typed) > spec.get("maxLength", len(typed)):
            raise _bad(name, f"is longer than {spec['maxLength']} characters")
        if len(typed) < spec.get("minLength", 0):
            raise _bad(name, f"is shorter than {spec['minLength']} characters")
        if "pattern" in spec and not _pattern(spec["pattern"]).search(typed):
            raise _bad(name, "has an invalid format")
    if kind in ("integer", "number"):
        if "minimum" in spec and typed < spec["minimum"]:
            raise _bad(name, f"is below {spec['minimum']}")
        if "maximum" in spec and typed > spec["maximum"]:
            raise _bad(name, f"is above {spec['maximum']}")


def _typed(name: str, kind: str, value: Any) -> Any:
    """The value as the declared type (form values arrive as strings)."""
    try:
        if kind == "string":
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in _TRUE | _FALSE:
                raise ValueError
            return text in _TRUE
        if isinstance(value, bool):
            raise ValueError
        if kind == "integer":
            if isinstance(value, float) or (isinstance(value, str) and not
                                            re.fullmatch(r"-?[0-9]{1,18}", value)):
                raise ValueError
            return int(value)
        if kind == "number":
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError
            return number
    except (TypeError, ValueError):
        raise _bad(name, f"must be {kind}") from None
    return value  # array/object/file: not checked beyond presence


@lru_cache(maxsize=256)
def _pattern(pattern: str) -> Any:
    """A Swagger `pattern` compiled by RE2: linear time whatever the pattern and the value
    (a plug-in's `^(a+)+$` held Python's `re` for 5.6 s on 27 characters, and the whole
    server with it), and `$` is the end of the value as in ECMA-262 (Python's also matches
    before a final newline). RE2 has no backreferences or lookaround: such a pattern is
    refused when the plug-in announces it (`check_document`)."""
    return re2.compile(pattern, options=_RE2_OPTIONS)


def check_document(doc: Any) -> None:
    """ValueError naming the first thing in a plug-in's Swagger document that the checks
    above could not apply (a pattern RE2 refuses, a bound that is not a number...), so it
    is refused at READY rather than failing an app's request with "unknown error"."""
    if not isinstance(doc, dict) or not isinstance(doc.get("paths", {}), dict):
        raise ValueError("not a Swagger document with `paths`")
    for path, item in doc.get("paths", {}).items():
        for method, op in (item.items() if isinstance(item, dict) else ()):
            for spec in (op.get("parameters") or []) if isinstance(op, dict) else ():
                if isinstance(spec, dict):
                    _check_spec(f"{method.upper()} {path} {spec.get('name')}", spec)


def _check_spec(where: str, spec: dict[str, Any]) -> None:
    for bound in ("minLength", "maxLength"):
        value = spec.get(bound, 0)
        if type(value) is not int or value < 0:
            raise ValueError(f"{where}: {bound} must be a non-negative integer")
    for bound in ("minimum", "maximum"):
        value = spec.get(bound, 0)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{where}: {bound} must be a number")
    if "enum" in spec and not isinstance(spec["enum"], list):
        raise ValueError(f"{where}: enum must be a list")
    if "pattern" in spec:
        if not isinstance(spec["pattern"], str):
            raise ValueError(f"{where}: pattern must be a string")
        try:
            _pattern(spec["pattern"])
        except re2.error as exc:
            raise ValueError(f"{where}: pattern {spec['pattern'][:80]!r} is not usable: "
                             f"{exc}") from None
