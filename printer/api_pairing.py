"""Blueprint: pairing by code on the printer (`gotapi-3dp printer pair` drives it).

`POST /api/pairing/start {contentsUrl}` shows the code and fingerprint, `POST
/api/pairing/poll` polls once (pins the keys when confirmed), `POST /api/pairing/keys`
follows a key rotation. All need the printer's X-Api-Key (the app's before_request).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request

from .pairing import Pairing

bp = Blueprint("pairing", __name__, url_prefix="/api/pairing")
EXTENSION = "printer_pairing"


def _pairing() -> Pairing:
    ext = current_app.extensions
    if EXTENSION not in ext:
        printer = ext["printer"]
        ext[EXTENSION] = Pairing(printer.keys, printer.trust, printer.http,
                                 printer.config.http_timeout)
    return ext[EXTENSION]  # type: ignore[no-any-return]


@bp.post("/start")
def start() -> Any:
    body = request.get_json(silent=True)
    url = body.get("contentsUrl") if isinstance(body, dict) else None
    return _pairing().start(url), 201  # type: ignore[arg-type]


@bp.post("/poll")
def poll() -> Any:
    return _pairing().poll()


@bp.post("/keys")
def follow_rotation() -> Any:
    return _pairing().follow_rotation()
