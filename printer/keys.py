"""The printer's own keys: Ed25519 signing key, X25519 box key and HTTP API key, made once.

Files in the printer data dir (0700), each private (0600), created with O_EXCL on first start
and read back on every later start:
    sign.key  Ed25519 seed (32 bytes), proof of possession at the contents server
    box.key   X25519 private key (32 bytes), opens the sealed print token
    api.key   random API key (text) for `X-Api-Key` on the printer HTTP API
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from gotapi3dp.fsutil import read_or_create
from gotapi3dp.wire.token import b64e, fingerprint

KEY_BYTES = 32
API_KEY_BYTES = 32


@dataclass(frozen=True)
class PrinterKeys:
    """The printer's identity: id, name and the three secrets."""

    printer_id: str
    name: str
    sign_key: SigningKey
    box_key: PrivateKey
    api_key: str

    @property
    def sign_public(self) -> bytes:
        return bytes(self.sign_key.verify_key)

    @property
    def box_public(self) -> bytes:
        return bytes(self.box_key.public_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.sign_public, self.box_public)

    def identity(self) -> dict[str, Any]:
        """Public part only: what pairing at the contents server needs."""
        return {"printerId": self.printer_id, "name": self.name,
                "signKey": b64e(self.sign_public), "boxKey": b64e(self.box_public),
                "fingerprint": self.fingerprint}

    def __repr__(self) -> str:  # never print secrets
        return f"PrinterKeys(printer_id={self.printer_id!r}, fingerprint={self.fingerprint!r})"


def load_or_create(data_dir: Path, printer_id: str, name: str) -> PrinterKeys:
    """Read the keys from `data_dir`, making any that are missing (first start)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    sign_seed = read_or_create(data_dir / "sign.key", lambda: bytes(SigningKey.generate()))
    box_raw = read_or_create(data_dir / "box.key", lambda: bytes(PrivateKey.generate()))
    api_key = read_or_create(data_dir / "api.key",
                      lambda: ("p3dp_" + secrets.token_urlsafe(API_KEY_BYTES)).encode("ascii"))
    if len(sign_seed) != KEY_BYTES or len(box_raw) != KEY_BYTES:
        raise ValueError(f"corrupt key file in {data_dir} (expected {KEY_BYTES} bytes)")
    text = api_key.decode("ascii").strip()
    if not text:
        raise ValueError(f"empty API key in {data_dir / 'api.key'}")
    return PrinterKeys(printer_id, name, SigningKey(sign_seed), PrivateKey(box_raw), text)
