"""The pinned contents-server trust: issuer, contents URL and signing keys, kept on disk.

Set by `POST /api/trust` or pairing, moved along key rotations (`printer.pairing`); every
print token must be signed by one of these keys. Written atomically (temp file, fsync, rename, fsync dir) so a crash never leaves half a
trust file.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nacl.signing import VerifyKey

from gotapi3dp.fsutil import replace_file
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.token import b64d, b64e, key_id

MAX_KEYS = 8
_KID_RE = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Trust:
    issuer: str
    contents_url: str
    keys: dict[str, VerifyKey]

    def to_map(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "contentsUrl": self.contents_url,
                "keys": [{"kid": kid, "publicKey": b64e(bytes(key))}
                         for kid, key in sorted(self.keys.items())]}


def trust_from_map(m: Any) -> Trust:
    """Validate `{issuer, contentsUrl, keys: [{kid, publicKey}]}`; a kid must name its key."""
    def bad(why: str) -> P3DError:
        return P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, f"trust: {why}")

    if not isinstance(m, dict):
        raise bad("body must be a JSON object")
    issuer, url, keys = m.get("issuer"), m.get("contentsUrl"), m.get("keys")
    if not isinstance(issuer, str) or not 0 < len(issuer) <= 128:
        raise bad("issuer must be a non-empty string")
    if not isinstance(url, str) or not is_http_url(url):
        raise bad("contentsUrl must be an http(s) URL")
    if not isinstance(keys, list) or not 0 < len(keys) <= MAX_KEYS:
        raise bad(f"keys must be a list of 1-{MAX_KEYS} keys")
    return Trust(issuer, url.rstrip("/"), dict(_key_from_map(k, bad) for k in keys))


def _key_from_map(k: Any, bad: Any) -> tuple[str, VerifyKey]:
    if not isinstance(k, dict) or not isinstance(k.get("kid"), str):
        raise bad("each key needs kid and publicKey")
    try:
        raw = b64d(k.get("publicKey"))
    except ValueError:
        raise bad("publicKey must be base64url") from None
    if len(raw) != 32 or not _KID_RE.fullmatch(k["kid"]) or key_id(raw) != k["kid"]:
        raise bad(f"key {k['kid'][:16]!r} is not a 32-byte Ed25519 key named by its kid")
    return k["kid"], VerifyKey(raw)


def is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and len(url) <= 512


class TrustStore:
    """The trust file `trust.json` in the printer data dir; None until pinned."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._trust = self._load()
        self._refreshed_at: float | None = None

    def claim_refresh(self, now: float, interval: float) -> bool:
        """True (and the slot is taken) if the pins were not refreshed in the last `interval` s."""
        with self._lock:
            if self._refreshed_at is not None and now < self._refreshed_at + interval:
                return False
            self._refreshed_at = now
            return True

    def get(self) -> Trust | None:
        return self._trust

    def set(self, trust: Trust) -> None:
        with self._lock:
            replace_file(self._path, json.dumps(trust.to_map(), indent=2).encode())
            self._trust = trust

    def _load(self) -> Trust | None:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"unreadable trust file {self._path}: {exc}") from None
        try:
            return trust_from_map(data)
        except P3DError as exc:
            raise ValueError(f"invalid trust file {self._path}: {exc.message}") from None
