"""Service Connecting results the plug-in keeps: connectionId -> the opaque sealed token.

The token is stored as the string the contents server gave; the plug-in has no key to open
it. Kept in SQLite so a plug-in host restart does not lose an app's connection.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.ids import new_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS connections (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    token TEXT NOT NULL,
    content TEXT NOT NULL,
    expires_at REAL NOT NULL,
    job_id TEXT,
    created_at REAL NOT NULL
);
"""


@dataclass
class Connection:
    id: str
    service_id: str
    origin: str
    token: str
    content: dict[str, Any]
    expires_at: float
    job_id: str | None


class ConnectionStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        path.chmod(0o600)

    def add(self, service_id: str, origin: str, token: str, content: dict[str, Any],
            expires_at: float) -> Connection:
        conn = Connection(new_id(), service_id, origin, token, content, expires_at, None)
        with self._lock:
            self._db.execute("INSERT INTO connections VALUES (?,?,?,?,?,?,?,?)",
                             (conn.id, service_id, origin, token, json.dumps(content),
                              expires_at, None, time.time()))
            self._prune()
        return conn

    def get(self, connection_id: str, service_id: str, origin: str) -> Connection:
        """The connection, if it was made by this origin for this service."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, service_id, origin, token, content, expires_at, job_id "
                "FROM connections WHERE id=? AND service_id=? AND origin=?",
                (connection_id, service_id, origin)).fetchone()
        if row is None:
            raise P3DError(ErrorCode.CONNECTION_NOT_FOUND,
                           "unknown connectionId for this service and origin; connect first")
        return Connection(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6])

    def set_job(self, connection_id: str, job_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE connections SET job_id=? WHERE id=?", (job_id, connection_id))

    def _prune(self) -> None:
        """Forget connections whose token expired a day ago (their jobs live on the printer)."""
        self._db.execute("DELETE FROM connections WHERE expires_at < ?", (time.time() - 86400,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
