"""The secure print token ("p3t1"): claims, sign-then-seal, and the proofs that redeem it.

Format (see docs/SECURITY.md):
    signed = kid (8 bytes) || Ed25519 signature (64) || claims (canonical msgpack map)
        where the signature covers DST_TOKEN || claims
    token  = "p3t1." + base64url(SealedBox(printer X25519 key).encrypt(signed))

The contents server signs and seals; the printer unseals, checks, and presents `signed` with
a proof of possession signed by its own Ed25519 key over a fresh server nonce. The plug-in
only ever carries `token`, which it cannot open. Checks raise `P3DError` with a distinct code
each, in the order: unreadable -> kid -> signature -> schema -> type -> issuer -> audience
-> expiry / not-yet-valid. Pairing and key rotation use two more signed messages defined here:
the printer's pairing request (`pair_message`) and the contents server's key set
(`keyset_message`), each under its own domain-separation prefix.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import msgpack
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey, VerifyKey

from .errors import ErrorCode, P3DError
from .ids import CONTENT_ID_RE, PRINTER_ID_RE
from .intent import IntentError, unpack_strict

TOKEN_PREFIX = "p3t1."
TOKEN_TYPE = "p3t+print"
TOKEN_VERSION = 1
DST_TOKEN = b"P3T-v1/print-token\x00"
DST_POP = b"P3T-v1/redeem-pop\x00"
DST_DOWNLOAD = b"P3T-v1/download\x00"
DST_PAIR = b"P3T-v1/pair-request\x00"
DST_KEYSET = b"P3T-v1/key-set\x00"
KID_BYTES = 8
SIG_BYTES = 64
JTI_BYTES = 16
MAX_TOKEN_TTL = 600       # seconds; the contents server never issues longer
CLOCK_SKEW = 60           # seconds allowed between printer and contents server clocks
MAX_TOKEN_CHARS = 4096
MAX_SIGNED_BYTES = 2048
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    """Strict base64url decode; raises ValueError on anything else."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def key_id(public_key: bytes) -> str:
    """Key id of a signing key: first 8 bytes of BLAKE2b(pk), hex."""
    return hashlib.blake2b(public_key, digest_size=KID_BYTES).hexdigest()


def key_hash(public_key: bytes) -> bytes:
    """Confirmation hash binding a token to the printer's signing key (`cnf`)."""
    return hashlib.blake2b(public_key, digest_size=32).digest()


def fingerprint(*public_keys: bytes) -> str:
    """Short human-comparable fingerprint of a printer's keys, e.g. `3F2A-91C0-...`."""
    digest = hashlib.sha256(b"".join(public_keys)).hexdigest()[:20].upper()
    return "-".join(digest[i:i + 4] for i in range(0, 20, 4))


@dataclass(frozen=True)
class Claims:
    """What the contents server asserts. Every field is signed."""

    iss: str            # issuer (contents server name)
    kid: str            # signing key id (hex)
    aud: str            # printer id
    cnf: bytes          # key_hash(printer's Ed25519 public key)
    sub: str            # account id at the contents server
    cid: str            # content id
    chash: str          # SHA-256 of the content bytes, hex
    jti: bytes          # 128-bit token id
    iat: int            # issued at (unix seconds)
    exp: int            # expires at (unix seconds)
    typ: str = TOKEN_TYPE
    v: int = TOKEN_VERSION

    def pack(self) -> bytes:
        """Canonical encoding: msgpack map with sorted keys, bin for bytes."""
        return msgpack.packb(dict(sorted(asdict(self).items())), use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes) -> "Claims":
        try:
            m = unpack_strict(data, MAX_SIGNED_BYTES)
        except IntentError as exc:
            raise P3DError(ErrorCode.TOKEN_MALFORMED, f"token claims unreadable: {exc}") from None
        return cls.from_map(m)

    @classmethod
    def from_map(cls, m: Any) -> "Claims":
        bad = P3DError(ErrorCode.TOKEN_MALFORMED, "token claims do not match the schema")
        if not isinstance(m, dict) or set(m) != _CLAIM_TYPES.keys():
            raise bad
        for key, kind in _CLAIM_TYPES.items():
            value = m[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise bad
        if (len(m["jti"]) != JTI_BYTES or len(m["cnf"]) != 32
                or not _HEX64.fullmatch(m["chash"]) or not CONTENT_ID_RE.fullmatch(m["cid"])
                or not PRINTER_ID_RE.fullmatch(m["aud"])
                or not (0 <= m["iat"] < 2**40 and 0 <= m["exp"] < 2**40)):
            raise bad
        return cls(**m)


_CLAIM_TYPES: dict[str, type] = {
    "iss": str, "kid": str, "aud": str, "cnf": bytes, "sub": str, "cid": str, "chash": str,
    "jti": bytes, "iat": int, "exp": int, "typ": str, "v": int,
}


def sign_claims(claims: Claims, signing_key: SigningKey) -> bytes:
    """Sign claims under the domain-separation prefix; returns the `signed` blob."""
    kid = bytes.fromhex(claims.kid)
    if kid != bytes.fromhex(key_id(bytes(signing_key.verify_key))):
        raise ValueError("claims.kid does not name the signing key")
    body = claims.pack()
    signature = signing_key.sign(DST_TOKEN + body).signature
    return kid + signature + body


def seal(signed: bytes, printer_box_key: PublicKey) -> str:
    """Seal the signed blob to the printer's X25519 key: the opaque token the plug-in carries."""
    return TOKEN_PREFIX + b64e(SealedBox(printer_box_key).encrypt(signed))


def unseal(token: str, box_key: PrivateKey) -> bytes:
    """Open the token with the printer's X25519 private key."""
    unreadable = P3DError(ErrorCode.TOKEN_UNREADABLE, "the token cannot be opened by this printer")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.startswith(TOKEN_PREFIX):
        raise unreadable
    try:
        return SealedBox(box_key).decrypt(b64d(token[len(TOKEN_PREFIX):]))
    except (CryptoError, ValueError):
        raise unreadable from None


def verify_signed(signed: bytes, keys: Mapping[str, VerifyKey], issuer: str) -> Claims:
    """Check kid, signature, schema, type and issuer of a `signed` blob against pinned keys.

    `issuer` is the one issuer the caller trusts; every verifier must name it, so no caller
    can forget the check. A wrong issuer on a trusted key is TOKEN_KID (the key is not
    trusted *for that issuer*).
    """
    if not isinstance(signed, bytes) or not KID_BYTES + SIG_BYTES < len(signed) <= MAX_SIGNED_BYTES:
        raise P3DError(ErrorCode.TOKEN_MALFORMED, "signed token has a wrong length")
    kid = signed[:KID_BYTES].hex()
    key = keys.get(kid)
    if key is None:
        raise P3DError(ErrorCode.TOKEN_KID, f"token signed by unknown key id {kid}")
    signature, body = signed[KID_BYTES:KID_BYTES + SIG_BYTES], signed[KID_BYTES + SIG_BYTES:]
    try:
        key.verify(DST_TOKEN + body, signature)
    except BadSignatureError:
        raise P3DError(ErrorCode.TOKEN_SIGNATURE, "token signature is not valid") from None
    claims = Claims.unpack(body)
    if claims.typ != TOKEN_TYPE or claims.v != TOKEN_VERSION:
        raise P3DError(ErrorCode.TOKEN_TYPE, f"not a print token ({claims.typ} v{claims.v})")
    if claims.kid != kid:
        raise P3DError(ErrorCode.TOKEN_MALFORMED, "token key id does not match its claims")
    if not hmac.compare_digest(claims.iss.encode(), issuer.encode()):
        raise P3DError(ErrorCode.TOKEN_KID, f"token issuer {claims.iss[:64]!r} is not trusted")
    return claims


def check_audience(claims: Claims, printer_id: str, printer_sign_key: bytes) -> None:
    if claims.aud != printer_id or not hmac.compare_digest(claims.cnf, key_hash(printer_sign_key)):
        raise P3DError(ErrorCode.TOKEN_AUDIENCE, "the token was issued for another printer")


def check_time(claims: Claims, now: float, skew: int = CLOCK_SKEW) -> None:
    if claims.exp - claims.iat > MAX_TOKEN_TTL or claims.exp <= claims.iat:
        raise P3DError(ErrorCode.TOKEN_MALFORMED, "token lifetime is out of bounds")
    if now >= claims.exp + skew:
        raise P3DError(ErrorCode.TOKEN_EXPIRED, "the token has expired")
    if claims.iat > now + skew:
        raise P3DError(ErrorCode.TOKEN_NOT_YET_VALID, "the token is not valid yet (clock skew?)")


def signed_hash(signed: bytes) -> bytes:
    return hashlib.sha256(signed).digest()


def job_id_for(token: str) -> str:
    """A job id derived from the token: one token can never make two jobs."""
    return hashlib.blake2b(token.encode("ascii", "replace"), digest_size=16).hexdigest()


def pop_message(signed: bytes, nonce: bytes, method: str, url: str, iat: int) -> bytes:
    """What the printer signs to prove it holds the key the token names (DPoP-like)."""
    return DST_POP + msgpack.packb([signed_hash(signed), nonce, method.upper(), url, iat],
                                   use_bin_type=True)


def download_message(method: str, path: str, printer_id: str, iat: int) -> bytes:
    """What the printer signs on every download request."""
    return DST_DOWNLOAD + msgpack.packb([method.upper(), path, printer_id, iat], use_bin_type=True)


def pair_message(printer_id: str, sign_key: bytes, box_key: bytes, iat: int) -> bytes:
    """What the printer signs when it asks to be paired: it holds the signing key it names."""
    return DST_PAIR + msgpack.packb([printer_id, sign_key, box_key, iat], use_bin_type=True)


def keyset_message(issuer: str, keys: list[dict[str, str]]) -> bytes:
    """What the contents server signs when it publishes its keys (rotation continuity)."""
    canonical = sorted((k["kid"], k["publicKey"]) for k in keys)
    return DST_KEYSET + msgpack.packb([issuer, canonical], use_bin_type=True)


def verify_detached(key: VerifyKey, message: bytes, signature: bytes) -> bool:
    try:
        key.verify(message, signature)
        return True
    except (BadSignatureError, ValueError, TypeError):
        return False
