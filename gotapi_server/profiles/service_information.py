"""Profile `serviceInformation`: GET /gotapi/serviceInformation?serviceId= -> the plug-in's
`supports`, `supportApis` and `connect` for that service (valid token, no scope)."""
from __future__ import annotations

from flask import Blueprint, Response, g

from gotapi3dp.wire.intent import Action, Intent

from ..context import authorized_params
from ..paths import API_METHODS
from . import get_only
from .forward import call_plugin, resolve_service

bp = Blueprint("service_information", __name__, url_prefix="/gotapi/serviceinformation")
bp.before_request(get_only)

PLUGIN_PROFILE = "serviceInformation"


@bp.route("", methods=API_METHODS)
def service_information() -> Response:
    params = authorized_params(None)
    plugin, local = resolve_service(params)
    intent = Intent(Action.GET, profile=PLUGIN_PROFILE, service_id=local, origin=g.origin,
                    plugin_id=plugin.id)
    return call_plugin(intent, plugin)
