"""The contents server's Ed25519 signing key: made once, kept private in the data dir."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from gotapi3dp.wire.token import b64e, key_id

from gotapi3dp.fsutil import create_file

KEY_FILE = "signing.key"


@dataclass(frozen=True)
class ServerKeys:
    """The current signing key; `verify_keys` is the map `verify_signed` expects."""

    signing_key: SigningKey

    @property
    def kid(self) -> str:
        return key_id(bytes(self.signing_key.verify_key))

    def verify_keys(self) -> dict[str, VerifyKey]:
        return {self.kid: self.signing_key.verify_key}

    def public_list(self) -> list[dict[str, str]]:
        """What `GET /api/keys` publishes and printers pin."""
        return [{"kid": self.kid, "publicKey": b64e(bytes(self.signing_key.verify_key))}]


def load_or_create(data_dir: Path) -> ServerKeys:
    """Read `<data_dir>/signing.key` (32-byte seed), making it first if absent.

    A new key is written to a 0600 temp file, fsynced, then hard-linked into place: the
    link either appears complete or not at all (a crash never leaves an empty key file),
    and a concurrent creator that loses the race simply reads the winner's key.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    path = data_dir / KEY_FILE
    if not path.exists():
        create_file(path, bytes(SigningKey.generate()), 0o600)
    return ServerKeys(_read_seed(path))


def _read_seed(path: Path) -> SigningKey:
    seed = path.read_bytes()
    if len(seed) != 32:
        raise RuntimeError(f"{path} is not a 32-byte Ed25519 seed ({len(seed)} bytes); "
                           "restore it from a backup or delete it to make a new key")
    return SigningKey(seed)
