"""The secure token format (gotapi3dp/wire/token.py): sign, seal, open, verify, and refusals."""
from __future__ import annotations

import os
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from gotapi3dp.wire import token as tk
from gotapi3dp.wire.errors import ErrorCode, P3DError

CS = SigningKey(b"\x01" * 32)
PRINTER_SIGN = SigningKey(b"\x02" * 32)
PRINTER_BOX = PrivateKey(b"\x03" * 32)
NOW = 1_800_000_000


def claims(**changes: object) -> tk.Claims:
    base = tk.Claims(iss="cs", kid=tk.key_id(bytes(CS.verify_key)), aud="printer-1",
                     cnf=tk.key_hash(bytes(PRINTER_SIGN.verify_key)), sub="acct", cid="content_1",
                     chash="ab" * 32, jti=b"\x07" * 16, iat=NOW, exp=NOW + 600)
    return replace(base, **changes)


def make(c: tk.Claims | None = None, signer: SigningKey = CS) -> str:
    return tk.seal(tk.sign_claims(c or claims(), signer), PRINTER_BOX.public_key)


def open_and_check(token: str, now: float = NOW + 1) -> tk.Claims:
    signed = tk.unseal(token, PRINTER_BOX)
    c = tk.verify_signed(signed, {tk.key_id(bytes(CS.verify_key)): CS.verify_key}, "cs")
    tk.check_audience(c, "printer-1", bytes(PRINTER_SIGN.verify_key))
    tk.check_time(c, now)
    return c


def code_of(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(P3DError) as err:
        fn(*args)
    return err.value.code


def test_round_trip() -> None:
    token = make()
    assert token.startswith(tk.TOKEN_PREFIX)
    assert open_and_check(token) == claims()


def test_claims_are_not_visible_in_the_token() -> None:
    token = make()
    for secret in (b"printer-1", b"content_1", b"\x07" * 16):
        assert tk.b64e(secret)[:8] not in token
    assert b"content_1" not in tk.b64d(token[len(tk.TOKEN_PREFIX):])


def test_sealed_to_another_printer_is_unreadable() -> None:
    other = tk.seal(tk.sign_claims(claims(), CS), PrivateKey.generate().public_key)
    assert code_of(open_and_check, other) == ErrorCode.TOKEN_UNREADABLE


def test_signed_by_an_unknown_key() -> None:
    mallory = SigningKey.generate()
    token = make(claims(kid=tk.key_id(bytes(mallory.verify_key))), mallory)
    assert code_of(open_and_check, token) == ErrorCode.TOKEN_KID


def test_right_kid_wrong_key_fails_the_signature() -> None:
    body = claims().pack()
    signed = bytes.fromhex(claims().kid) + SigningKey.generate().sign(tk.DST_TOKEN + body).signature + body
    token = tk.seal(signed, PRINTER_BOX.public_key)
    assert code_of(open_and_check, token) == ErrorCode.TOKEN_SIGNATURE


def test_signature_without_domain_prefix_is_refused() -> None:
    body = claims().pack()
    signed = bytes.fromhex(claims().kid) + CS.sign(body).signature + body
    assert code_of(open_and_check, tk.seal(signed, PRINTER_BOX.public_key)) == ErrorCode.TOKEN_SIGNATURE


def test_other_audience_and_other_key() -> None:
    assert code_of(open_and_check, make(claims(aud="printer-2"))) == ErrorCode.TOKEN_AUDIENCE
    assert code_of(open_and_check, make(claims(cnf=b"\x00" * 32))) == ErrorCode.TOKEN_AUDIENCE


def test_expiry_with_clock_skew() -> None:
    token = make()
    open_and_check(token, now=NOW + 600 + tk.CLOCK_SKEW - 1)
    assert code_of(open_and_check, token, NOW + 600 + tk.CLOCK_SKEW) == ErrorCode.TOKEN_EXPIRED
    assert code_of(open_and_check, token, NOW - tk.CLOCK_SKEW - 1) == ErrorCode.TOKEN_NOT_YET_VALID


def test_lifetime_longer_than_ten_minutes_is_malformed() -> None:
    assert code_of(open_and_check, make(claims(exp=NOW + 3600))) == ErrorCode.TOKEN_MALFORMED


def test_wrong_type_is_refused() -> None:
    assert code_of(open_and_check, make(claims(typ="p3t+download"))) == ErrorCode.TOKEN_TYPE
    assert code_of(open_and_check, make(claims(v=2))) == ErrorCode.TOKEN_TYPE


@pytest.mark.parametrize("change", [
    {"cid": "../etc/passwd"}, {"aud": "a b"}, {"jti": b"short"}, {"chash": "xyz"}, {"iat": -1},
])
def test_schema_violations_are_malformed(change: dict[str, object]) -> None:
    assert code_of(open_and_check, make(claims(**change))) == ErrorCode.TOKEN_MALFORMED


def test_extra_or_missing_claims_are_malformed() -> None:
    m = dict(sorted(vars(claims()).items()))
    for bad in ({**m, "admin": True}, {k: v for k, v in m.items() if k != "exp"},
                {**m, "iat": True}, {**m, "exp": 2.5}):
        body = msgpack.packb(bad, use_bin_type=True)
        signed = bytes.fromhex(claims().kid) + CS.sign(tk.DST_TOKEN + body).signature + body
        assert code_of(open_and_check, tk.seal(signed, PRINTER_BOX.public_key)) == ErrorCode.TOKEN_MALFORMED


def test_sign_claims_refuses_a_kid_of_another_key() -> None:
    with pytest.raises(ValueError):
        tk.sign_claims(claims(kid="00" * 8), CS)


@settings(max_examples=60, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_refused(position: int, bit: int) -> None:
    raw = bytearray(tk.b64d(make()[len(tk.TOKEN_PREFIX):]))
    raw[position % len(raw)] ^= 1 << bit
    with pytest.raises(P3DError) as err:
        open_and_check(tk.TOKEN_PREFIX + tk.b64e(bytes(raw)))
    assert err.value.code == ErrorCode.TOKEN_UNREADABLE


@pytest.mark.parametrize("junk", ["", "p3t1.", "p3t1.!!!", "p3t2." + "A" * 100, "p3t1." + "A" * 5000, 42])
def test_garbage_tokens_are_unreadable(junk: object) -> None:
    assert code_of(tk.unseal, junk, PRINTER_BOX) == ErrorCode.TOKEN_UNREADABLE


def test_proof_messages_bind_every_input() -> None:
    signed = tk.sign_claims(claims(), CS)
    base = tk.pop_message(signed, b"n" * 16, "POST", "/api/redeem", NOW)
    assert base.startswith(tk.DST_POP)
    variants = [tk.pop_message(signed + b"x", b"n" * 16, "POST", "/api/redeem", NOW),
                tk.pop_message(signed, b"m" * 16, "POST", "/api/redeem", NOW),
                tk.pop_message(signed, b"n" * 16, "GET", "/api/redeem", NOW),
                tk.pop_message(signed, b"n" * 16, "POST", "/api/other", NOW),
                tk.pop_message(signed, b"n" * 16, "POST", "/api/redeem", NOW + 1)]
    assert len({base, *variants}) == 6
    sig = PRINTER_SIGN.sign(base).signature
    assert tk.verify_detached(PRINTER_SIGN.verify_key, base, sig)
    assert not tk.verify_detached(PRINTER_SIGN.verify_key, variants[0], sig)
    assert tk.download_message("GET", "/a", "p", 1) != tk.download_message("GET", "/b", "p", 1)


def test_job_id_is_stable_per_token() -> None:
    a, b = make(), make(claims(jti=os.urandom(16)))
    assert tk.job_id_for(a) == tk.job_id_for(a) != tk.job_id_for(b)
    assert len(tk.job_id_for(a)) == 32


def test_fingerprint_is_short_and_key_bound() -> None:
    f = tk.fingerprint(bytes(PRINTER_SIGN.verify_key), bytes(PRINTER_BOX.public_key))
    assert len(f) == 24 and f.count("-") == 4
    assert f != tk.fingerprint(bytes(CS.verify_key), bytes(PRINTER_BOX.public_key))
