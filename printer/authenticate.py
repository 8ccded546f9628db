"""Printer Authentication: check a sealed print token, redeem it with a proof, then burn it.

`authenticate` runs the whole of it in this order (docs/SECURITY.md, "Checks at the
printer"): `check_token` (unseal -> kid/signature/schema/type/issuer against the pinned keys,
following a key rotation once if the kid is unknown -> audience and key binding -> time),
then `redeem` (proof of possession over a fresh contents-server nonce; the server moves the
token ISSUED -> REDEEMED atomically), and only then `record_redeemed` puts the jti in the
local replay cache. A token that failed before the server took it (server down) is thus
not burnt here and can be posted again; the server's single transition is what makes a
second print impossible, the local cache refuses any jti it has seen redeemed before.
A redeem whose answer is lost (connection dropped, 5xx) is re-sent with the *same* body:
the contents server recognises it and answers the stored result, so it never spends twice.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol
from urllib.parse import urljoin, urlsplit

import requests

from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.token import (
    KID_BYTES,
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


class Pins(Protocol):
    """The pinned trust, and a way to follow a rotation (`printer.pairing.KeyFollower`)."""

    def get(self) -> Trust | None: ...

    def follow(self) -> Trust | None: ...


@dataclass(frozen=True)
class Redemption:
    download_url: str       # absolute URL of the download capability
    expires_at: float
    content: dict[str, Any]  # {id, name, format, bytes, sha256, ...} as the server says


@dataclass(frozen=True)
class Checked:
    signed: bytes           # the inner signed blob, what the redeem presents
    claims: Claims
    trust: Trust            # the pins it was checked against (the contents URL to redeem at)


def authenticate(token: str, keys: PrinterKeys, pins: Pins, replay: ReplayCache,
                 http: requests.Session, timeout: float = DEFAULT_TIMEOUT,
                 now: float | None = None) -> tuple[Claims, Redemption]:
    """Check, redeem, then record the jti: a token is burnt here only once redeemed."""
    checked = check_token(token, keys, pins.get(), now, follow=pins.follow)
    redemption = redeem(checked.trust.contents_url, checked.signed, keys, http, timeout)
    record_redeemed(replay, checked.claims)
    return checked.claims, redemption


def check_token(token: str, keys: PrinterKeys, trust: Trust | None, now: float | None = None,
                follow: Callable[[], Trust | None] | None = None) -> Checked:
    """The offline checks, with no side effect but following a rotation.

    A token whose kid is not pinned makes the printer fetch the server's signed key set
    once (`follow`, which pins it only if a pinned key signed it) and check again.
    """
    now = time.time() if now is None else now
    signed = unseal(token, keys.box_key)
    if trust is None:
        raise P3DError(ErrorCode.PRINTER_NOT_TRUSTED,
                       "no contents server is trusted yet (POST /api/trust)")
    if follow is not None and signed[:KID_BYTES].hex() not in trust.keys:
        trust = follow() or trust
    claims = verify_signed(signed, trust.keys, trust.issuer)
    check_audience(claims, keys.printer_id, keys.sign_public)
    check_time(claims, now)
    return Checked(signed, claims, trust)


def record_redeemed(replay: ReplayCache, claims: Claims) -> None:
    """Burn the jti locally; one seen before is refused even though the server took it."""
    if not replay.remember_token(claims.jti, claims.exp):
        raise P3DError(ErrorCode.TOKEN_REPLAYED, "this token was already used")


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
