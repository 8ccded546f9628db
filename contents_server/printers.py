"""The printer registry: which printer (by its public keys) is paired with which account."""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.ids import check_printer_id
from gotapi3dp.wire.token import b64d

from . import audit
from .db import Database

MAX_NAME_CHARS = 100


@dataclass(frozen=True)
class Printer:
    id: str
    owner: str
    name: str
    sign_key: bytes     # Ed25519 public key: PoP and download proofs, token `cnf`
    box_key: bytes      # X25519 public key: tokens are sealed to it

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Printer":
        return cls(row["id"], row["owner"], row["name"], bytes(row["sign_key"]),
                   bytes(row["box_key"]))


@dataclass(frozen=True)
class Registration:
    """A checked `POST /api/printers` body."""

    printer_id: str
    name: str
    sign_key: bytes
    box_key: bytes

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "Registration":
        printer_id = check_printer_id(body.get("printerId"))
        name = body.get("name", printer_id)
        if (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS
                or not name.isprintable()):
            raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                           f"name must be 1-{MAX_NAME_CHARS} printable characters")
        return cls(printer_id, name, _public_key(body, "signKey"), _public_key(body, "boxKey"))


def _public_key(body: dict[str, Any], field: str) -> bytes:
    try:
        key = b64d(body.get(field))  # type: ignore[arg-type]
    except ValueError:
        key = b""
    if len(key) != 32 or key == bytes(32):
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                       f"{field} must be a 32-byte public key in base64url")
    return key


def register(db: Database, owner: str, reg: Registration, now: float) -> bool:
    """Pair a printer with `owner`; the same owner re-registering replaces the keys.

    Returns True when the printer is new. A printer id held by another account is a
    conflict (409): pairing must never silently move a printer between accounts.
    """
    with db.tx() as conn:
        return register_in(conn, owner, reg, now)


def register_in(conn: sqlite3.Connection, owner: str, reg: Registration, now: float) -> bool:
    """`register` inside the caller's transaction (pairing by code uses it)."""
    row = conn.execute("SELECT owner FROM printers WHERE id = ?", (reg.printer_id,)).fetchone()
    if row is not None and row["owner"] != owner:
        raise P3DError(ErrorCode.PRINTER_CONFLICT,
                       "this printer id is registered to another account")
    if row is None:
        conn.execute("INSERT INTO printers (id, owner, name, sign_key, box_key, created) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (reg.printer_id, owner, reg.name, reg.sign_key, reg.box_key, int(now)))
    else:
        conn.execute("UPDATE printers SET name = ?, sign_key = ?, box_key = ? WHERE id = ?",
                     (reg.name, reg.sign_key, reg.box_key, reg.printer_id))
    audit.record(conn, now, "printer:registered" if row is None else "printer:rekeyed",
                 account=owner, printer=reg.printer_id)
    return row is None


def unregister(db: Database, owner: str, printer_id: str, now: float) -> None:
    """Unpair: its keys go, and with them its nonces and download capabilities (ON DELETE
    CASCADE) and every token still outstanding for it, so none of those can be redeemed,
    not even after the same printer is paired again."""
    check_printer_id(printer_id)
    with db.tx() as conn:
        cur = conn.execute("DELETE FROM printers WHERE id = ? AND owner = ?", (printer_id, owner))
        if cur.rowcount != 1:
            raise P3DError(ErrorCode.PRINTER_NOT_REGISTERED,
                           f"printer {printer_id} is not registered to this account")
        gone = conn.execute("DELETE FROM tokens WHERE printer_id = ? AND state = 'ISSUED'",
                            (printer_id,)).rowcount
        audit.record(conn, now, "printer:unregistered", account=owner, printer=printer_id,
                     detail=f"tokens revoked={gone}")


def find(db: Database, printer_id: str) -> Printer | None:
    row = db.one("SELECT * FROM printers WHERE id = ?", (printer_id,))
    return Printer.from_row(row) if row else None


def find_owned(db: Database, owner: str, printer_id: str) -> Printer:
    printer = find(db, printer_id)
    if printer is None or printer.owner != owner:
        raise P3DError(ErrorCode.PRINTER_NOT_REGISTERED,
                       f"printer {printer_id} is not registered to this account")
    return printer
