"""GotAPI-2 authorization store: clients and access tokens, bound to the app's origin, in SQLite.

`grant(origin)` registers a client (128-bit random clientId); `access_token(...)` issues a
256-bit token for a client of the same origin with a list of scopes (profile names);
`check(token, origin, profile)` answers 13 (missing), 11 (unknown, or another origin),
12 (expired) or 14 (profile out of scope). Tokens are kept as their SHA-256 only, so the
index lookup leaks nothing useful by timing and a copy of the database grants nothing;
origins and digests are compared in constant time.

Every request checks its token, so `check` is the hot path: each thread keeps one SQLite
connection, and a token's row (origin, scopes, expiry) is remembered for CACHE_SECONDS once
read. A remembered row is checked exactly like a fresh one (origin, expiry against the
clock, scope) on every call; it is forgotten when it expires, when `revoke` or a purge
deletes the token here, and after CACHE_SECONDS in any case, so a row changed by another
process (an operator deleting a token with sqlite3) takes effect within that time. Unknown
tokens are never remembered: a flood of guesses cannot fill the cache.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gotapi3dp.wire.errors import ErrorCode, P3DError

from .fdwait import gevent_patched

DB_NAME = "auth.sqlite3"
_SCOPE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_SCOPES = 64
MAX_APP_NAME = 256
_PURGE_AFTER = 30 * 24 * 3600  # expired tokens are forgotten a month after expiry
CACHE_SECONDS = 10.0   # a token row read from SQLite is trusted this long (monotonic)
CACHE_MAX = 4096       # remembered token rows; the cache is emptied when full

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_sha256 TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients(client_id),
    origin TEXT NOT NULL,
    application_name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS hmac_keys (
    origin TEXT PRIMARY KEY,
    key_hex TEXT NOT NULL,
    created REAL NOT NULL
);
"""
_HMAC_KEY_RE = re.compile(r"^(?:[0-9a-fA-F]{2}){16,64}$")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _missing(name: str) -> P3DError:
    return P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, f"{name} is not specified.")


def parse_scopes(scope: str) -> list[str]:
    """`a,b` -> ["a", "b"]: trimmed, deduplicated case-insensitively, each a plain name."""
    out: list[str] = []
    seen: set[str] = set()
    for name in (s.strip() for s in scope.split(",", MAX_SCOPES * 4)):
        if not name or name.lower() in seen:
            continue
        if len(out) == MAX_SCOPES:
            raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                           f"scope lists more than {MAX_SCOPES} profiles.")
        if not _SCOPE_RE.fullmatch(name):
            raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                           f"scope {name[:64]!r} is not a profile name (names are separated "
                           f"by commas).")
        seen.add(name.lower())
        out.append(name)
    if not out:
        raise _missing("scope")
    return out


@dataclass(frozen=True)
class _Grant:
    """A token's row as `check` needs it, and when it was read (monotonic)."""
    origin: str
    scopes: frozenset[str]  # lower-cased
    expires: float          # clock() seconds
    read_at: float


class AuthStore:
    """Clients and tokens in `<data_dir>/auth.sqlite3` (WAL); one connection per thread.

    Under gevent every greenlet would be a "thread" here (one connection per HTTP
    connection, up to a thousand open files); all greenlets run on one OS thread and no
    statement here yields mid-way (autocommit, single statements), so they share one.
    """

    def __init__(self, data_dir: Path, token_lifetime: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(data_dir) / DB_NAME
        self.token_lifetime = int(token_lifetime)
        self.clock = clock
        self._local = threading.local()     # .db: this thread's connection
        self._shared: sqlite3.Connection | None = None  # under gevent: the one connection
        self._greenlets = gevent_patched()
        self._grants: dict[str, _Grant] = {}  # token digest -> row; see the module docstring
        self._grants_lock = threading.Lock()
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        with closing(self._open()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (autocommit), opened on first use; closed with the thread."""
        if self._greenlets:
            if self._shared is None:
                self._shared = self._open()
            return self._shared
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._open()
        return db

    def grant(self, origin: str) -> str:
        """Register a client for `origin`; return its clientId."""
        client_id = secrets.token_hex(16)
        now = self.clock()
        db = self._connect()
        db.execute("INSERT INTO clients VALUES (?, ?, ?)", (client_id, origin, now))
        db.execute("DELETE FROM tokens WHERE expires < ?", (now - _PURGE_AFTER,))
        return client_id

    def access_token(self, origin: str, client_id: str | None, scope: str | None,
                     application_name: str | None) -> tuple[str, int, list[dict[str, Any]]]:
        """Issue a token: (accessToken, expire in unix ms, [{scope, expirePeriod}])."""
        if not client_id:
            raise _missing("clientId")
        if not scope:
            raise _missing("scope")
        if not application_name:
            raise _missing("applicationName")
        if len(application_name) > MAX_APP_NAME:
            raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, "applicationName is too long.")
        if not application_name.isprintable():
            raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                           "applicationName has control characters.")
        scopes = parse_scopes(scope)
        self._check_client(client_id, origin)
        token = secrets.token_urlsafe(32)
        now = self.clock()
        expires = now + self.token_lifetime
        db = self._connect()
        db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (_digest(token), client_id, origin, application_name,
                    json.dumps(scopes), now, expires))
        periods = [{"scope": s, "expirePeriod": self.token_lifetime} for s in scopes]
        return token, int(expires * 1000), periods

    def _check_client(self, client_id: str, origin: str) -> None:
        db = self._connect()
        row = db.execute("SELECT origin FROM clients WHERE client_id = ?",
                         (client_id,)).fetchone()
        if row is None or not _same(row[0], origin):
            raise P3DError(ErrorCode.NOT_FOUND_CLIENT_ID)

    def set_hmac_key(self, origin: str, key_hex: str) -> None:
        """Register the app's HMAC key (16-64 bytes as hex) for its origin; replaces any."""
        if not _HMAC_KEY_RE.fullmatch(key_hex):
            raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                           "key must be 32 to 128 hex digits (16 to 64 bytes).")
        db = self._connect()
        db.execute("INSERT OR REPLACE INTO hmac_keys VALUES (?, ?, ?)",
                   (origin, key_hex.lower(), self.clock()))

    def hmac_key(self, origin: str) -> bytes | None:
        db = self._connect()
        row = db.execute("SELECT key_hex FROM hmac_keys WHERE origin = ?",
                         (origin,)).fetchone()
        return bytes.fromhex(row[0]) if row else None

    def revoke(self, token: str) -> None:
        """Delete `token`; it is refused (11) from the next check on."""
        digest = _digest(token)
        self._connect().execute("DELETE FROM tokens WHERE token_sha256 = ?", (digest,))
        self._forget(digest)

    def check(self, token: str | None, origin: str, profile: str | None) -> None:
        """Raise 13/11/12/14 unless `token` is valid for `origin` (and `profile`, if given)."""
        if not token:
            raise P3DError(ErrorCode.EMPTY_ACCESS_TOKEN)
        digest = _digest(token)
        grant = self._grant(digest)
        if grant is None or not _same(grant.origin, origin):
            raise P3DError(ErrorCode.AUTHORIZATION, "Access token is invalid.")
        if grant.expires <= self.clock():
            self._forget(digest)
            raise P3DError(ErrorCode.EXPIRED_ACCESS_TOKEN)
        if profile is not None and profile.lower() not in grant.scopes:
            raise P3DError(ErrorCode.SCOPE, f"Profile {profile!r} is not in the token's scope.")

    def _grant(self, digest: str) -> _Grant | None:
        """The token's row: remembered if read less than CACHE_SECONDS ago, else from SQLite."""
        now = time.monotonic()
        grant = self._grants.get(digest)
        if grant is not None and now - grant.read_at < CACHE_SECONDS:
            return grant
        row = self._connect().execute(
            "SELECT token_sha256, origin, scopes, expires FROM tokens WHERE token_sha256 = ?",
            (digest,)).fetchone()
        if row is None or not _same(row[0], digest):
            self._forget(digest)
            return None
        grant = _Grant(row[1], frozenset(s.lower() for s in json.loads(row[2])), row[3], now)
        with self._grants_lock:
            if len(self._grants) >= CACHE_MAX:
                self._grants = {k: g for k, g in self._grants.items()
                                if now - g.read_at < CACHE_SECONDS}
                if len(self._grants) >= CACHE_MAX:
                    self._grants.clear()
            self._grants[digest] = grant
        return grant

    def _forget(self, digest: str) -> None:
        with self._grants_lock:
            self._grants.pop(digest, None)
