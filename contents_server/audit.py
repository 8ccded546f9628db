"""The audit trail: who did what to which content or printer, never a secret."""
from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from gotapi3dp.wire.errors import ErrorCode, P3DError


def record(conn: sqlite3.Connection, now: float, event: str, *, account: str | None = None,
           printer: str | None = None, content: str | None = None, detail: str = "") -> None:
    """Append one event inside the caller's transaction, so it commits with the change.

    Callers pass ids and short outcomes only: no API keys, tokens, nonces, proofs or
    download capabilities (any of those in a log could be replayed by whoever reads it).
    """
    conn.execute("INSERT INTO audit (ts, event, account, printer, content, detail) "
                 "VALUES (?, ?, ?, ?, ?, ?)", (now, event, account, printer, content, detail[:200]))


def query(conn: sqlite3.Connection, since: float = 0.0, limit: int = 1000,
          event_prefix: str = "") -> list[dict[str, Any]]:
    """Events at or after `since` (unix seconds), oldest first, at most `limit` (newest kept)."""
    rows = conn.execute(
        "SELECT * FROM (SELECT id, ts, event, account, printer, content, detail FROM audit "
        "WHERE ts >= ? AND event LIKE ? ORDER BY id DESC LIMIT ?) ORDER BY id",
        (since, event_prefix.replace("%", "") + "%", limit)).fetchall()
    return [{k: row[k] for k in row.keys()} for row in rows]


def parse_since(text: str | None, now: float) -> float:
    """`--since`: unix seconds, an ISO date or date-time, or an age (`30m`, `2h`, `7d`)."""
    if not text:
        return 0.0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return now - int(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                       f"--since {text[:40]!r}: expected unix seconds, an ISO date, or 30m/2h/7d"
                       ) from None


def query_data_dir(data_dir: Path, since: float, limit: int) -> list[dict[str, Any]]:
    """`gotapi-3dp contents audit`: read the events straight from the data dir's database."""
    from .db import DB_FILE, Database
    db = Database(Path(data_dir) / DB_FILE)
    try:
        return query(db.conn(), since, limit)
    finally:
        db.close()


def record_data_dir(data_dir: Path, now: float, event: str, detail: str = "") -> None:
    """Record one event from a tool run beside the server (`contents rotate-key`)."""
    from .db import DB_FILE, Database
    db = Database(Path(data_dir) / DB_FILE)
    try:
        with db.tx() as conn:
            record(conn, now, event, detail=detail)
    finally:
        db.close()
