"""GotAPI-1 profiles: one blueprint per system profile, one forwarder for plug-in profiles."""
from __future__ import annotations

from flask import request

from gotapi3dp.wire.errors import ErrorCode, P3DError


def get_only() -> None:
    """before_request of the system profiles: they answer GET only (others: 3)."""
    if request.method != "GET":
        raise P3DError(ErrorCode.NOT_SUPPORT_ACTION)
