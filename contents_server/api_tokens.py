"""Blueprint: issuing secure tokens to users, redeeming them for printers."""
from __future__ import annotations

from typing import Any

from flask import Blueprint

from gotapi3dp.wire.errors import P3DError

from . import tokens
from .services import current
from .webutil import json_body, require_account

bp = Blueprint("tokens", __name__, url_prefix="/api")


@bp.post("/tokens")
def issue() -> tuple[dict[str, Any], int]:
    account = require_account()
    svc = current()
    body = json_body()
    issued = tokens.issue(svc.db, svc.keys, svc.config, account.id, body.get("printerId"),
                          body.get("contentId"), svc.clock())
    return issued.to_map(), 201


@bp.post("/redeem/challenge")
def challenge() -> dict[str, Any]:
    svc = current()
    return tokens.challenge(svc.db, svc.config, json_body().get("printerId"), svc.clock())


@bp.post("/redeem")
def redeem() -> dict[str, Any]:
    """No API key: the printer proves itself with its signing key (see tokens.redeem)."""
    svc = current()
    body = json_body()
    try:
        req = tokens.RedeemRequest.from_json(body)
        return tokens.redeem(svc.db, svc.keys, svc.config, req, svc.clock())
    except P3DError as err:
        tokens.record_refusal(svc.db, body.get("printerId"), err, svc.clock())
        raise
