"""Profile `availability`: GET /gotapi/availability -> {result: 0}, no token needed."""
from __future__ import annotations

from flask import Blueprint, Response

from ..paths import API_METHODS
from ..responses import ok
from . import get_only

bp = Blueprint("availability", __name__, url_prefix="/gotapi/availability")
bp.before_request(get_only)


@bp.route("", methods=API_METHODS)
def availability() -> Response:
    return ok()
