"""Secure print tokens: issue (sign, then seal to the printer), challenge, and redeem.

Issue records the token's jti as ISSUED before the token leaves the server. Redeem checks,
in order: the single-use server nonce (consumed even if anything later fails), the
signature, key id and issuer, audience and key binding against the printer as registered
*now*, expiry, the printer's proof of possession, and finally, in one transaction, flips
ISSUED -> REDEEMED with a conditional UPDATE (of two concurrent redeems exactly one wins)
and spends one print of the content's licence (never below zero). Nothing before that
transaction changes the token, so a failed attempt (say, the plug-in trying its own proof)
leaves it redeemable by the real printer.

Idempotent retry: the winning request's hash and its answer are stored with the token; the
very same request (same printer, signed blob, nonce, time and proof) sent again while the
download URL is valid gets the same answer, so a printer whose answer was lost can ask again
without it counting as a replay or a second print.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

import msgpack
from nacl.public import PublicKey
from nacl.signing import VerifyKey

from gotapi3dp.config import ContentsConfig
from gotapi3dp.wire import token as p3t
from gotapi3dp.wire.errors import ErrorCode, P3DError, code_name
from gotapi3dp.wire.ids import check_content_id, check_printer_id

from . import audit, catalog, downloads, printers
from .catalog import Content
from .db import Database
from .keys import KeyRing

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


def issue(db: Database, ring: KeyRing, config: ContentsConfig, account: str,
          printer_id: str, content_id: str, now: float) -> Issued:
    """A token for `account`'s content, readable only by `account`'s printer.

    A content whose licence is used up gets no new token (LICENCE_EXHAUSTED): the app learns
    it at connect, not after the print was sent. Issue reserves nothing; redeem spends.
    """
    check_printer_id(printer_id)
    check_content_id(content_id)
    content = catalog.get(db, account, content_id)
    printer = printers.find_owned(db, account, printer_id)
    if content.remaining == 0:
        raise P3DError(ErrorCode.LICENCE_EXHAUSTED, "no prints left on this content's licence")
    keys = ring.snapshot()
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


def redeem(db: Database, ring: KeyRing, config: ContentsConfig, req: RedeemRequest,
           now: float) -> dict[str, Any]:
    """Check everything, spend the token once, and hand back a download capability."""
    request_key = _request_key(req)
    stored = _stored_answer(db, config, request_key, req.printer_id, now)
    if stored is not None:
        return stored
    _consume_nonce(db, req.printer_id, req.nonce, now)
    claims = p3t.verify_signed(req.signed, ring.snapshot().verify_keys(now), config.issuer)
    printer = _check_audience(db, claims, req.printer_id)
    p3t.check_time(claims, now)
    _check_proof(req, printer.sign_key, now)
    return _spend(db, config, claims, printer, request_key, now)


def record_refusal(db: Database, printer_id: Any, err: P3DError, now: float) -> None:
    """Audit a refused redeem (own transaction: the refused one was rolled back)."""
    printer = printer_id if isinstance(printer_id, str) and len(printer_id) <= 64 else None
    with db.tx() as conn:
        audit.record(conn, now, "token:redeem-refused", printer=printer,
                     detail=f"{code_name(err.code)}")


def _request_key(req: RedeemRequest) -> bytes:
    """Identifies one exact redeem request (everything the printer signed, and the proof)."""
    return hashlib.sha256(msgpack.packb([req.printer_id, req.signed, req.nonce, req.iat,
                                         req.proof], use_bin_type=True)).digest()


def _stored_answer(db: Database, config: ContentsConfig, request_key: bytes, printer_id: str,
                   now: float) -> dict[str, Any] | None:
    """The answer already given to this very request, while its download URL is valid."""
    row = db.one("SELECT t.answer, t.redeemed_at FROM tokens t JOIN printers p ON "
                 "p.id = t.printer_id WHERE t.redeem_key = ? AND t.printer_id = ?",
                 (request_key, printer_id))
    if row is None or row["answer"] is None or now >= row["redeemed_at"] + config.download_ttl:
        return None
    return json.loads(row["answer"])  # type: ignore[no-any-return]


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
           request_key: bytes, now: float) -> dict[str, Any]:
    """ISSUED -> REDEEMED exactly once, one print of the licence, and the download
    capability, all in one transaction: any refusal rolls all of it back."""
    with db.tx() as conn:
        cur = conn.execute(
            "UPDATE tokens SET state = 'REDEEMED', redeemed_at = ?, redeem_key = ? WHERE jti = ? "
            "AND state = 'ISSUED' AND printer_id = ? AND content_id = ? AND account = ?",
            (int(now), request_key, claims.jti, printer.id, claims.cid, claims.sub))
        if cur.rowcount != 1:
            raise P3DError(ErrorCode.TOKEN_REPLAYED, "the token was already used")
        content = _spend_print(conn, claims)
        grant = downloads.grant(conn, config, printer.id, claims.cid, now)
        answer = {"download": grant, "content": content.to_map()}
        conn.execute("UPDATE tokens SET answer = ? WHERE jti = ?", (json.dumps(answer), claims.jti))
        audit.record(conn, now, "token:redeemed", account=claims.sub, printer=printer.id,
                     content=claims.cid, detail=f"remaining={content.remaining}")
    return answer


def _spend_print(conn: Any, claims: p3t.Claims) -> catalog.Content:
    """One print off the content's licence; a conditional UPDATE, so never below zero."""
    row = conn.execute("SELECT sha256 FROM contents WHERE id = ? AND owner = ?",
                       (claims.cid, claims.sub)).fetchone()
    if row is None or not hmac.compare_digest(row["sha256"], claims.chash):
        raise P3DError(ErrorCode.CONTENT_NOT_FOUND, "the token's content no longer exists")
    cur = conn.execute("UPDATE contents SET prints_used = prints_used + 1 WHERE id = ? AND "
                       "(prints = 0 OR prints_used < prints)", (claims.cid,))
    if cur.rowcount != 1:
        raise P3DError(ErrorCode.LICENCE_EXHAUSTED, "no prints left on this content's licence")
    return catalog.Content.from_row(
        conn.execute("SELECT * FROM contents WHERE id = ?", (claims.cid,)).fetchone())
