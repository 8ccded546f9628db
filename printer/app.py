"""The printer HTTP API (docs/API.md, "Printer HTTP API") over a built `Printer`.

Every route but `/api/identity` needs `X-Api-Key` (constant-time compare). Errors, including
404/405 and unexpected ones, answer `{"error": {code, name, message}}` with its HTTP status.
"""
from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Blueprint, Flask, current_app, request
from werkzeug.exceptions import HTTPException

from gotapi3dp.config import LOOPBACK_HOSTS
from gotapi3dp.wire.errors import ErrorCode, P3DError, http_status
from gotapi3dp.wire.ids import check_job_id
from gotapi3dp.wire.token import MAX_TOKEN_CHARS, job_id_for

from . import api_events
from . import api_pairing
from .main import Printer
from .trust import trust_from_map

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
PUBLIC_ENDPOINTS = frozenset({"api.identity"})

bp = Blueprint("api", __name__, url_prefix="/api")


def create_app(printer: Printer) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["printer"] = printer
    app.before_request(_check_request)
    app.register_error_handler(P3DError, _p3d_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    app.register_blueprint(bp)
    app.register_blueprint(api_pairing.bp)
    api_events.init_app(app, printer.jobs, printer.status)  # GET /api/events: SSE
    return app


def _printer() -> Printer:
    return current_app.extensions["printer"]  # type: ignore[no-any-return]


def _check_request() -> None:
    printer = _printer()
    host = (request.host or "").rsplit(":", 1)[0].strip("[]")
    if not printer.config.allow_non_loopback and host not in LOOPBACK_HOSTS:
        raise P3DError(ErrorCode.HOST_NOT_ALLOWED, "Host must be a loopback name")
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    given = request.headers.get("X-Api-Key", "").encode("utf-8", "replace")
    expected = printer.keys.api_key.encode("utf-8")
    if not given or not hmac.compare_digest(given, expected):
        raise P3DError(ErrorCode.PRINTER_AUTH, "missing or wrong X-Api-Key")


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, "the body must be a JSON object")
    return body


# ----- routes ------------------------------------------------------------------------------

@bp.get("/identity")
def identity() -> Any:
    return _printer().identity()


@bp.post("/trust")
def set_trust() -> Any:
    _printer().trust.set(trust_from_map(_json_body()))
    return {"ok": True}


@bp.post("/jobs")
def post_job() -> Any:
    token = _json_body().get("token")
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, "token must be a non-empty string")
    printer = _printer()
    try:
        record, created = printer.accept(token)
    except P3DError as exc:
        body, status = _p3d_error(exc)
        if exc.code != ErrorCode.PRINTER_BUSY and printer.jobs.get(job_id_for(token)):
            body["jobId"] = job_id_for(token)
        return body, status
    return {"job": record.to_map()}, 201 if created else 200


@bp.get("/jobs")
def list_jobs() -> Any:
    return {"jobs": [r.to_map() for r in _printer().jobs.list()]}


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Any:
    return {"job": _printer().jobs.require(check_job_id(job_id)).to_map()}


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> Any:
    return {"job": _printer().runner.cancel(check_job_id(job_id)).to_map()}


@bp.put("/jobs/<job_id>/pause")
def pause_job(job_id: str) -> Any:
    return {"job": _printer().runner.pause(check_job_id(job_id)).to_map()}


@bp.put("/jobs/<job_id>/resume")
def resume_job(job_id: str) -> Any:
    return {"job": _printer().runner.resume(check_job_id(job_id)).to_map()}


@bp.get("/status")
def status() -> Any:
    return _printer().status()


# ----- errors ------------------------------------------------------------------------------

def _p3d_error(exc: P3DError) -> tuple[dict[str, Any], int]:
    return exc.to_http(), http_status(exc.code)


_HTTP_CODES = {404: ErrorCode.UNKNOWN_ATTRIBUTE, 405: ErrorCode.NOT_SUPPORT_ACTION,
               413: ErrorCode.PAYLOAD_TOO_LARGE, 400: ErrorCode.INVALID_REQUEST_PARAMETER}


def _http_error(exc: HTTPException) -> tuple[dict[str, Any], int]:
    status = exc.code or 500
    code = _HTTP_CODES.get(status, ErrorCode.UNKNOWN)
    return P3DError(code, exc.description or exc.name).to_http(), status


def _unexpected(exc: Exception) -> tuple[dict[str, Any], int]:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return P3DError(ErrorCode.UNKNOWN, "internal error").to_http(), 500
