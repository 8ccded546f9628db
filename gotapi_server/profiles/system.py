"""Profile `system`: GET /gotapi/system -> the server's profiles and the connected plug-ins."""
from __future__ import annotations

from flask import Blueprint, Response

from ..context import authorized_params, state
from ..paths import API_METHODS, SYSTEM_PROFILES
from ..responses import ok
from . import get_only

bp = Blueprint("system", __name__, url_prefix="/gotapi/system")
bp.before_request(get_only)


@bp.route("", methods=API_METHODS)
def system() -> Response:
    authorized_params(None)
    plugins = [{"id": p.id, "name": p.name, "version": p.version,
                "supports": list(p.profiles), "online": p.online}
               for p in state().bus.plugins()]
    return ok(supports=list(SYSTEM_PROFILES), plugins=plugins)
