"""Secrets out of what the bus tap shows: access tokens, sealed tokens, keys, passwords.

The bus applies `redact_body` to every Intent it copies to its tap, so a plain ZeroMQ SUB on
the tap endpoint never sees a secret (the endpoint has no authentication of its own); the
`bus tap` client applies `redact` again to what it decodes, in case it is tapping a bus that
does not. A secret becomes `<redacted N chars id:xxxxxxxx>` (`bytes` for binary values,
the msgpack size for maps and lists), the id a keyed hash (HMAC-SHA256 under a key drawn at
each process start): enough to tell two values apart in one run of the bus, not to use one,
nor to find a short one (a PIN) by trying every value against a plain hash. A value that
already is such a marker is left as it is, so redacting twice changes nothing.

Secret by name: any key whose lower-cased name contains `token`, `key`, `secret`,
`password`, `passwd`, `passphrase`, `credential`, `cookie`, `auth` or `signature`, or one of
whose words (camelCase or snake_case) is `pin`, `pwd`, `otp`, `session` or `sid` (its whole
value, whatever its type, nested maps included); and by shape: a sealed token (its prefix)
anywhere in a string or at the start of bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
from typing import Any

import msgpack

from gotapi3dp.wire.intent import IntentError, decode, encode
from gotapi3dp.wire.token import TOKEN_PREFIX

SECRET_PARTS = ("token", "key", "secret", "password", "passwd", "passphrase", "credential",
                "cookie", "auth", "signature")
SECRET_WORDS = frozenset({"pin", "pwd", "otp", "session", "sid"})  # whole words only: not "spin"
MARKER = "<redacted "
_TOKEN_PREFIX_BYTES = TOKEN_PREFIX.encode()
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_SEALED = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_.~=+/-]*")
_ID_KEY = secrets.token_bytes(16)   # this process's: ids match within one run, never across


def is_secret(name: str) -> bool:
    low = name.lower()
    if any(part in low for part in SECRET_PARTS):
        return True
    return any(word.lower() in SECRET_WORDS for word in _WORD.findall(name))


def redact_value(value: Any) -> str:
    if isinstance(value, str):
        if value.startswith(MARKER):
            return value
        raw, unit = value.encode("utf-8", "replace"), f"{len(value)} chars"
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        unit = f"{len(raw)} bytes"
    else:
        raw = msgpack.packb(value, use_bin_type=True, default=repr)
        unit = f"{len(raw)} bytes of {type(value).__name__}"
    return f"{MARKER}{unit} id:{hmac.new(_ID_KEY, raw, hashlib.sha256).hexdigest()[:8]}>"


def redact(value: Any, name: str = "") -> Any:
    """A copy of a decoded Intent map (or any part of one) with every secret replaced."""
    if name and value is not None and is_secret(name):
        return redact_value(value)
    if isinstance(value, dict):
        return {k: redact(v, k if isinstance(k, str) else "") for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and TOKEN_PREFIX in value:
        if value.startswith(TOKEN_PREFIX):
            return redact_value(value)
        return _SEALED.sub(lambda m: redact_value(m.group()), value)   # "see p3t1.AAAA"
    if isinstance(value, (bytes, bytearray)) and bytes(value).startswith(_TOKEN_PREFIX_BYTES):
        return redact_value(value)
    return value


def redact_body(body: bytes) -> bytes:
    """An Intent body as the tap may publish it: the same Intent, secrets replaced; a body
    that does not decode as an Intent is replaced by an empty one (the tap then shows it as
    undecodable), since nothing in it can be checked for secrets."""
    try:
        intent = decode(body)
    except IntentError:
        return b""
    params = redact(intent.params)
    key = intent.idempotency_key
    if params == intent.params and key is None:
        return body
    shown = None if key is None else redact_value(key)
    try:
        return encode(dataclasses.replace(intent, params=params, idempotency_key=shown))
    except IntentError:   # the markers made it too large: show the header alone
        return encode(dataclasses.replace(intent, params={}, idempotency_key=None))
