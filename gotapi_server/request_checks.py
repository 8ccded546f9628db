"""Checks every request passes before a view runs: Host, method, Origin; and the CORS answers.

Order: a Host header that is not a loopback name gets 421/1000 (DNS-rebinding defence);
a method other than GET/POST/PUT/DELETE/OPTIONS gets 3; an OPTIONS preflight is answered
here (CORS only for allowed origins, never `*`, never Private Network Access); every other
request needs exactly one allowed origin (`X-GotAPI-Origin` for native apps, else `Origin`),
else 18; a `nonce` must be hex (10). The WebSocket path checks its origin itself (its
errors are WebSocket codes). X-Forwarded-* headers are ignored: never behind a proxy.

Allowed origins: a non-empty `allowed_origins` is the exact list (both headers). Empty (the
default): a browser `Origin` must be a loopback web origin (`http(s)://localhost`,
`127.0.0.1` or `[::1]`, any port; this includes the server's own pages at `/`), so no web
site can drive the printer; a native app naming itself with `X-GotAPI-Origin` alone may use
any single name but `null`.
"""
from __future__ import annotations

import re

from flask import Flask, Response, g, request

from gotapi3dp.config import GotapiConfig
from gotapi3dp.wire.errors import ErrorCode, P3DError

from .hmac_sign import valid_nonce
from .params import read_body, request_params
from .paths import API_METHODS, is_api_path

ORIGIN_HEADER = "X-GotAPI-Origin"
_HOST_RE = re.compile(r"^(?:127\.0\.0\.1|localhost|\[::1\])(?::[0-9]{1,5})?$", re.IGNORECASE)
# One origin: printable ASCII, no spaces, no commas (a repeated header arrives comma-joined).
_ORIGIN_MAX = 255
_ORIGIN_RE = re.compile(r"^[\x21-\x2b\x2d-\x7e]{1,255}$")
_PREFLIGHT_MAX_AGE = "600"
_ALLOW_HEADERS = "Content-Type, X-GotAPI-Origin, Idempotency-Key"
_LOOPBACK_WEB_ORIGIN = re.compile(
    r"^https?://(?:localhost|127\.0\.0\.1|\[::1\])(?::[0-9]{1,5})?$", re.IGNORECASE)
WEBSOCKET_PATH = "/gotapi/websocket"


def host_is_loopback(host: str | None) -> bool:
    return bool(host) and _HOST_RE.fullmatch(host or "") is not None


def origin_allowed(origin: str, config: GotapiConfig, native: bool = False) -> bool:
    """See the module docstring; `native`: named by X-GotAPI-Origin without Origin."""
    if config.allowed_origins:
        return origin in config.allowed_origins
    if native:
        return origin != "null"
    return _LOOPBACK_WEB_ORIGIN.fullmatch(origin) is not None


def _header(name: str) -> str | None:
    """A request header straight from the WSGI environ, where a header sent twice arrives
    as one comma-joined value (PEP 3333). Not `request.headers.getlist`, which walks the
    whole environ on every call: three of those were a tenth of a status request's time."""
    return request.environ.get("HTTP_" + name.upper().replace("-", "_"))


def _single(name: str) -> str | None:
    value = _header(name)
    if not value:                         # absent, or sent empty: not specified
        return None
    if len(value) > _ORIGIN_MAX:
        raise P3DError(ErrorCode.INVALID_ORIGIN,
                       f"{name} is longer than {_ORIGIN_MAX} characters.")
    if not _ORIGIN_RE.fullmatch(value):   # also refuses a repeated header (comma-joined)
        raise P3DError(ErrorCode.INVALID_ORIGIN, f"{name} must hold exactly one origin.")
    return value


def request_origin(config: GotapiConfig) -> str:
    """The app's origin, or P3DError(18). A browser Origin that disagrees with
    X-GotAPI-Origin is two origins: a web page must not speak for a native app."""
    native = _single(ORIGIN_HEADER)
    browser = _single("Origin")
    if native is not None and browser is not None and native != browser:
        raise P3DError(ErrorCode.INVALID_ORIGIN, "Origin and X-GotAPI-Origin differ.")
    origin = native if native is not None else browser
    if origin is None:
        raise P3DError(ErrorCode.INVALID_ORIGIN, "Origin is not specified.")
    if not origin_allowed(origin, config, native=browser is None):
        raise P3DError(ErrorCode.INVALID_ORIGIN, "Origin is not allowed.")
    return origin


def _preflight(config: GotapiConfig) -> Response:
    origin = _single("Origin")
    if origin is None or not origin_allowed(origin, config):
        raise P3DError(ErrorCode.INVALID_ORIGIN, "Origin is not allowed.")
    resp = Response(status=204)
    resp.headers["Access-Control-Allow-Methods"] = ", ".join(API_METHODS)
    resp.headers["Access-Control-Allow-Headers"] = _ALLOW_HEADERS
    resp.headers["Access-Control-Max-Age"] = _PREFLIGHT_MAX_AGE
    return resp


def init_app(app: Flask, config: GotapiConfig) -> None:
    @app.before_request
    def check_request() -> Response | None:
        if not host_is_loopback(_header("Host")):
            raise P3DError(ErrorCode.HOST_NOT_ALLOWED, "Host header is not a loopback name.")
        if not is_api_path(request.path):
            return None  # nothing is served there: 404
        if request.method == "OPTIONS":
            return _preflight(config)
        if request.method not in API_METHODS:
            raise P3DError(ErrorCode.NOT_SUPPORT_ACTION)
        if request.path == WEBSOCKET_PATH and request.environ.get(
                "HTTP_UPGRADE", "").lower() == "websocket":
            return None  # GotAPI-5 answers its own codes on the socket
        g.origin = request_origin(config)
        if request.method != "GET":
            read_body()  # size-checked and cached before the form parser reads the stream
        nonce = request_params().get("nonce")   # query, form or JSON body: the body wins
        if nonce is not None and (not isinstance(nonce, str) or not valid_nonce(nonce)):
            raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                           "nonce must be 8 to 256 hex digits.")
        return None

    @app.after_request
    def add_cors(resp: Response) -> Response:
        resp.headers.add("Vary", "Origin")
        if resp.status_code == 421:
            return resp
        origin = _header("Origin")
        if origin and _ORIGIN_RE.fullmatch(origin) and origin_allowed(origin, config):
            resp.headers["Access-Control-Allow-Origin"] = origin
        return resp
