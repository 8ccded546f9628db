"""Blueprint: health, published keys, and the user's content catalog."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from gotapi3dp import __version__ as VERSION
from gotapi3dp.wire.errors import ErrorCode, P3DError

from . import catalog
from .services import current
from .webutil import require_account

bp = Blueprint("contents", __name__, url_prefix="/api")


@bp.get("/health")
def health() -> dict[str, Any]:
    return {"ok": True, "issuer": current().config.issuer, "version": VERSION}


@bp.get("/keys")
def keys() -> dict[str, Any]:
    """{current, next} keys, signed by the current one (printers follow a rotation)."""
    svc = current()
    return svc.keys.snapshot().published(svc.config.issuer)


@bp.post("/contents")
def upload() -> tuple[dict[str, Any], int]:
    """Multipart `file` (+ `name`, `prints`): 201 when new, 200 when these bytes exist."""
    account = require_account()
    svc = current()
    upload = request.files.get("file")
    if upload is None:
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, "multipart field 'file' is required")
    data = upload.stream.read(svc.config.max_upload_bytes + 1)
    if len(data) > svc.config.max_upload_bytes:
        raise P3DError(ErrorCode.PAYLOAD_TOO_LARGE,
                       f"the model is larger than {svc.config.max_upload_bytes} bytes")
    name = catalog.clean_name(request.form.get("name"), upload.filename or "model")
    prints = catalog.parse_prints(request.form.get("prints"))
    content, created = catalog.add(svc.db, svc.blobs, account.id, name, data, prints, svc.clock())
    return content.to_map(), 201 if created else 200


@bp.get("/contents")
def list_contents() -> dict[str, Any]:
    account = require_account()
    return {"contents": [c.to_map() for c in catalog.list_for(current().db, account.id)]}


@bp.get("/contents/<path:content_id>")
def get_content(content_id: str) -> dict[str, Any]:
    """`path:` so that `..`, `%2f` and friends reach the id check (400), not routing (404)."""
    account = require_account()
    return catalog.get(current().db, account.id, content_id).to_map()
