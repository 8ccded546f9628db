"""The contents server's Ed25519 signing keys by key id: current, next, and retired ones.

Files in the contents data dir (0700), each private (0600):
    signing.key       seed of the *current* key: signs every new token
    signing.next.key  seed of the *next* key: published already, so printers pin it ahead
    retired.json      public keys of former current keys and when they were retired
    endorsement.json  the retiring key's signature over the key set it handed over to

`rotate` makes next current, retires the old current (its seed is deleted; only its public
key is kept, to verify tokens issued before the rotation until they expire) and makes a new
next. Before the old seed goes, it signs the new {current, next} set (the *endorsement*), so
a printer that still pins only the old keys can follow (it missed the previous rotation).
A running server notices a rotation by the key file changing and reloads: no restart.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey, VerifyKey

from gotapi3dp.fsutil import create_file, replace_file
from gotapi3dp.wire.token import CLOCK_SKEW, MAX_TOKEN_TTL, b64d, b64e, key_id, keyset_message

KEY_FILE = "signing.key"
NEXT_FILE = "signing.next.key"
RETIRED_FILE = "retired.json"
ENDORSEMENT_FILE = "endorsement.json"
DEFAULT_ISSUER = "gotapi-3dp-contents"       # ContentsConfig.issuer's default
RETIRED_GRACE = MAX_TOKEN_TTL + CLOCK_SKEW   # a retired key verifies this long, then goes


@dataclass(frozen=True)
class ServerKeys:
    """One consistent view of the key ring; take it once per request (`KeyRing.snapshot`)."""

    signing_key: SigningKey
    next_key: SigningKey | None = None
    retired: dict[str, tuple[VerifyKey, float]] = field(default_factory=dict)
    endorsement: dict[str, Any] | None = None   # {issuer, keys, kid, signature} of the last rotation

    @property
    def kid(self) -> str:
        return key_id(bytes(self.signing_key.verify_key))

    def verify_keys(self, now: float | None = None) -> dict[str, VerifyKey]:
        """Keys a redeemed token may be signed by: current, and retired within the grace."""
        now = time.time() if now is None else now
        keys = {kid: vk for kid, (vk, at) in self.retired.items() if now < at + RETIRED_GRACE}
        keys[self.kid] = self.signing_key.verify_key
        return keys

    def public_list(self) -> list[dict[str, str]]:
        """What `GET /api/keys` publishes and printers pin: {current, next}."""
        keys = [self.signing_key] + ([self.next_key] if self.next_key is not None else [])
        return [{"kid": key_id(bytes(k.verify_key)), "publicKey": b64e(bytes(k.verify_key))}
                for k in keys]

    def published(self, issuer: str) -> dict[str, Any]:
        """The key set, signed by the current key so a printer can follow a rotation."""
        keys = self.public_list()
        sig = self.signing_key.sign(keyset_message(issuer, keys)).signature
        out: dict[str, Any] = {"issuer": issuer, "keys": keys,
                               "keysSignature": {"kid": self.kid, "signature": b64e(sig)}}
        e = self.endorsement
        if e is not None and e.get("issuer") == issuer and e.get("keys") == keys:
            out["endorsement"] = {"kid": e["kid"], "signature": e["signature"]}
        return out


class KeyRing:
    """The key files of one data dir; hands out snapshots, reloading after a rotation."""

    def __init__(self, data_dir: Path) -> None:
        self._dir = Path(data_dir)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: ServerKeys | None = None

    def snapshot(self) -> ServerKeys:
        stamp = _stamp(self._dir / KEY_FILE)
        with self._lock:
            if self._keys is None or stamp != self._stamp:
                self._keys = _load(self._dir)
                self._stamp = _stamp(self._dir / KEY_FILE)
            return self._keys


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def load_or_create(data_dir: Path) -> KeyRing:
    """Make the key files on first start (current and next), then open the ring."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    for name in (KEY_FILE, NEXT_FILE):
        if not (data_dir / name).exists():
            create_file(data_dir / name, bytes(SigningKey.generate()), 0o600)
    ring = KeyRing(data_dir)
    ring.snapshot()
    return ring


def rotate(data_dir: Path, now: float | None = None,
           issuer: str = DEFAULT_ISSUER) -> tuple[str, str]:
    """Make next current and a new next; returns (retired kid, new current kid).

    Crash-safe order: make the new next, have the old key endorse {next, new next}, record
    the old public key as retired, then rename next over current (atomic, the commit point),
    then move the new next in place. `issuer` must be the server's (`contents.issuer`), or
    the endorsement is not published. The rotation is recorded in the audit log.
    """
    data_dir = Path(data_dir)
    now = time.time() if now is None else now
    if not (data_dir / KEY_FILE).exists():
        raise FileNotFoundError(f"no signing key in {data_dir}: nothing to rotate (the contents "
                                "server makes its keys on first start)")
    old = _read_seed(data_dir / KEY_FILE)
    if not (data_dir / NEXT_FILE).exists():
        create_file(data_dir / NEXT_FILE, bytes(SigningKey.generate()), 0o600)
    new, after = _read_seed(data_dir / NEXT_FILE), SigningKey.generate()
    replace_file(data_dir / ENDORSEMENT_FILE,
                 json.dumps(_endorse(old, issuer, [new, after])).encode(), 0o600)
    retired = [r for r in _read_retired(data_dir) if now < r["retiredAt"] + RETIRED_GRACE]
    retired.append({"kid": key_id(bytes(old.verify_key)),
                    "publicKey": b64e(bytes(old.verify_key)), "retiredAt": now})
    replace_file(data_dir / RETIRED_FILE, json.dumps(retired, indent=1).encode(), 0o600)
    os.replace(data_dir / NEXT_FILE, data_dir / KEY_FILE)
    os.utime(data_dir / KEY_FILE)         # a fresh mtime: running servers reload
    create_file(data_dir / NEXT_FILE, bytes(after), 0o600)
    kids = key_id(bytes(old.verify_key)), key_id(bytes(new.verify_key))
    _audit(data_dir, now, f"retired {kids[0]}, current {kids[1]}")
    return kids


def _endorse(old: SigningKey, issuer: str, keys: list[SigningKey]) -> dict[str, Any]:
    """The retiring key's signature over the set it hands over to (what `published` lists)."""
    listed = [{"kid": key_id(bytes(k.verify_key)), "publicKey": b64e(bytes(k.verify_key))}
              for k in keys]
    sig = old.sign(keyset_message(issuer, listed)).signature
    return {"issuer": issuer, "keys": listed, "kid": key_id(bytes(old.verify_key)),
            "signature": b64e(sig)}


def _audit(data_dir: Path, now: float, detail: str) -> None:
    from . import audit
    audit.record_data_dir(data_dir, now, "key:rotated", detail)


def _load(data_dir: Path) -> ServerKeys:
    nxt = data_dir / NEXT_FILE
    retired = {r["kid"]: (VerifyKey(b64d(r["publicKey"])), float(r["retiredAt"]))
               for r in _read_retired(data_dir)}
    try:
        endorsement = json.loads((data_dir / ENDORSEMENT_FILE).read_text())
    except FileNotFoundError:
        endorsement = None
    return ServerKeys(_read_seed(data_dir / KEY_FILE),
                      _read_seed(nxt) if nxt.exists() else None, retired, endorsement)


def _read_retired(data_dir: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((data_dir / RETIRED_FILE).read_text()))
    except FileNotFoundError:
        return []


def _read_seed(path: Path) -> SigningKey:
    seed = path.read_bytes()
    if len(seed) != 32:
        raise RuntimeError(f"{path} is not a 32-byte Ed25519 seed ({len(seed)} bytes); "
                           "restore it from a backup or delete it to make a new key")
    return SigningKey(seed)
