"""Profile `authorization` (GotAPI-2): GET grant -> clientId, GET accessToken -> accessToken."""
from __future__ import annotations

from flask import Blueprint, Response, g

from gotapi3dp.wire.errors import ErrorCode, P3DError

from ..context import state
from ..params import optional_str, request_params
from ..paths import API_METHODS
from ..responses import ok
from . import get_only

bp = Blueprint("authorization", __name__, url_prefix="/gotapi/authorization")
bp.before_request(get_only)


@bp.route("/<attribute>", methods=API_METHODS)
def authorization(attribute: str) -> Response:
    name = attribute.lower()
    if name == "grant":
        return ok(clientId=state().auth.grant(g.origin))
    if name == "accesstoken":
        params = request_params()
        token, expire, scopes = state().auth.access_token(
            g.origin, optional_str(params, "clientId"), optional_str(params, "scope"),
            optional_str(params, "applicationName"))
        return ok(accessToken=token, expire=expire, scopes=scopes)
    raise P3DError(ErrorCode.NOT_SUPPORT_ATTRIBUTE)
