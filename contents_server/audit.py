"""The audit trail: who did what to which content or printer, never a secret."""
from __future__ import annotations

import sqlite3


def record(conn: sqlite3.Connection, now: float, event: str, *, account: str | None = None,
           printer: str | None = None, content: str | None = None, detail: str = "") -> None:
    """Append one event inside the caller's transaction, so it commits with the change.

    Callers pass ids and short outcomes only: no API keys, tokens, nonces, proofs or
    download capabilities (any of those in a log could be replayed by whoever reads it).
    """
    conn.execute("INSERT INTO audit (ts, event, account, printer, content, detail) "
                 "VALUES (?, ?, ?, ?, ?, ?)", (now, event, account, printer, content, detail[:200]))
