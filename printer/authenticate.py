"""Printer Authentication: open and check a sealed print token, then redeem it with a proof.

`open_token` runs the printer's offline checks in the order of security.md §1.8 step 11:
unseal -> kid/signature/schema/type/issuer against the pinned keys -> audience and key
binding -> time -> local replay cache. `redeem` proves possession of the printer's signing
key over a fresh contents-server nonce and returns where to download the model. A redeem
whose answer is lost (connection dropped, 5xx) is re-sent with the *same* body: the
contents server recognises it and answers the stored result, so it never spends twice.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import requests

from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.token import (
    Claims,
    b64d,
    b64e,
    check_audience,
    check_time,
    pop_message,
    unseal,
    verify_signed,
)

from .keys import PrinterKeys
from .trust import Trust

REDEEM_PATH = "/api/redeem"
CHALLENGE_PATH = "/api/redeem/challenge"
DEFAULT_TIMEOUT = 20.0
REDEEM_ATTEMPTS = 3         # the same redeem body, re-sent when the answer is lost


class ReplayCache(Protocol):
    def remember_token(self, jti: bytes, exp: int) -> bool: ...


@dataclass(frozen=True)
class Redemption:
    download_url: str       # absolute URL of the download capability
    expires_at: float
    content: dict[str, Any]  # {id, name, format, bytes, sha256, ...} as the server says


def open_token(token: str, keys: PrinterKeys, trust: Trust | None, replay: ReplayCache,
               now: float | None = None) -> tuple[bytes, Claims]:
    """Open and check a print token; returns the inner signed blob and its claims.

    The token's jti is recorded in `replay` as the last step, so a token is accepted once.
    """
    now = time.time() if now is None else now
    signed = unseal(token, keys.box_key)
    if trust is None:
        raise P3DError(ErrorCode.PRINTER_NOT_TRUSTED,
                       "no contents server is trusted yet (POST /api/trust)")
    claims = verify_signed(signed, trust.keys, trust.issuer)
    check_audience(claims, keys.printer_id, keys.sign_public)
    check_time(claims, now)
    if not replay.remember_token(claims.jti, claims.exp):
        raise P3DError(ErrorCode.TOKEN_REPLAYED, "this token was already used")
    return signed, claims


def redeem(contents_url: str, signed: bytes, keys: PrinterKeys, http: requests.Session,
           timeout: float = DEFAULT_TIMEOUT) -> Redemption:
    """Challenge, then redeem with a proof of possession; returns the download capability."""
    challenge = _post(http, contents_url, CHALLENGE_PATH, {"printerId": keys.printer_id}, timeout)
    nonce_text = challenge.get("nonce")
    try:
        nonce = b64d(nonce_text)
    except ValueError:
        raise P3DError(ErrorCode.CONTENTS_UNAVAILABLE,
                       "redeem challenge has no valid nonce") from None
    iat = int(time.time())
    proof = keys.sign_key.sign(pop_message(signed, nonce, "POST", REDEEM_PATH, iat)).signature
    body = {"printerId": keys.printer_id, "signed": b64e(signed), "nonce": nonce_text,
            "iat": iat, "proof": b64e(proof)}
    return _redemption(contents_url, _post_idempotent(http, contents_url, body, timeout))


def _post_idempotent(http: requests.Session, contents_url: str, body: dict[str, Any],
                     timeout: float) -> dict[str, Any]:
    """POST the redeem body, re-sending it unchanged while the answer is lost."""
    for attempt in range(1, REDEEM_ATTEMPTS + 1):
        try:
            return _post(http, contents_url, REDEEM_PATH, body, timeout)
        except P3DError as exc:
            if exc.code != ErrorCode.CONTENTS_UNAVAILABLE or attempt == REDEEM_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _redemption(contents_url: str, answer: dict[str, Any]) -> Redemption:
    download, content = answer.get("download"), answer.get("content")
    if (not isinstance(download, dict) or not isinstance(download.get("url"), str)
            or not isinstance(content, dict)):
        raise P3DError(ErrorCode.CONTENTS_UNAVAILABLE, "redeem answer is not understood")
    url = urljoin(contents_url.rstrip("/") + "/", download["url"])
    if _origin(url) != _origin(contents_url):
        # Proof headers go only to the contents server the printer trusts.
        raise P3DError(ErrorCode.DOWNLOAD_DENIED,
                       "download URL is not on the trusted contents server")
    expires = download.get("expiresAt")
    return Redemption(url, float(expires) if isinstance(expires, (int, float)) else 0.0, content)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _post(http: requests.Session, base: str, path: str, body: dict[str, Any],
          timeout: float) -> dict[str, Any]:
    """POST JSON; contents-server error bodies become their P3DError."""
    try:
        resp = http.post(base.rstrip("/") + path, json=body, timeout=timeout)
    except requests.RequestException as exc:
        raise P3DError(ErrorCode.CONTENTS_UNAVAILABLE,
                       f"contents server unreachable: {type(exc).__name__}") from None
    try:
        data = resp.json()
    except ValueError:
        data = None
    if resp.status_code >= 400:
        fallback = ErrorCode.CONTENTS_UNAVAILABLE if resp.status_code >= 500 else ErrorCode.UNKNOWN
        raise P3DError.from_http(data, fallback)
    if not isinstance(data, dict):
        raise P3DError(ErrorCode.CONTENTS_UNAVAILABLE, f"{path}: answer is not a JSON object")
    return data
