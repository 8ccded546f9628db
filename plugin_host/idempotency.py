"""Idempotency keys: the first answer per (plug-in, origin, key), kept in SQLite.

The GotAPI server puts the app's `Idempotency-Key` into state-changing Intents. Before a
plug-in handles one, the host looks the key up: a stored answer is returned again (with the
new requestCode); a key being handled right now makes the second caller wait for the first;
a key reused for a different request (another path, service or parameters) is refused with
10. Answers that say "try again" (timeouts, unreachable services) are not stored. Entries
live TTL seconds; the file survives a host restart, so a retry after a crash is still safe.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Callable

from gotapi3dp.wire.errors import ErrorCode
from gotapi3dp.wire.intent import Intent, decode, encode

TTL = 24 * 3600
# Answers a retry should not see again: the caller is meant to try again.
TRANSIENT = frozenset({ErrorCode.TIMEOUT, ErrorCode.ILLEGAL_SERVER_STATE,
                       ErrorCode.ILLEGAL_DEVICE_STATE, ErrorCode.PRINTER_UNAVAILABLE,
                       ErrorCode.CONTENTS_UNAVAILABLE, ErrorCode.PRINTER_BUSY})

_SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    scope TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, answer BLOB NOT NULL, created REAL NOT NULL
)"""


def fingerprint(intent: Intent) -> str:
    """What makes two requests 'the same': action, path, service and parameters."""
    body = json.dumps([intent.action.value, intent.path.lower(), intent.service_id,
                       intent.params], sort_keys=True, default=repr)
    return hashlib.sha256(body.encode()).hexdigest()


class IdempotencyStore:
    def __init__(self, path: Path, ttl: float = TTL,
                 clock: Callable[[], float] = time.time) -> None:
        self._path, self._ttl, self._clock = Path(path), ttl, clock
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Lock] = {}
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._path, timeout=10.0, isolation_level=None)

    def run(self, intent: Intent, handle: Callable[[Intent], Intent]) -> Intent:
        """`handle(intent)` once per key; repeated keys get the first answer."""
        if not intent.idempotency_key:
            return handle(intent)
        scope = json.dumps([intent.plugin_id, intent.origin, intent.idempotency_key])
        with self._lock:
            key_lock = self._busy.setdefault(scope, threading.Lock())
        with key_lock:
            stored = self._load(scope, intent)
            if stored is not None:
                return stored
            answer = handle(intent)
            if answer.result == 0 or answer.error_code not in TRANSIENT:
                self._save(scope, intent, answer)
            return answer

    def _load(self, scope: str, intent: Intent) -> Intent | None:
        with closing(self._connect()) as db:
            db.execute("DELETE FROM answers WHERE created < ?", (self._clock() - self._ttl,))
            row = db.execute("SELECT fingerprint, answer FROM answers WHERE scope = ?",
                             (scope,)).fetchone()
        if row is None:
            return None
        if row[0] != fingerprint(intent):
            return intent.error(ErrorCode.INVALID_REQUEST_PARAMETER,
                                "Request parameters are invalid: idempotencyKey was used "
                                "for another request.")
        first = decode(row[1])
        first.request_code = intent.request_code
        return first

    def _save(self, scope: str, intent: Intent, answer: Intent) -> None:
        with closing(self._connect()) as db:
            db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                       (scope, fingerprint(intent), encode(answer), self._clock()))
