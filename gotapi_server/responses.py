"""GotAPI-1 response bodies: `ok(...)`, and the one error handler that turns failures into them.

Every answer is JSON with `result`, `product` and `version`; errors add an integer
`errorCode` and an `errorMessage`. API-level errors are HTTP 200, as Device Connect answers
(its JS SDK reads the body only on 200); the exceptions are a foreign Host header (421,
errorCode 1000), an oversized body (413, errorCode 1003) and unknown paths outside /gotapi
(404, errorCode 19).
"""
from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from gotapi3dp import PRODUCT, __version__
from gotapi3dp.wire.errors import ErrorCode, P3DError

from .paths import is_api_path

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json; charset=UTF-8"

# HTTP status of the few errors that are not answered with 200.
_STATUS = {ErrorCode.HOST_NOT_ALLOWED: 421, ErrorCode.PAYLOAD_TOO_LARGE: 413}

# Werkzeug's HTTP errors, as GotAPI codes.
_HTTP_TO_CODE = {
    400: ErrorCode.INVALID_REQUEST_PARAMETER,
    404: ErrorCode.INVALID_URL,
    405: ErrorCode.NOT_SUPPORT_ACTION,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
}


def json_bytes(body: dict[str, Any]) -> bytes:
    """`body` as the bytes of a GotAPI answer (compact UTF-8 JSON). Also used by the gevent
    worker for the errors Gunicorn answers before the app runs."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json_bytes(body), status=status, content_type=CONTENT_TYPE)


def ok(**fields: Any) -> Response:
    """A success answer; `fields` are merged in, the common fields always win."""
    return json_response({**fields, "result": 0, "product": PRODUCT, "version": __version__})


def error_body(code: int, message: str) -> dict[str, Any]:
    return {"result": 1, "product": PRODUCT, "version": __version__,
            "errorCode": int(code), "errorMessage": message}


def _on_p3d_error(exc: P3DError) -> Response:
    return json_response(error_body(exc.code, exc.message), _STATUS.get(exc.code, 200))


def _on_http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_TO_CODE.get(status, ErrorCode.UNKNOWN)
    if status == 404 and not is_api_path(request.path):
        return json_response(error_body(code, "Request url is invalid."), 404)
    if status >= 500:
        log.error("HTTP %s on %s %s", status, request.method, request.path)
    error = P3DError(code)
    return json_response(error_body(code, error.message), _STATUS.get(code, 200))


def _on_unexpected(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return json_response(error_body(ErrorCode.UNKNOWN, "Unknown error was encountered."))


def init_app(app: Flask) -> None:
    app.register_error_handler(P3DError, _on_p3d_error)
    app.register_error_handler(HTTPException, _on_http_error)
    app.register_error_handler(Exception, _on_unexpected)
