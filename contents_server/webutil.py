"""Request helpers every blueprint uses: the caller's account, a bounded JSON body."""
from __future__ import annotations

from typing import Any

from flask import request

from gotapi3dp.wire.errors import ErrorCode, P3DError

from . import accounts
from .services import current

MAX_JSON_BYTES = 64 << 10
API_KEY_HEADER = "X-Api-Key"


def require_account() -> accounts.Account:
    """The account named by `X-Api-Key`. A key in the query string is refused outright:
    URLs end up in logs and browser histories."""
    if any(k.lower() in ("apikey", "api_key", "contentskey") for k in request.args):
        raise P3DError(ErrorCode.CONTENTS_AUTH, "send the API key in the X-Api-Key header only")
    return accounts.authenticate(current().db, request.headers.get(API_KEY_HEADER))


def json_body() -> dict[str, Any]:
    """The request's JSON object, at most 64 KiB (uploads alone may be large)."""
    request.max_content_length = MAX_JSON_BYTES
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, "the body must be a JSON object")
    return body
