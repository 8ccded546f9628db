"""The contents server's SQLite database: schema, pragmas, one connection per thread.

WAL lets readers run beside the single writer; `synchronous=FULL` makes a committed
REDEEMED survive a power cut (a token must never become redeemable again). Every write goes
through `Database.tx()`, which takes the write lock up front (`BEGIN IMMEDIATE`) so a
read-then-write inside it cannot race another thread.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

DB_FILE = "contents.sqlite3"     # inside the contents server's data dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    api_key_hash BLOB NOT NULL UNIQUE,
    created      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS contents (
    id      TEXT PRIMARY KEY,
    owner   TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name    TEXT NOT NULL,
    format  TEXT NOT NULL CHECK (format IN ('stl', 'obj', '3mf')),
    bytes   INTEGER NOT NULL,
    sha256  TEXT NOT NULL,
    prints  INTEGER NOT NULL DEFAULT 0,          -- print allowance, 0 = no limit
    prints_used INTEGER NOT NULL DEFAULT 0 CHECK (prints = 0 OR prints_used <= prints),
    created INTEGER NOT NULL,
    UNIQUE (owner, sha256)
);
CREATE TABLE IF NOT EXISTS printers (
    id       TEXT PRIMARY KEY,
    owner    TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name     TEXT NOT NULL,
    sign_key BLOB NOT NULL,
    box_key  BLOB NOT NULL,
    created  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    jti         BLOB PRIMARY KEY,
    printer_id  TEXT NOT NULL,
    content_id  TEXT NOT NULL,
    account     TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('ISSUED', 'REDEEMED')),
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    redeemed_at INTEGER,
    redeem_key  BLOB UNIQUE,     -- SHA-256 of the winning redeem request (idempotent retry)
    answer      TEXT             -- the JSON answer given to it
);
CREATE TABLE IF NOT EXISTS nonces (
    nonce      BLOB PRIMARY KEY,
    printer_id TEXT NOT NULL REFERENCES printers(id) ON DELETE CASCADE,
    expires_at REAL NOT NULL,
    used       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS nonces_printer ON nonces (printer_id);
CREATE TABLE IF NOT EXISTS downloads (
    cap        TEXT PRIMARY KEY,
    printer_id TEXT NOT NULL REFERENCES printers(id) ON DELETE CASCADE,
    content_id TEXT NOT NULL REFERENCES contents(id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pairings (
    device_hash BLOB PRIMARY KEY,     -- SHA-256 of the printer's secret polling code
    user_hash   BLOB NOT NULL UNIQUE, -- SHA-256 of the short code the user confirms
    printer_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    sign_key    BLOB NOT NULL,
    box_key     BLOB NOT NULL,
    expires_at  REAL NOT NULL,
    approved_by TEXT,                 -- account id once confirmed
    last_poll   REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pairing_failures (
    id      INTEGER PRIMARY KEY,
    ts      REAL NOT NULL,
    account TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY,
    ts      REAL NOT NULL,
    event   TEXT NOT NULL,
    account TEXT,
    printer TEXT,
    content TEXT,
    detail  TEXT
);
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open one connection with our pragmas; autocommit mode, transactions are explicit."""
    # check_same_thread=False only so that Database.close() may close every thread's
    # connection at shutdown; while serving, each connection stays with its own thread.
    conn = sqlite3.connect(str(path), timeout=15.0, isolation_level=None,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=15000")
    return conn


class Database:
    """Hands each thread its own connection (sqlite3 connections are not shared)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Create the file private first: SQLite gives -wal and -shm the same mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self.tx() as conn:
            _create_schema(conn)

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database write lock from its first statement."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        return self.conn().execute(sql, params).fetchone()

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self.conn().execute(sql, params).fetchall()

    def close(self) -> None:
        """Close every connection handed out (call once, when the process stops)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


# Columns added after the first release: (table, column, definition) for older databases.
_ADDED_COLUMNS = (
    ("contents", "prints_used", "INTEGER NOT NULL DEFAULT 0"),
    ("tokens", "redeem_key", "BLOB"),
    ("tokens", "answer", "TEXT"),
)


def _create_schema(conn: sqlite3.Connection) -> None:
    """Run the schema one statement at a time (executescript would COMMIT our transaction)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    for table, column, definition in _ADDED_COLUMNS:
        names = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in names:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS tokens_redeem_key ON tokens (redeem_key)")
