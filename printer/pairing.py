"""The printer's side of pairing by code: ask, show the code, poll, pin the server's keys.

The printer signs its pairing request with its own signing key, keeps the secret device
code to itself (it never leaves this process), shows the short user code and its keys'
fingerprint, and once the user confirmed the code at the contents server, pins the server's
{current, next} signing keys. `follow_rotation` later moves the pins along a key rotation,
accepting a new key set only when it is signed (or endorsed, by the key it replaced) by a
key already pinned. `KeyFollower` does that by itself when a token names an unknown key id.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from gotapi3dp.http_json import call
from gotapi3dp.wire import token as p3t
from gotapi3dp.wire.errors import ErrorCode, P3DError

from .keys import PrinterKeys
from .trust import MAX_KEYS, Trust, TrustStore, is_http_url, trust_from_map

START_PATH = "/api/pairing"
POLL_PATH = "/api/pairing/poll"
KEYS_PATH = "/api/keys"
FOLLOW_INTERVAL = 30.0      # at most one automatic key-set fetch per this many seconds
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingPairing:
    contents_url: str
    device_code: str        # secret: only ever sent back to the contents server
    user_code: str
    expires_at: float
    interval: int

    def shown(self, keys: PrinterKeys) -> dict[str, Any]:
        """What the printer shows the user (never the device code)."""
        return {"printerId": keys.printer_id, "userCode": self.user_code,
                "fingerprint": keys.fingerprint, "expiresAt": int(self.expires_at),
                "interval": self.interval, "contentsUrl": self.contents_url}


class Pairing:
    """At most one pairing in progress per printer process."""

    def __init__(self, keys: PrinterKeys, trust: TrustStore, http: requests.Session,
                 timeout: float = 10.0) -> None:
        self._keys, self._trust, self._http, self._timeout = keys, trust, http, timeout
        self._lock = threading.Lock()
        self._pending: PendingPairing | None = None

    def start(self, contents_url: str) -> dict[str, Any]:
        """Ask the contents server for a code; the answer is what to show."""
        url = _check_url(contents_url)
        iat = int(time.time())
        k = self._keys
        proof = k.sign_key.sign(p3t.pair_message(k.printer_id, k.sign_public, k.box_public,
                                                 iat)).signature
        body = {**{f: v for f, v in k.identity().items() if f != "fingerprint"},
                "iat": iat, "proof": p3t.b64e(proof)}
        answer = call(self._http, "POST", url + START_PATH, json=body, timeout=self._timeout,
                      unavailable=ErrorCode.CONTENTS_UNAVAILABLE)
        if answer.get("fingerprint") != k.fingerprint:
            raise P3DError(ErrorCode.CONTENTS_UNAVAILABLE, "pairing answer names other keys")
        pending = PendingPairing(url, str(answer["deviceCode"]), str(answer["userCode"]),
                                 float(answer["expiresAt"]), int(answer.get("interval", 2)))
        with self._lock:
            self._pending = pending
        return pending.shown(k)

    def poll(self) -> dict[str, Any]:
        """One poll; on approval the server's keys are pinned and the pairing is over."""
        with self._lock:
            pending = self._pending
        if pending is None:
            raise P3DError(ErrorCode.PAIRING_EXPIRED, "no pairing in progress")
        try:
            answer = call(self._http, "POST", pending.contents_url + POLL_PATH,
                          json={"deviceCode": pending.device_code}, timeout=self._timeout,
                          unavailable=ErrorCode.CONTENTS_UNAVAILABLE)
        except P3DError as exc:
            if exc.code == ErrorCode.PAIRING_EXPIRED:
                self._forget(pending)
            raise
        if answer.get("status") != "approved":
            return {"status": str(answer.get("status")), "interval": pending.interval}
        trust = _pinned_trust(answer, pending.contents_url)
        self._trust.set(trust)
        self._forget(pending)
        return {"status": "approved", "issuer": trust.issuer, "keys": sorted(trust.keys)}

    def _forget(self, pending: PendingPairing) -> None:
        with self._lock:
            if self._pending is pending:
                self._pending = None

    def follow_rotation(self) -> dict[str, Any]:
        """Fetch the server's key set and pin it if a pinned key signed it."""
        new = refresh_trust(self._trust, self._http, self._timeout)
        return {"issuer": new.issuer, "keys": sorted(new.keys)}


def refresh_trust(store: TrustStore, http: requests.Session, timeout: float) -> Trust:
    """Fetch the contents server's key set; pin it only if a pinned key signed it."""
    trust = store.get()
    if trust is None:
        raise P3DError(ErrorCode.PRINTER_NOT_TRUSTED, "pair the printer first")
    published = call(http, "GET", trust.contents_url + KEYS_PATH, timeout=timeout,
                     unavailable=ErrorCode.CONTENTS_UNAVAILABLE)
    new = follow_rotation(trust, published)
    store.set(new)
    return new


class KeyFollower:
    """The pins as `printer.authenticate` sees them: follows a rotation when a token shows one.

    `follow` fetches the key set at most once per FOLLOW_INTERVAL (a plug-in can seal junk
    with random key ids to the printer's public box key; it must not make us fetch for each)
    and never raises: a set it refuses, or a server it cannot reach, leaves the pins as they
    are, and the token then fails its key-id check as before.
    """

    def __init__(self, store: TrustStore, http: requests.Session, timeout: float,
                 interval: float = FOLLOW_INTERVAL) -> None:
        self._store, self._http, self._timeout = store, http, timeout
        self._interval = interval

    def get(self) -> Trust | None:
        return self._store.get()

    def follow(self) -> Trust | None:
        """The refreshed pins, or None when not fetched or refused."""
        if not self._store.claim_refresh(time.monotonic(), self._interval):
            return None
        try:
            return refresh_trust(self._store, self._http, self._timeout)
        except P3DError as exc:
            log.warning("contents key set not followed: %s (%s)", exc.message, exc.code.name)
            return None


def _pinned_trust(published: dict[str, Any], contents_url: str) -> Trust:
    """The trust to pin from an approved poll: the key set must be self-consistently signed."""
    trust = trust_from_map({"issuer": published.get("issuer"), "contentsUrl": contents_url,
                            "keys": published.get("keys")})
    _check_keyset_signature(published, trust.keys)
    return trust


def follow_rotation(trust: Trust, published: dict[str, Any]) -> Trust:
    """The new pins from a published key set signed by a key in `trust` (same issuer)."""
    if published.get("issuer") != trust.issuer:
        raise P3DError(ErrorCode.TOKEN_KID, "the key set names another issuer")
    new = trust_from_map({"issuer": trust.issuer, "contentsUrl": trust.contents_url,
                          "keys": published.get("keys")})
    _check_keyset_signature(published, trust.keys, endorsed=True)
    # keep the old pins a while: tokens signed before the rotation stay valid until expiry
    kept = {kid: key for kid, key in trust.keys.items() if kid not in new.keys}
    keys = {**new.keys, **dict(list(kept.items())[:max(0, MAX_KEYS - len(new.keys))])}
    return Trust(trust.issuer, trust.contents_url, keys)


def _check_keyset_signature(published: dict[str, Any], keys: dict[str, Any],
                            endorsed: bool = False) -> None:
    """The set's own signature, or (`endorsed`) the retired key's endorsement, by a pinned key.

    The endorsement is the signature the previous current key made over this very set when
    it was rotated out: with it, pins {K0, K1} follow the set {K2, K3} (two rotations on).
    """
    listed = published.get("keys")
    sigs = [published.get("keysSignature")] + ([published.get("endorsement")] if endorsed else [])
    sigs = [s for s in sigs if isinstance(s, dict)]
    if not sigs or not isinstance(listed, list):
        raise P3DError(ErrorCode.TOKEN_SIGNATURE, "the key set is not signed")
    try:
        message = p3t.keyset_message(str(published.get("issuer")), listed)
        signed = [(keys.get(s.get("kid")), p3t.b64d(s.get("signature"))) for s in sigs]
    except (ValueError, KeyError, TypeError):
        raise P3DError(ErrorCode.TOKEN_SIGNATURE, "the key set signature is malformed") from None
    if not any(key is not None and p3t.verify_detached(key, message, signature)
               for key, signature in signed):
        raise P3DError(ErrorCode.TOKEN_SIGNATURE, "the key set is not signed by a pinned key")


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or not is_http_url(url):
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, "contentsUrl must be an http(s) URL")
    return url.rstrip("/")
