"""GotAPI-5: the event WebSocket at `/gotapi/websocket` (flask-sock, one thread per socket).

The app's first message is `{"accessToken": "..."}`; the answer is `{"result": 0}` or
`{"result": 1, "errorCode", "errorMessage"}` with Device Connect's WebSocket codes, after
which the socket closes: 1 no accessToken, 2 no (or a disallowed) origin, 3 the token is not
valid for this origin (or not a string; the message says when it has expired), 4 this origin
already has a socket, 5 the message is not JSON.
Then the socket carries the origin's events, one JSON text each, while its token stays
valid: it is checked again every TOKEN_RECHECK seconds, and once it has expired or was
revoked the socket gets that error (12, 11) as its last message and closes. The server pings
every KEEPALIVE seconds and drops a peer that does not answer; a closed socket unregisters
the origin's events and the plug-ins are told (`EventHub.close`).
"""
from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from typing import Any, Callable

from flask import Flask, Response, request
from flask_sock import ConnectionClosed, Sock

from gotapi3dp.config import GotapiConfig
from gotapi3dp.wire.errors import ErrorCode, P3DError

from .auth import AuthStore
from .events import EventHub, Session
from .request_checks import request_origin
from .responses import error_body, json_response

log = logging.getLogger(__name__)

PATH = "/gotapi/websocket"
KEEPALIVE = 3.0            # seconds between pings (Device Connect: 3 s)
HANDSHAKE_TIMEOUT = 10.0   # the first message must come within this
MAX_MESSAGE = 64 * 1024
_WS_KEY = re.compile(r"^[A-Za-z0-9+/]{22}==$")   # 16 bytes, base64
SEND_POLL = 5.0            # the sender's own look at the socket (the watcher wakes it first)
TOKEN_RECHECK = 5.0        # seconds between checks that the socket's token is still valid

NO_TOKEN, NO_ORIGIN, BAD_TOKEN, ALREADY_CONNECTED, UNPARSABLE = 1, 2, 3, 4, 5
_MESSAGES = {NO_TOKEN: "accessToken is not specified.",
             NO_ORIGIN: "origin is not specified or not allowed.",
             BAD_TOKEN: "accessToken is invalid.",
             ALREADY_CONNECTED: "already established.",
             UNPARSABLE: "message is not parsable."}


class Refused(Exception):
    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message or _MESSAGES[code])
        self.code = code


def _send_json(ws: Any, body: dict[str, Any]) -> None:
    ws.send(json.dumps(body, separators=(",", ":")))


def handshake(raw: Any, origin: str | None, auth: AuthStore) -> str:
    """Check the first message (None: none came in time): its access token, or Refused."""
    if raw is None:
        raise Refused(NO_TOKEN)
    try:
        message = json.loads(raw) if isinstance(raw, (str, bytes)) else None
    except (ValueError, RecursionError):   # 30000 nested brackets fit in MAX_MESSAGE
        message = None
    if not isinstance(message, dict):
        raise Refused(UNPARSABLE)
    token = message.get("accessToken")
    if token is None or token == "":
        raise Refused(NO_TOKEN)
    if not isinstance(token, str):
        raise Refused(BAD_TOKEN)
    if origin is None:
        raise Refused(NO_ORIGIN)
    try:
        auth.check(token, origin, None)
    except P3DError as exc:
        if exc.code == ErrorCode.EXPIRED_ACCESS_TOKEN:   # same code, as Device Connect's
            raise Refused(BAD_TOKEN, "accessToken has expired; authorize again.") from None
        raise Refused(BAD_TOKEN) from None
    return token


def upgrade_refusal(environ: dict[str, Any]) -> Response | None:
    """The answer to a WebSocket upgrade the WebSocket library would fail on with a
    traceback (RFC 6455 4.2.1-4.2.2): 426 with the one version we speak, or 400 for a
    missing `Connection: Upgrade` or a key that is not 16 bytes in base64. None: fine."""
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13":
        resp = json_response(error_body(ErrorCode.INVALID_REQUEST_PARAMETER,
                                        "WebSocket version 13 only (Sec-WebSocket-Version)."),
                             426)
        resp.headers["Sec-WebSocket-Version"] = "13"
        return resp
    connection = environ.get("HTTP_CONNECTION", "").lower()
    if "upgrade" not in (part.strip() for part in connection.split(",")):
        return json_response(error_body(ErrorCode.INVALID_REQUEST_PARAMETER,
                                        "A WebSocket upgrade needs Connection: Upgrade."), 400)
    if not _WS_KEY.fullmatch(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")):
        return json_response(error_body(ErrorCode.INVALID_REQUEST_PARAMETER,
                                        "Sec-WebSocket-Key must be 16 bytes in base64."), 400)
    return None


def _pump(ws: Any, outbox: "queue.Queue[str | None]", still_valid: Callable[[], None]) -> None:
    """Send queued events until the socket closes, the hub says stop, or `still_valid`
    raises (the token expired or was revoked: that error is the last message)."""
    recheck_at = time.monotonic() + TOKEN_RECHECK
    while ws.connected:
        if time.monotonic() >= recheck_at:
            recheck_at = time.monotonic() + TOKEN_RECHECK
            try:
                still_valid()
            except P3DError as exc:
                _send_json(ws, {"result": 1, "errorCode": int(exc.code),
                                "errorMessage": exc.message})
                ws.close(reason=1008, message=exc.message[:100])
                return
        try:
            text = outbox.get(timeout=min(SEND_POLL, TOKEN_RECHECK))
        except queue.Empty:
            continue
        if text is None:
            return
        ws.send(text)


def _watch(ws: Any, session: Session) -> None:
    """Read (and drop) what the app sends until its socket closes, then stop the sender at
    once: a reloading page reconnects within milliseconds and must find its origin free,
    and its new registrations must not be wiped by a close noticed late."""
    def run() -> None:
        try:
            while ws.receive() is not None or ws.connected:
                pass
        except ConnectionClosed:
            pass
        except Exception:  # never leave the sender waiting on a socket that is gone
            log.exception("websocket of %s: reader failed", session.origin)
        session.stop()
    threading.Thread(target=run, name=f"ws-watch-{session.origin}", daemon=True).start()


def init_app(app: Flask, config: GotapiConfig, auth: AuthStore, hub: EventHub) -> None:
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": KEEPALIVE,
                                         "max_message_size": MAX_MESSAGE}
    sock = Sock(app)

    @app.before_request
    def check_upgrade() -> Response | None:
        if request.path == PATH and request.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            return upgrade_refusal(request.environ)
        return None

    @sock.route(PATH)
    def websocket(ws: Any) -> None:
        try:
            origin: str | None = request_origin(config)
        except P3DError:
            origin = None
        try:
            token = handshake(ws.receive(timeout=HANDSHAKE_TIMEOUT), origin, auth)
            session = hub.open(origin or "")
            if session is None:
                raise Refused(ALREADY_CONNECTED)
        except Refused as exc:
            _send_json(ws, {"result": 1, "errorCode": exc.code, "errorMessage": str(exc)})
            ws.close(reason=1008, message=str(exc))
            return
        log.info("websocket open for %s", session.origin)
        try:
            _send_json(ws, {"result": 0})
            _watch(ws, session)
            _pump(ws, session.outbox, lambda: auth.check(token, session.origin, None))
        finally:
            hub.close(session)
            log.info("websocket closed for %s", session.origin)
