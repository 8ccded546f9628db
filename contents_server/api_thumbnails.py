"""Blueprint: content thumbnails (PNG), and CORS so that a local web app can list contents.

A thumbnail is rendered when a content is added (after a successful `POST /api/contents`)
and kept by SHA-256; `GET /api/thumbnails/<id>` renders it then if it is missing. The web
app served by the GotAPI server reads `GET /api/contents` and the thumbnails from the
browser with the user's `X-Api-Key`, so these two GET routes answer CORS for loopback web
origins (`http://127.0.0.1:*`, `http://localhost:*`, `http://[::1]:*`): the contents server
does not know which loopback port the GotAPI server has. Credentials are never cookies, so
CORS admits no ambient authority; the key is still required.
"""
from __future__ import annotations

import logging
import re

from flask import Blueprint, Response, request

from . import catalog
from .services import current
from .thumbnails import ThumbnailStore
from .webutil import API_KEY_HEADER, require_account

log = logging.getLogger(__name__)

bp = Blueprint("thumbnails", __name__, url_prefix="/api")

_LOOPBACK_ORIGIN = re.compile(r"^http://(?:127\.0\.0\.1|localhost|\[::1\])(?::[0-9]{1,5})?$")
_CORS_PATH = re.compile(r"^/api/(?:contents|thumbnails/[^/]+)$")
_UPLOAD_ENDPOINT = "contents.upload"
_MAX_AGE = "600"


def _store() -> ThumbnailStore:
    return ThumbnailStore(current().data_dir / "thumbnails")


@bp.get("/thumbnails/<path:content_id>")
def thumbnail(content_id: str) -> Response:
    """The content's PNG thumbnail (the user's own contents only)."""
    account = require_account()
    svc = current()
    content = catalog.get(svc.db, account.id, content_id)
    store = _store()
    png = store.get(content.sha256)
    if png is None:
        png = store.make(content.sha256, svc.blobs.path(content.sha256).read_bytes(), content.format)
    response = Response(png, mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def _cors_origin() -> str | None:
    origin = request.headers.get("Origin")
    if (origin and len(request.headers.getlist("Origin")) == 1
            and _LOOPBACK_ORIGIN.fullmatch(origin) and _CORS_PATH.fullmatch(request.path)):
        return origin
    return None


@bp.before_app_request
def preflight() -> Response | None:
    """Answer the browser's preflight for the GET routes above, nothing else."""
    if request.method != "OPTIONS" or not _CORS_PATH.fullmatch(request.path):
        return None
    origin = _cors_origin()
    response = Response(status=204)
    if origin is not None and request.headers.get("Access-Control-Request-Method") == "GET":
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "GET"
        response.headers["Access-Control-Allow-Headers"] = API_KEY_HEADER
        response.headers["Access-Control-Max-Age"] = _MAX_AGE
    response.headers.add("Vary", "Origin")
    return response


@bp.after_app_request
def after(response: Response) -> Response:
    if request.method == "GET" and _CORS_PATH.fullmatch(request.path):
        response.headers.add("Vary", "Origin")
        origin = _cors_origin()
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
    elif request.endpoint == _UPLOAD_ENDPOINT and response.status_code in (200, 201):
        _render_uploaded(response)
    return response


def _render_uploaded(response: Response) -> None:
    """Render the thumbnail of the content just added; a failure only logs."""
    content = response.get_json(silent=True) or {}
    sha256, fmt = content.get("sha256"), content.get("format")
    if not isinstance(sha256, str) or not isinstance(fmt, str):
        return
    store = _store()
    try:
        if store.get(sha256) is None:
            store.make(sha256, current().blobs.path(sha256).read_bytes(), fmt)
    except Exception:  # a model that cannot be drawn is still a content
        log.exception("cannot render the thumbnail of %s", content.get("id"))
