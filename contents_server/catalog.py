"""The content catalog: validated uploads recorded per owner, deduplicated by SHA-256."""
from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.ids import check_content_id, new_id

from . import audit
from .blobs import BlobStore
from .db import Database
from .meshcheck import check_model

MAX_NAME_CHARS = 200
MAX_PRINTS = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Content:
    id: str
    owner: str
    name: str
    format: str
    bytes: int
    sha256: str
    prints: int         # print allowance; 0 = no limit
    created: int
    prints_used: int = 0

    @property
    def remaining(self) -> int | None:
        """Prints left on the licence, None when unlimited."""
        return None if self.prints <= 0 else max(0, self.prints - self.prints_used)

    def to_map(self) -> dict[str, Any]:
        """The content object of docs/API.md (no owner: the caller is the owner)."""
        return {"id": self.id, "name": self.name, "format": self.format, "bytes": self.bytes,
                "sha256": self.sha256, "prints": self.prints or None,
                "remaining": self.remaining, "createdAt": self.created}

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Content":
        return cls(row["id"], row["owner"], row["name"], row["format"], row["bytes"],
                   row["sha256"], row["prints"], row["created"], row["prints_used"])


def clean_name(name: str | None, fallback: str) -> str:
    """A display name: a base name only, no control characters, bounded length."""
    text = name if isinstance(name, str) and name.strip() else fallback
    text = _CONTROL.sub("", os.path.basename(text.replace("\\", "/"))).strip()
    return text[:MAX_NAME_CHARS] or "model"


def parse_prints(value: str | None) -> int:
    """The print allowance of an upload: absent means no limit (0)."""
    if value is None or value == "":
        return 0
    if not value.isdigit() or not 1 <= int(value) <= MAX_PRINTS:
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                       f"prints must be a whole number from 1 to {MAX_PRINTS}")
    return int(value)


def add(db: Database, blobs: BlobStore, owner: str, name: str, data: bytes, prints: int,
        now: float) -> tuple[Content, bool]:
    """Validate and store an upload; (content, created). The same bytes give the same id."""
    fmt = check_model(data)
    digest = hashlib.sha256(data).hexdigest()
    existing = _by_hash(db.conn(), owner, digest)
    if existing is not None:
        return existing, False
    blobs.put(data)
    with db.tx() as conn:
        existing = _by_hash(conn, owner, digest)   # another upload may have won meanwhile
        if existing is not None:
            return existing, False
        content = Content(new_id(), owner, name, fmt, len(data), digest, prints, int(now))
        conn.execute("INSERT INTO contents (id, owner, name, format, bytes, sha256, prints, "
                     "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (content.id, owner, name, fmt, content.bytes, digest, prints, content.created))
        audit.record(conn, now, "content:added", account=owner, content=content.id, detail=fmt)
    return content, True


def _by_hash(conn: sqlite3.Connection, owner: str, digest: str) -> Content | None:
    row = conn.execute("SELECT * FROM contents WHERE owner = ? AND sha256 = ?",
                       (owner, digest)).fetchone()
    return Content.from_row(row) if row else None


def get(db: Database, owner: str, content_id: str) -> Content:
    """One of `owner`'s contents; another account's content is simply not found."""
    check_content_id(content_id)
    row = db.one("SELECT * FROM contents WHERE id = ? AND owner = ?", (content_id, owner))
    if row is None:
        raise P3DError(ErrorCode.CONTENT_NOT_FOUND, f"no content {content_id} for this account")
    return Content.from_row(row)


def list_for(db: Database, owner: str) -> list[Content]:
    rows = db.all("SELECT * FROM contents WHERE owner = ? ORDER BY created, id", (owner,))
    return [Content.from_row(r) for r in rows]
