"""Secure print tokens: issue (sign, then seal to the printer), challenge, and redeem.

Issue records the token's jti as ISSUED before the token leaves the server. Redeem checks,
in order: the single-use server nonce (consumed even if anything later fails), the
signature and key id, audience and key binding against the printer as registered *now*,
expiry, the printer's proof of possession, and finally flips ISSUED -> REDEEMED with one
conditional UPDATE, so of two concurrent redeems exactly one wins. Nothing before that
UPDATE changes the token, so a failed attempt (say, the plug-in trying its own proof)
leaves it redeemable by the real printer.
"""
from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from nacl.public import PublicKey
from nacl.signing import VerifyKey

from gotapi3dp.config import ContentsConfig
from gotapi3dp.wire import token as p3t
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.ids import check_content_id, check_printer_id

from . import audit, catalog, downloads, printers
from .catalog import Content
from .db import Database
from .keys import ServerKeys

NONCE_BYTES = 32
MAX_NONCES_PER_PRINTER = 32
REDEEM_PATH = "/api/redeem"


@dataclass(frozen=True)
class Issued:
    token: str
    expires_at: int
    content: Content

    def to_map(self) -> dict[str, Any]:
        return {"token": self.token, "expiresAt": self.expires_at,
                "content": self.content.to_map()}


@dataclass(frozen=True)
class RedeemRequest:
    """A checked `POST /api/redeem` body (bytes decoded, types fixed)."""

    printer_id: str
    signed: bytes
    nonce: bytes
    iat: int
    proof: bytes

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "RedeemRequest":
        printer_id = check_printer_id(body.get("printerId"))
        iat = body.get("iat")
        if not isinstance(iat, int) or isinstance(iat, bool) or not 0 <= iat < 2**40:
            raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, "iat must be unix seconds")
        return cls(printer_id, _b64_field(body, "signed", ErrorCode.TOKEN_MALFORMED),
                   _b64_field(body, "nonce", ErrorCode.POP_NONCE), iat,
                   _b64_field(body, "proof", ErrorCode.POP_INVALID))


def _b64_field(body: dict[str, Any], field: str, code: ErrorCode) -> bytes:
    value = body.get(field)
    try:
        if not isinstance(value, str) or len(value) > p3t.MAX_TOKEN_CHARS:
            raise ValueError(field)
        return p3t.b64d(value)
    except ValueError:
        raise P3DError(code, f"{field} must be base64url") from None


def issue(db: Database, keys: ServerKeys, config: ContentsConfig, account: str,
          printer_id: str, content_id: str, now: float) -> Issued:
    """A token for `account`'s content, readable only by `account`'s printer."""
    check_printer_id(printer_id)
    check_content_id(content_id)
    content = catalog.get(db, account, content_id)
    printer = printers.find_owned(db, account, printer_id)
    iat = int(now)
    claims = p3t.Claims(
        iss=config.issuer, kid=keys.kid, aud=printer.id, cnf=p3t.key_hash(printer.sign_key),
        sub=account, cid=content.id, chash=content.sha256, jti=secrets.token_bytes(p3t.JTI_BYTES),
        iat=iat, exp=iat + max(1, min(config.token_ttl, p3t.MAX_TOKEN_TTL)))
    token = p3t.seal(p3t.sign_claims(claims, keys.signing_key), PublicKey(printer.box_key))
    with db.tx() as conn:
        conn.execute("INSERT INTO tokens (jti, printer_id, content_id, account, state, issued_at, "
                     "expires_at) VALUES (?, ?, ?, ?, 'ISSUED', ?, ?)",
                     (claims.jti, printer.id, content.id, account, claims.iat, claims.exp))
        audit.record(conn, now, "token:issued", account=account, printer=printer.id,
                     content=content.id)
    return Issued(token, claims.exp, content)


def challenge(db: Database, config: ContentsConfig, printer_id: str,
              now: float) -> dict[str, Any]:
    """A fresh single-use nonce for a registered printer's next redeem."""
    check_printer_id(printer_id)
    if printers.find(db, printer_id) is None:
        raise P3DError(ErrorCode.PRINTER_NOT_REGISTERED, f"printer {printer_id} is not registered")
    nonce = secrets.token_bytes(NONCE_BYTES)
    expires = now + config.nonce_ttl
    with db.tx() as conn:
        conn.execute("DELETE FROM nonces WHERE expires_at <= ? OR used = 1", (now,))
        conn.execute("DELETE FROM nonces WHERE printer_id = ? AND nonce NOT IN (SELECT nonce "
                     "FROM nonces WHERE printer_id = ? ORDER BY expires_at DESC LIMIT ?)",
                     (printer_id, printer_id, MAX_NONCES_PER_PRINTER - 1))
        conn.execute("INSERT INTO nonces (nonce, printer_id, expires_at) VALUES (?, ?, ?)",
                     (nonce, printer_id, expires))
    return {"nonce": p3t.b64e(nonce), "expiresAt": int(expires)}


def redeem(db: Database, keys: ServerKeys, config: ContentsConfig, req: RedeemRequest,
           now: float) -> dict[str, Any]:
    """Check everything, spend the token once, and hand back a download capability."""
    _consume_nonce(db, req.printer_id, req.nonce, now)
    claims = p3t.verify_signed(req.signed, keys.verify_keys())
    if claims.iss != config.issuer:
        raise P3DError(ErrorCode.TOKEN_MALFORMED, "token issuer is not this server")
    printer = _check_audience(db, claims, req.printer_id)
    p3t.check_time(claims, now)
    _check_proof(req, printer.sign_key, now)
    return _spend(db, config, claims, printer, now)


def _consume_nonce(db: Database, printer_id: str, nonce: bytes, now: float) -> None:
    with db.tx() as conn:
        cur = conn.execute("UPDATE nonces SET used = 1 WHERE nonce = ? AND printer_id = ? "
                           "AND used = 0 AND expires_at > ?", (nonce, printer_id, now))
    if cur.rowcount != 1:
        raise P3DError(ErrorCode.POP_NONCE, "unknown, used or expired redeem nonce")


def _check_audience(db: Database, claims: p3t.Claims, printer_id: str) -> printers.Printer:
    """The token names this printer, whose registered key and account still match it."""
    if claims.aud != printer_id:
        raise P3DError(ErrorCode.TOKEN_AUDIENCE, "the token was issued for another printer")
    printer = printers.find(db, printer_id)
    if printer is None:
        raise P3DError(ErrorCode.PRINTER_NOT_REGISTERED, f"printer {printer_id} is not registered")
    p3t.check_audience(claims, printer_id, printer.sign_key)
    if printer.owner != claims.sub:
        raise P3DError(ErrorCode.TOKEN_AUDIENCE,
                       "the printer is no longer paired with this account")
    return printer


def _check_proof(req: RedeemRequest, sign_key: bytes, now: float) -> None:
    if abs(now - req.iat) > p3t.CLOCK_SKEW:
        raise P3DError(ErrorCode.POP_INVALID, "proof time is too far from the server's clock")
    message = p3t.pop_message(req.signed, req.nonce, "POST", REDEEM_PATH, req.iat)
    if not p3t.verify_detached(VerifyKey(sign_key), message, req.proof):
        raise P3DError(ErrorCode.POP_INVALID, "proof of possession does not verify")


def _spend(db: Database, config: ContentsConfig, claims: p3t.Claims, printer: printers.Printer,
           now: float) -> dict[str, Any]:
    """ISSUED -> REDEEMED exactly once, and the download capability, in one transaction."""
    with db.tx() as conn:
        cur = conn.execute(
            "UPDATE tokens SET state = 'REDEEMED', redeemed_at = ? WHERE jti = ? AND state = "
            "'ISSUED' AND printer_id = ? AND content_id = ? AND account = ?",
            (int(now), claims.jti, printer.id, claims.cid, claims.sub))
        if cur.rowcount != 1:
            raise P3DError(ErrorCode.TOKEN_REPLAYED, "the token was already used")
        row = conn.execute("SELECT * FROM contents WHERE id = ? AND owner = ?",
                           (claims.cid, claims.sub)).fetchone()
        if row is None or not hmac.compare_digest(row["sha256"], claims.chash):
            raise P3DError(ErrorCode.CONTENT_NOT_FOUND, "the token's content no longer exists")
        grant = downloads.grant(conn, config, printer.id, claims.cid, now)
        audit.record(conn, now, "token:redeemed", account=claims.sub, printer=printer.id,
                     content=claims.cid)
    content = catalog.Content.from_row(row)
    return {"download": grant, "content": content.to_map()}
