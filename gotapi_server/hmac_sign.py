"""Server authentication to the app (GotAPI `nonce` -> `hmac`), Device Connect style.

The app registers a random key for its origin with `GET /gotapi/availability?key=<hex>`
(16-64 bytes as hex; node-gotapi's way, over the same origin checks as every call). Any
later request may carry `nonce=<hex>` (query or form); the answer then carries
`hmac = hex(HMAC-SHA256(key, nonce))` with key and nonce taken as the bytes their hex spells
(Device Connect's reading). An app that finds a wrong or missing `hmac` is not talking to
the server it registered with. No key for the origin: no `hmac` (nothing to prove).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re

from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException

from gotapi3dp.wire.errors import P3DError

from .auth import AuthStore
from .params import request_params
from .responses import CONTENT_TYPE


NONCE_RE = re.compile(r"(?:[0-9a-fA-F]{2}){4,128}")   # 8-256 hex digits, whole bytes


def valid_nonce(nonce: str) -> bool:
    return NONCE_RE.fullmatch(nonce) is not None


def sign(key: bytes, nonce_hex: str) -> str:
    return hmac.new(key, bytes.fromhex(nonce_hex), hashlib.sha256).hexdigest()


def init_app(app: Flask, auth: AuthStore) -> None:
    @app.after_request
    def add_hmac(resp: Response) -> Response:
        origin = g.get("origin")
        try:
            nonce = request_params().get("nonce") if origin is not None else None
        except (HTTPException, P3DError):  # an unreadable body was answered already
            return resp
        if (not nonce or origin is None or resp.content_type != CONTENT_TYPE
                or not isinstance(nonce, str)
                or not valid_nonce(nonce)):   # a refused nonce (error 10) is not signed
            return resp
        key = auth.hmac_key(origin)
        if key is None:
            return resp
        try:
            body = json.loads(resp.get_data())
            body["hmac"] = sign(key, nonce)
        except (ValueError, TypeError):
            return resp  # not a JSON object, or a nonce the checks already refused
        resp.set_data(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
        return resp
