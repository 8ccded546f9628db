"""What the views share, built once by `create_app`: config, bus, auth, services, events."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app, g

from gotapi3dp.config import GotapiConfig
from gotapi3dp.wire.errors import ErrorCode, P3DError

from .auth import AuthStore
from .events import EventHub
from .params import optional_str, request_params
from .services import ServiceDirectory

EXTENSION = "gotapi"


@dataclass
class ServerState:
    config: GotapiConfig
    bus: Any  # gotapi_server.bus.Bus (or a test double with the same methods)
    auth: AuthStore
    services: ServiceDirectory
    events: EventHub


def state() -> ServerState:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def authorized_params(profile: str | None) -> dict[str, Any]:
    """This request's parameters once its accessToken is valid for the origin (and
    `profile`, if given: the scope check)."""
    params = request_params()
    try:
        state().auth.check(optional_str(params, "accessToken"), g.origin, profile)
    except P3DError as exc:
        # As Device Connect, a profile outside the token's scope is 14 even when no plug-in
        # has it; the message tells a mistyped profile from a missing scope.
        if exc.code == ErrorCode.SCOPE and profile and not state().services.supported(profile):
            raise P3DError(ErrorCode.SCOPE, f"{exc.message} No plug-in supports the "
                           f"profile {profile!r} either (GET /gotapi/system lists them).") from None
        raise
    return params
