"""Plug-in profiles: any other /gotapi/<profile>[/<interface>]/<attribute>, as an Intent on the bus.

Checks, in Device Connect's order: the access token with the profile as scope (13/11/12/14),
`serviceId` (empty: 5; unknown plug-in or local service: 6), the profile announced by that
plug-in (2), the parameters against the profile's Swagger document the plug-in announced
(`apispec`: 4, 8, 3, 10 naming the parameter), the plug-in online (17); then the request
Intent (action = HTTP method, profile lower-cased, local service id, origin, parameters
without accessToken/serviceId/idempotencyKey/nonce, the idempotency key) and its RESPONSE:
result 0 -> params merged into the answer, else errorCode/errorMessage. A successful PUT or
DELETE on an `x-type: event` operation (un)registers the origin's GotAPI-5 events.

Idempotency: POST/PUT/DELETE may carry `Idempotency-Key` (header) or `idempotencyKey`
(parameter), 1-128 of `A-Za-z0-9_.:-`; it travels in the Intent and the plug-in host
answers a repeated key (same origin and plug-in) with the first answer.
"""
from __future__ import annotations

import logging
import re
from typing import Any

from flask import Blueprint, Response, g, request

from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.intent import Action, Intent, IntentError

from ..apispec import check_request, is_event
from ..context import authorized_params, state
from ..params import optional_str
from ..paths import API_METHODS, SYSTEM_PROFILE_KEYS, WEBSOCKET_PROFILE
from ..responses import ok
from ..services import PluginLike

log = logging.getLogger(__name__)

bp = Blueprint("forward", __name__, url_prefix="/gotapi")

# Not the plug-in's business: the server's own parameters (a `nonce` is answered by the
# server's `hmac`; forwarded, a retry's fresh nonce made its idempotency key look reused).
_STRIPPED = ("accessToken", "serviceId", "idempotencyKey", "nonce")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_IDEMPOTENCY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
IDEMPOTENCY_HEADER = "Idempotency-Key"


def resolve_service(params: dict[str, Any]) -> tuple[PluginLike, str]:
    """(plug-in, local id) named by the `serviceId` parameter, or P3DError 5/6."""
    service_id = optional_str(params, "serviceId")
    if service_id is None:
        raise P3DError(ErrorCode.EMPTY_SERVICE_ID)
    return state().services.resolve(service_id, g.origin)


def call_plugin(intent: Intent, plugin: PluginLike) -> Response:
    """Send a request Intent to its plug-in and answer with the RESPONSE."""
    if not plugin.online:
        raise P3DError(ErrorCode.ILLEGAL_SERVER_STATE, f"Plug-in {plugin.id} is not connected.")
    try:
        answer = state().bus.request(intent, plugin.id, state().config.request_timeout)
    except IntentError as exc:
        log.info("request to %s refused by the Intent codec: %s", plugin.id, exc)
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                       "Request parameters do not fit in an Intent.") from None
    if answer.result != 0:
        code = answer.error_code
        if code is None or not 0 < code < 1 << 31:   # a plug-in's -5 or 2**63 is no code
            code = ErrorCode.UNKNOWN
        raise P3DError(code, answer.error_message or "The plug-in reported an error.")
    try:
        return ok(**answer.params)
    except (TypeError, ValueError):   # bytes, NaN...: a valid Intent, but not JSON
        log.warning("plug-in %s answered with values JSON cannot carry", plugin.id)
        raise P3DError(ErrorCode.BAD_INTENT,
                       "The plug-in answered with values JSON cannot carry.") from None


def _check_path(profile: str, interface: str | None, attribute: str | None) -> None:
    for name in (profile, interface, attribute):
        if name is not None and (not _NAME_RE.fullmatch(name) or not name.strip(".")):
            raise P3DError(ErrorCode.INVALID_URL)   # dots alone (`..`) are a path, no name
    if profile in SYSTEM_PROFILE_KEYS:  # a system profile with an attribute it lacks
        raise P3DError(ErrorCode.NOT_SUPPORT_ATTRIBUTE)
    if profile == WEBSOCKET_PROFILE:  # GotAPI-5 lives there, for WebSocket upgrades only
        raise P3DError(ErrorCode.NOT_SUPPORT_PROFILE, "Open /gotapi/websocket as a WebSocket.")


def idempotency_key(params: dict[str, Any]) -> str | None:
    """The request's idempotency key (header wins), or None; GET never has one."""
    header = request.headers.get(IDEMPOTENCY_HEADER)   # present but empty: refused below
    key = header if header is not None else optional_str(params, "idempotencyKey")
    if key is None or request.method == "GET":
        return None
    if not _IDEMPOTENCY_RE.fullmatch(key):
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                       "Request parameters are invalid: idempotencyKey has an invalid format.")
    return key


def _spec_of(plugin: PluginLike, profile: str) -> dict[str, Any] | None:
    apis = getattr(plugin, "apis", None) or {}
    return next((doc for name, doc in apis.items() if name.lower() == profile), None)


def forward(profile: str, interface: str | None = None, attribute: str | None = None) -> Response:
    _check_path(profile, interface, attribute)
    params = authorized_params(profile)
    plugin, local = resolve_service(params)
    if profile not in (p.lower() for p in plugin.profiles):
        raise P3DError(ErrorCode.NOT_SUPPORT_PROFILE)
    doc = _spec_of(plugin, profile)
    op = check_request(doc, request.method, interface, attribute, params) if doc else {}
    intent = Intent(Action(request.method), profile=profile, interface=interface,
                    attribute=attribute, service_id=local, origin=g.origin,
                    plugin_id=plugin.id,
                    params={k: v for k, v in params.items() if k not in _STRIPPED},
                    idempotency_key=idempotency_key(params))
    answer = call_plugin(intent, plugin)
    if is_event(op) and request.method in ("PUT", "DELETE"):
        hub = state().events
        change = hub.register if request.method == "PUT" else hub.unregister
        change(g.origin, params["serviceId"], profile, interface, attribute)
    return answer


def invalid_url(rest: str) -> Response:
    raise P3DError(ErrorCode.INVALID_URL)


bp.add_url_rule("/<profile>", "profile", forward, methods=API_METHODS)
bp.add_url_rule("/<profile>/<attribute>", "attribute", forward, methods=API_METHODS)
bp.add_url_rule("/<profile>/<interface>/<attribute>", "interface", forward, methods=API_METHODS)
bp.add_url_rule("/<path:rest>", "invalid_url", invalid_url, methods=API_METHODS)
