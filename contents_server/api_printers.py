"""Blueprint: pairing printers (their public keys) with the user's account."""
from __future__ import annotations

from typing import Any

from flask import Blueprint

from . import printers
from .services import current
from .webutil import json_body, require_account

bp = Blueprint("printers", __name__, url_prefix="/api/printers")


@bp.post("")
def register() -> tuple[dict[str, Any], int]:
    """201 when newly paired, 200 when the same owner re-registers (keys replaced)."""
    account = require_account()
    svc = current()
    reg = printers.Registration.from_json(json_body())
    created = printers.register(svc.db, account.id, reg, svc.clock())
    body = {"printerId": reg.printer_id, **svc.keys.snapshot().published(svc.config.issuer)}
    return body, 201 if created else 200


@bp.delete("/<path:printer_id>")
def unregister(printer_id: str) -> dict[str, Any]:
    account = require_account()
    svc = current()
    printers.unregister(svc.db, account.id, printer_id, svc.clock())
    return {"ok": True}
