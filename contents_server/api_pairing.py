"""Blueprint: pairing by short code (printer starts and polls, the user confirms)."""
from __future__ import annotations

from typing import Any

from flask import Blueprint

from . import pairing
from .services import current
from .webutil import json_body, require_account

bp = Blueprint("pairing", __name__, url_prefix="/api/pairing")


@bp.post("")
def start() -> tuple[dict[str, Any], int]:
    """No API key: the printer signs the request with the key it asks to pair."""
    svc = current()
    now = svc.clock()
    return pairing.start(svc.db, pairing.PairRequest.from_json(json_body(), now), now), 201


@bp.post("/confirm")
def confirm() -> dict[str, Any]:
    account = require_account()
    svc = current()
    body = json_body()
    return pairing.confirm(svc.db, account.id, body.get("code"), body.get("fingerprint"),
                           svc.clock())


@bp.post("/poll")
def poll() -> dict[str, Any]:
    svc = current()
    return pairing.poll(svc.db, svc.keys, svc.config.issuer, json_body().get("deviceCode"),
                        svc.clock())
