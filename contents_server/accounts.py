"""User accounts and their API keys (stored only as SHA-256 hashes)."""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from gotapi3dp.config import Config
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.ids import new_id

from . import audit
from .db import DB_FILE, Database
from gotapi3dp.fsutil import replace_file

DEMO_ACCOUNT = "demo"
DEMO_KEY_FILE = "demo.key"
KEY_BYTES = 32
MAX_KEY_CHARS = 128
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    created: int


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def add_account(db: Database, name: str, now: float | None = None) -> str:
    """Create an account and return its new API key; only the key's hash is kept.

    For the CLI and first start. The key is shown once: lose it and make another account.
    """
    with db.tx() as conn:
        return _insert(conn, name, time.time() if now is None else now)


def add_account_cli(config: Config, name: str) -> str:
    """`gotapi-3dp contents account NAME`: add an account to this data dir's database."""
    db = Database(config.dir_for("contents") / DB_FILE)
    try:
        return add_account(db, name)
    finally:
        db.close()


def _insert(conn: sqlite3.Connection, name: str, now: float) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                       "account name must be 1-64 characters of A-Z, a-z, 0-9, _ . @ -")
    if conn.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)).fetchone():
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, f"account {name!r} already exists")
    key = "p3dc_" + secrets.token_urlsafe(KEY_BYTES)  # a prefix: never starts with "-", easy to scan for
    account_id = new_id()
    conn.execute("INSERT INTO accounts (id, name, api_key_hash, created) VALUES (?, ?, ?, ?)",
                 (account_id, name, hash_key(key), int(now)))
    audit.record(conn, now, "account:created", account=account_id, detail=name)
    return key


def authenticate(db: Database, key: str | None) -> Account:
    """The account owning `key`, or CONTENTS_AUTH.

    The lookup goes by SHA-256 of the key, so the index search leaks nothing usable about
    the key itself; the final comparison is constant-time all the same.
    """
    denied = P3DError(ErrorCode.CONTENTS_AUTH, "missing or wrong contents API key")
    if not key or not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
        raise denied
    wanted = hash_key(key)
    row = db.one("SELECT id, name, api_key_hash, created FROM accounts WHERE api_key_hash = ?",
                 (wanted,))
    if row is None or not hmac.compare_digest(bytes(row["api_key_hash"]), wanted):
        raise denied
    return Account(row["id"], row["name"], row["created"])


def ensure_demo(db: Database, data_dir: Path, now: float | None = None) -> bool:
    """On first start (no accounts at all) create "demo" and write its key to demo.key.

    The key file (mode 0600) is how the supervisor (`gotapi-3dp up`) learns the demo key
    without reading logs. It is written inside the transaction: if writing fails, the
    account is rolled back, so there is never an account whose key nobody has.
    Returns True if the account was created now.
    """
    with db.tx() as conn:
        if conn.execute("SELECT 1 FROM accounts LIMIT 1").fetchone():
            return False
        key = _insert(conn, DEMO_ACCOUNT, time.time() if now is None else now)
        replace_file(Path(data_dir) / DEMO_KEY_FILE, (key + "\n").encode("ascii"), 0o600)
    return True
