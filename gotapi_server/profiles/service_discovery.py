"""Profile `serviceDiscovery`: GET /gotapi/serviceDiscovery -> services of every plug-in.

Needs a valid access token, but no scope (the app asks before it knows what to ask for).
"""
from __future__ import annotations

from flask import Blueprint, Response, g

from ..context import authorized_params, state
from ..paths import API_METHODS
from ..responses import ok
from . import get_only

bp = Blueprint("service_discovery", __name__, url_prefix="/gotapi/servicediscovery")
bp.before_request(get_only)


@bp.route("", methods=API_METHODS)
def service_discovery() -> Response:
    authorized_params(None)
    return ok(services=state().services.discover(g.origin))
