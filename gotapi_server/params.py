"""An app's request parameters, as one flat dict.

GET and DELETE: the query string. POST and PUT (and a DELETE that has a body): the form body
(`application/x-www-form-urlencoded` or `multipart/form-data` fields) or a JSON object,
merged over the query string. Form and query values are strings; a JSON body may carry other
JSON types. A JSON body that is not an object, or nests too deeply for an Intent, is 10.
"""
from __future__ import annotations

import json
from typing import Any

from flask import g, request

from gotapi3dp.wire.errors import ErrorCode, P3DError

MAX_JSON_DEPTH = 8  # an Intent refuses values nested deeper than 16


def _depth(value: Any, level: int = 0) -> int:
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def read_body() -> bytes:
    """The body, read once. A body without Content-Length (chunked) that runs past the limit
    is 1003: werkzeug's stream stops at the limit without a word, and the cut body would
    be read as if it were whole."""
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        if request.environ["wsgi.input"].read(1):
            raise P3DError(ErrorCode.PAYLOAD_TOO_LARGE,
                           f"The request body is larger than {limit} bytes.")
    return raw


def _json_body() -> dict[str, Any]:
    raw = read_body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, "Body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, "JSON body must be an object.")
    if _depth(body) > MAX_JSON_DEPTH:
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, "JSON body is nested too deeply.")
    return body


def _body() -> dict[str, Any]:
    if request.method == "GET":
        return {}
    if request.is_json:
        return _json_body()
    raw = read_body()  # cached: the form parser reads it from there
    if request.mimetype == "application/x-www-form-urlencoded" and not _utf8(raw):
        # werkzeug's parser would drop the whole form without a word (then: "token missing")
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, "Body is not valid UTF-8.")
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return request.form.to_dict()
    if raw.strip():
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                       f"Unsupported body type {request.mimetype or 'none'}.")
    return {}


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def request_params() -> dict[str, Any]:
    """All parameters of this request (a fresh dict); the body wins over the query string.
    Read once per request: the checks (`nonce`) and the view see the same values."""
    params: dict[str, Any] | None = g.get("_params")
    if params is None:
        params = request.args.to_dict()
        params.update(_body())
        g._params = params
    return dict(params)


def optional_str(params: dict[str, Any], name: str) -> str | None:
    """A parameter that must be a string when given; empty counts as missing."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, f"{name} must be a string.")
    return value
