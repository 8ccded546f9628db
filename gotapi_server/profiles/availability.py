"""Profile `availability`: GET /gotapi/availability -> {result: 0}, no token needed.

`key=<hex>` registers the app's HMAC key for its origin (see `hmac_sign`)."""
from __future__ import annotations

from flask import Blueprint, Response, g

from ..context import state
from ..params import optional_str, request_params
from ..paths import API_METHODS
from ..responses import ok
from . import get_only

bp = Blueprint("availability", __name__, url_prefix="/gotapi/availability")
bp.before_request(get_only)


@bp.route("", methods=API_METHODS)
def availability() -> Response:
    key = optional_str(request_params(), "key")
    if key is not None:
        state().auth.set_hmac_key(g.origin, key)
    return ok()
