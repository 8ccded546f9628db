"""The contents server's Flask app factory: services, blueprints, one error shape."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from gotapi3dp.config import ContentsConfig
from gotapi3dp.wire.errors import ErrorCode, P3DError, http_status

from . import (accounts, api_contents, api_downloads, api_pairing, api_printers, api_thumbnails,
               api_tokens, keys)
from .blobs import BlobStore
from .db import DB_FILE, Database
from .services import Services, install

log = logging.getLogger(__name__)

MULTIPART_OVERHEAD = 64 << 10
_HTTP_CODES = {400: ErrorCode.INVALID_REQUEST_PARAMETER, 404: ErrorCode.UNKNOWN_ATTRIBUTE,
               405: ErrorCode.NOT_SUPPORT_ACTION, 413: ErrorCode.PAYLOAD_TOO_LARGE,
               416: ErrorCode.INVALID_REQUEST_PARAMETER}
_KEPT_HEADERS = ("allow", "content-range", "retry-after")


def create_app(config: ContentsConfig, data_dir: Path,
               clock: Callable[[], float] = time.time) -> Flask:
    """Open (or create) the database, key and blob store under `data_dir`; wire the API.

    On first start this also makes the server's signing key and the "demo" account,
    whose API key is written to `<data_dir>/demo.key`.
    """
    data_dir = Path(data_dir)
    signing = keys.load_or_create(data_dir)
    db = Database(data_dir / DB_FILE)
    accounts.ensure_demo(db, data_dir, clock())
    services = Services(config, data_dir, db, BlobStore(data_dir / "blobs"), signing, clock)

    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=config.max_upload_bytes + MULTIPART_OVERHEAD,
                      MAX_FORM_PARTS=16, MAX_FORM_MEMORY_SIZE=1 << 20)
    install(app, services)
    for module in (api_contents, api_printers, api_pairing, api_tokens, api_downloads,
                   api_thumbnails):
        app.register_blueprint(module.bp)
    _register_error_handlers(app)
    return app


def _error_response(err: P3DError, status: int) -> Response:
    response = jsonify(err.to_http())
    response.status_code = status
    return response


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(P3DError)
    def on_p3d_error(err: P3DError) -> Response:
        return _error_response(err, http_status(err.code))

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, ErrorCode.UNKNOWN)
        message = {404: "no such API", 405: "method not allowed for this API",
                   413: "request body over the limit",
                   416: "requested range not satisfiable"}.get(status, exc.name)
        response = _error_response(P3DError(code, message), status)
        for name, value in exc.get_headers():
            if name.lower() in _KEPT_HEADERS:
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> Response:
        log.exception("unexpected error in the contents server")
        return _error_response(P3DError(ErrorCode.UNKNOWN, "internal error"), 500)

