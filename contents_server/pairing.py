"""Pairing a printer by a short single-use code (the RFC 8628 device flow, adapted).

1. The printer posts its public keys with a signature by its signing key (`start`); it gets
   a secret 256-bit device code (kept on the printer) and a short user code it shows with
   its keys' fingerprint.
2. The user confirms the user code with their account's API key (`confirm`, CLI or HTTP),
   optionally with the fingerprint they read off the printer (anti-phishing); the printer
   is then registered to that account.
3. The printer polls with its device code (`poll`) and gets the server's signed key set to
   pin; the request is then gone (single use).

User codes are 8 letters from a 20-consonant alphabet (~34.6 bits), random (never derived
from a serial number), stored only as SHA-256, valid `CODE_TTL`. Wrong guesses are counted
per account and in total; past the limit every confirm is refused for a while (429), which
bounds a brute force to a vanishing chance.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from nacl.signing import VerifyKey

from gotapi3dp.wire import token as p3t
from gotapi3dp.wire.errors import ErrorCode, P3DError

from . import audit, printers
from .db import Database
from .keys import KeyRing

ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
CODE_LENGTH = 8
DEVICE_CODE_BYTES = 32
CODE_TTL = 600              # seconds a pairing request lives
POLL_INTERVAL = 2           # seconds between polls the printer should keep
MAX_PENDING = 64            # pairing requests open at once, all printers together
MAX_PER_PRINTER = 3         # open requests per printer id (older ones are dropped)
FAIL_WINDOW = 900           # seconds over which wrong codes are counted
MAX_FAILS_ACCOUNT = 5       # wrong codes per account per window
MAX_FAILS_TOTAL = 50        # wrong codes, all accounts, per window


def _hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("ascii")).digest()


def normalize_code(code: Any) -> str | None:
    """`bcdf-ghjk`, `BCDF GHJK` -> `BCDFGHJK`; None if it cannot be one of our codes."""
    if not isinstance(code, str) or len(code) > 32:
        return None
    text = "".join(c for c in code.upper() if c not in "- ")
    return text if len(text) == CODE_LENGTH and all(c in ALPHABET for c in text) else None


def display_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


@dataclass(frozen=True)
class PairRequest:
    """A checked `POST /api/pairing` body: the printer's keys, signed by the printer."""

    reg: printers.Registration
    iat: int
    proof: bytes

    @classmethod
    def from_json(cls, body: dict[str, Any], now: float) -> "PairRequest":
        reg = printers.Registration.from_json(body)
        iat = body.get("iat")
        try:
            proof = p3t.b64d(body.get("proof"))  # type: ignore[arg-type]
        except ValueError:
            proof = b""
        if not isinstance(iat, int) or isinstance(iat, bool) or abs(now - iat) > p3t.CLOCK_SKEW:
            raise P3DError(ErrorCode.POP_INVALID, "pairing proof time is missing or stale")
        message = p3t.pair_message(reg.printer_id, reg.sign_key, reg.box_key, iat)
        if not p3t.verify_detached(VerifyKey(reg.sign_key), message, proof):
            raise P3DError(ErrorCode.POP_INVALID, "pairing request is not signed by its key")
        return cls(reg, iat, proof)


def start(db: Database, req: PairRequest, now: float) -> dict[str, Any]:
    """Open a pairing request; the answer goes to the printer only."""
    device_code = p3t.b64e(secrets.token_bytes(DEVICE_CODE_BYTES))
    user_code = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    reg = req.reg
    with db.tx() as conn:
        conn.execute("DELETE FROM pairings WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM pairings WHERE printer_id = ? AND device_hash NOT IN (SELECT "
                     "device_hash FROM pairings WHERE printer_id = ? ORDER BY expires_at DESC "
                     "LIMIT ?)", (reg.printer_id, reg.printer_id, MAX_PER_PRINTER - 1))
        if conn.execute("SELECT COUNT(*) FROM pairings").fetchone()[0] >= MAX_PENDING:
            raise P3DError(ErrorCode.PAIRING_RATE_LIMITED, "too many pairing requests open")
        conn.execute("INSERT INTO pairings (device_hash, user_hash, printer_id, name, sign_key, "
                     "box_key, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (_hash(device_code), _hash(user_code), reg.printer_id, reg.name,
                      reg.sign_key, reg.box_key, now + CODE_TTL))
        audit.record(conn, now, "pairing:started", printer=reg.printer_id)
    return {"deviceCode": device_code, "userCode": display_code(user_code),
            "expiresAt": int(now + CODE_TTL), "interval": POLL_INTERVAL,
            "fingerprint": p3t.fingerprint(reg.sign_key, reg.box_key)}


def confirm(db: Database, account: str, code: Any, fingerprint: Any,
            now: float) -> dict[str, Any]:
    """The user confirms a code they read on the printer: pair it with their account."""
    _check_rate(db, account, now)
    normal = normalize_code(code)
    with db.tx() as conn:
        row = None if normal is None else conn.execute(
            "SELECT * FROM pairings WHERE user_hash = ? AND expires_at > ? AND approved_by IS "
            "NULL", (_hash(normal), now)).fetchone()
        shown = p3t.fingerprint(bytes(row["sign_key"]), bytes(row["box_key"])) if row else ""
        if row is not None and (fingerprint is None or (isinstance(fingerprint, str)
                                and hmac.compare_digest(fingerprint.upper(), shown))):
            reg = printers.Registration(row["printer_id"], row["name"], bytes(row["sign_key"]),
                                        bytes(row["box_key"]))
            printers.register_in(conn, account, reg, now)
            conn.execute("UPDATE pairings SET approved_by = ? WHERE device_hash = ?",
                         (account, row["device_hash"]))
            audit.record(conn, now, "pairing:confirmed", account=account, printer=reg.printer_id)
            return {"printerId": reg.printer_id, "name": reg.name, "fingerprint": shown}
    _record_failure(db, account, now)
    raise P3DError(ErrorCode.PAIRING_CODE, "unknown, used or expired pairing code "
                   "(or the fingerprint does not match)")


def _check_rate(db: Database, account: str, now: float) -> None:
    since = now - FAIL_WINDOW
    mine = db.one("SELECT COUNT(*) FROM pairing_failures WHERE account = ? AND ts > ?",
                  (account, since))[0]  # type: ignore[index]
    total = db.one("SELECT COUNT(*) FROM pairing_failures WHERE ts > ?", (since,))[0]  # type: ignore[index]
    if mine >= MAX_FAILS_ACCOUNT or total >= MAX_FAILS_TOTAL:
        raise P3DError(ErrorCode.PAIRING_RATE_LIMITED,
                       "too many wrong pairing codes; wait and try again")


def _record_failure(db: Database, account: str, now: float) -> None:
    with db.tx() as conn:
        conn.execute("DELETE FROM pairing_failures WHERE ts <= ?", (now - FAIL_WINDOW,))
        conn.execute("INSERT INTO pairing_failures (ts, account) VALUES (?, ?)", (now, account))
        audit.record(conn, now, "pairing:refused", account=account, detail="wrong code")


def poll(db: Database, ring: KeyRing, issuer: str, device_code: Any,
         now: float) -> dict[str, Any]:
    """The printer asks whether its code was confirmed; approved answers come once."""
    if not isinstance(device_code, str) or len(device_code) > 64:
        raise P3DError(ErrorCode.PAIRING_EXPIRED, "unknown or expired pairing request")
    key = _hash(device_code)
    with db.tx() as conn:
        row = conn.execute("SELECT * FROM pairings WHERE device_hash = ?", (key,)).fetchone()
        if row is None or row["expires_at"] <= now:
            conn.execute("DELETE FROM pairings WHERE device_hash = ?", (key,))
            raise P3DError(ErrorCode.PAIRING_EXPIRED, "unknown or expired pairing request")
        if row["approved_by"] is None:
            early = now - row["last_poll"] < POLL_INTERVAL
            conn.execute("UPDATE pairings SET last_poll = ? WHERE device_hash = ?", (now, key))
            return {"status": "slow_down" if early else "pending", "interval": POLL_INTERVAL}
        conn.execute("DELETE FROM pairings WHERE device_hash = ?", (key,))
        audit.record(conn, now, "pairing:completed", account=row["approved_by"],
                     printer=row["printer_id"])
    return {"status": "approved", "printerId": row["printer_id"],
            **ring.snapshot().published(issuer)}
