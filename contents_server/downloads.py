"""Download capabilities: 128-bit URLs bound to one printer and one content, short-lived.

A capability alone is not enough: every request also carries the printer's signature over
(method, path, printer id, time), so a leaked URL is useless to anyone without the
printer's signing key. Every refusal is the same DOWNLOAD_DENIED, so a prober learns
nothing about which check failed.
"""
from __future__ import annotations

import re
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any, Mapping

from nacl.signing import VerifyKey

from gotapi3dp.config import ContentsConfig
from gotapi3dp.wire import token as p3t
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.ids import PRINTER_ID_RE

from .catalog import Content
from .db import Database

CAP_BYTES = 16
DOWNLOAD_PREFIX = "/api/download/"
_CAP_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
_TIME_RE = re.compile(r"^[0-9]{1,12}$")
HEADER_PRINTER = "X-P3T-Printer"
HEADER_TIME = "X-P3T-Time"
HEADER_PROOF = "X-P3T-Proof"


def grant(conn: sqlite3.Connection, config: ContentsConfig, printer_id: str, content_id: str,
          now: float) -> dict[str, Any]:
    """Make a capability inside the redeem transaction; the URL is relative to the server."""
    cap = p3t.b64e(secrets.token_bytes(CAP_BYTES))
    expires = int(now) + config.download_ttl
    conn.execute("DELETE FROM downloads WHERE expires_at <= ?", (now,))
    conn.execute("INSERT INTO downloads (cap, printer_id, content_id, expires_at) "
                 "VALUES (?, ?, ?, ?)", (cap, printer_id, content_id, expires))
    return {"url": DOWNLOAD_PREFIX + cap, "expiresAt": expires}


@dataclass(frozen=True)
class DownloadProof:
    printer_id: str
    time: int
    signature: bytes

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> "DownloadProof":
        printer_id = headers.get(HEADER_PRINTER, "")
        time_text = headers.get(HEADER_TIME, "")
        try:
            signature = p3t.b64d(headers.get(HEADER_PROOF, ""))
        except ValueError:
            signature = b""
        if (not PRINTER_ID_RE.fullmatch(printer_id) or not _TIME_RE.fullmatch(time_text)
                or len(signature) != p3t.SIG_BYTES):
            raise _denied("missing or malformed download proof headers")
        return cls(printer_id, int(time_text), signature)


def _denied(why: str) -> P3DError:
    return P3DError(ErrorCode.DOWNLOAD_DENIED, f"download denied: {why}")


def authorize(db: Database, cap: str, path: str, proof: DownloadProof, now: float) -> Content:
    """The content a signed request for `cap` may read, else DOWNLOAD_DENIED."""
    if not _CAP_RE.fullmatch(cap):
        raise _denied("unknown download URL")
    if abs(now - proof.time) > p3t.CLOCK_SKEW:
        raise _denied("proof time is too far from the server's clock")
    row = db.one("SELECT p.sign_key, d.content_id, d.expires_at FROM downloads d "
                 "JOIN printers p ON p.id = d.printer_id WHERE d.cap = ? AND d.printer_id = ?",
                 (cap, proof.printer_id))
    if row is None or row["expires_at"] <= now:
        raise _denied("unknown or expired download URL, or not this printer's")
    message = p3t.download_message("GET", path, proof.printer_id, proof.time)
    if not p3t.verify_detached(VerifyKey(bytes(row["sign_key"])), message, proof.signature):
        raise _denied("the printer's signature does not verify")
    content = db.one("SELECT * FROM contents WHERE id = ?", (row["content_id"],))
    if content is None:
        raise _denied("the content is gone")
    return Content.from_row(content)
