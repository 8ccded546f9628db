"""open_token's checks in order, and redemption with a proof of possession."""
from __future__ import annotations

import time

import pytest
import requests
from nacl.public import PublicKey
from nacl.signing import SigningKey

from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.token import TOKEN_PREFIX, key_id, seal, unseal
from printer.authenticate import authenticate, check_token, record_redeemed, redeem
from printer.jobs import JobStore
from printer.keys import load_or_create
from printer.trust import trust_from_map

from .test_printer_helpers import FakeContents


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def _mint(cs, keys, **kw):
    return cs.mint(keys.printer_id, keys.sign_public, keys.box_public, **kw)


def open_token(token, keys, trust, store, now=None):
    """check_token, then burn the jti (what authenticate does around the redeem)."""
    checked = check_token(token, keys, trust, now)
    record_redeemed(store, checked.claims)
    return checked.signed, checked.claims


def _code(fn) -> int:
    with pytest.raises(P3DError) as err:
        fn()
    return err.value.code


def test_valid_token_opens(cs, keys, store):
    trust = trust_from_map(cs.trust_map())
    signed, claims = open_token(_mint(cs, keys), keys, trust, store)
    assert claims.aud == "printer-1" and claims.chash == cs.sha256 and claims.cid == "model-1"
    assert signed[:8].hex() == cs.kid


def test_sealed_to_another_printer_is_unreadable(cs, keys, store, tmp_path):
    other = load_or_create(tmp_path / "other", "printer-2", "P2")
    token = cs.mint("printer-1", keys.sign_public, other.box_public)
    trust = trust_from_map(cs.trust_map())
    assert _code(lambda: open_token(token, keys, trust, store)) == ErrorCode.TOKEN_UNREADABLE
    assert _code(lambda: open_token("garbage", keys, trust, store)) == ErrorCode.TOKEN_UNREADABLE
    assert _code(lambda: open_token(TOKEN_PREFIX + "AAAA", keys, trust, store)) \
        == ErrorCode.TOKEN_UNREADABLE


def test_no_trust_pinned(cs, keys, store):
    assert _code(lambda: open_token(_mint(cs, keys), keys, None, store)) \
        == ErrorCode.PRINTER_NOT_TRUSTED


def test_signed_by_another_key(cs, keys, store):
    token = _mint(cs, keys, signer=SigningKey.generate())
    trust = trust_from_map(cs.trust_map())
    assert _code(lambda: open_token(token, keys, trust, store)) == ErrorCode.TOKEN_KID


def test_other_issuer_on_a_trusted_key(cs, keys, store):
    trust = trust_from_map(cs.trust_map())
    token = _mint(cs, keys, iss="someone-else")
    assert _code(lambda: open_token(token, keys, trust, store)) == ErrorCode.TOKEN_KID


def test_resealed_to_us_but_for_another_printer(cs, keys, store, tmp_path):
    other = load_or_create(tmp_path / "other", "printer-2", "P2")
    # printer-2 opens its own token and re-seals the signed blob to us (forwarding)
    token_for_other = cs.mint("printer-2", other.sign_public, other.box_public)
    signed = unseal(token_for_other, other.box_key)
    forwarded = seal(signed, PublicKey(keys.box_public))
    trust = trust_from_map(cs.trust_map())
    assert _code(lambda: open_token(forwarded, keys, trust, store)) == ErrorCode.TOKEN_AUDIENCE
    # right printer id but bound to another signing key
    token = cs.mint("printer-1", other.sign_public, keys.box_public)
    assert _code(lambda: open_token(token, keys, trust, store)) == ErrorCode.TOKEN_AUDIENCE


def test_expired(cs, keys, store):
    trust = trust_from_map(cs.trust_map())
    past = int(time.time()) - 3600
    token = _mint(cs, keys, iat=past, exp=past + 300)
    assert _code(lambda: open_token(token, keys, trust, store)) == ErrorCode.TOKEN_EXPIRED
    fresh = _mint(cs, keys)
    assert _code(lambda: open_token(fresh, keys, trust, store, now=time.time() + 3600)) \
        == ErrorCode.TOKEN_EXPIRED


def test_replay_is_refused_also_after_reopening(cs, keys, tmp_path):
    trust = trust_from_map(cs.trust_map())
    path = tmp_path / "replay.sqlite3"
    store = JobStore(path)
    token = _mint(cs, keys)
    signed, _ = open_token(token, keys, trust, store)
    assert _code(lambda: open_token(token, keys, trust, store)) == ErrorCode.TOKEN_REPLAYED
    # the same signed claims sealed again (a different token string) are still a replay
    resealed = seal(signed, PublicKey(keys.box_public))
    assert resealed != token
    assert _code(lambda: open_token(resealed, keys, trust, store)) == ErrorCode.TOKEN_REPLAYED
    store.close()
    reopened = JobStore(path)
    assert _code(lambda: open_token(token, keys, trust, reopened)) == ErrorCode.TOKEN_REPLAYED
    reopened.close()


def test_failed_checks_do_not_burn_the_jti(cs, keys, store):
    trust = trust_from_map(cs.trust_map())
    token = _mint(cs, keys)
    assert _code(lambda: open_token(token, keys, None, store)) == ErrorCode.PRINTER_NOT_TRUSTED
    open_token(token, keys, trust, store)


def test_redeem_with_proof(cs, keys, store):
    trust = trust_from_map(cs.trust_map())
    signed, claims = open_token(_mint(cs, keys), keys, trust, store)
    with requests.Session() as http:
        red = redeem(cs.url, signed, keys, http)
        assert red.download_url == f"{cs.url}/api/download/{cs.cap}"
        assert red.content["sha256"] == cs.sha256 and red.expires_at > time.time()
        assert claims.jti in cs.redeemed
        # the contents server's error body comes back as its P3DError
        assert _code(lambda: redeem(cs.url, signed, keys, http)) == ErrorCode.TOKEN_REPLAYED


def test_redeem_with_a_wrong_key_is_refused_by_the_server(cs, keys, store, tmp_path):
    trust = trust_from_map(cs.trust_map())
    signed, _ = open_token(_mint(cs, keys), keys, trust, store)
    impostor = load_or_create(tmp_path / "impostor", "printer-1", "P1")
    with requests.Session() as http:
        assert _code(lambda: redeem(cs.url, signed, impostor, http)) == ErrorCode.POP_INVALID


def test_redeem_unreachable(keys):
    with requests.Session() as http:
        assert _code(lambda: redeem("http://127.0.0.1:9", b"x" * 100, keys, http, timeout=2)) \
            == ErrorCode.CONTENTS_UNAVAILABLE


def test_check_token_follows_a_rotation_once_for_an_unknown_kid(cs, keys, store):
    old = trust_from_map(cs.trust_map())
    cs.cs_key = SigningKey.generate()          # the server rotated; we missed it
    cs.kid = key_id(bytes(cs.cs_key.verify_key))
    new = trust_from_map(cs.trust_map())
    calls: list[int] = []

    def follow():
        calls.append(1)
        return new
    checked = check_token(_mint(cs, keys), keys, old, follow=follow)
    assert calls == [1] and checked.trust is new and checked.claims.kid == cs.kid
    # a known kid never fetches; a follow that refuses leaves TOKEN_KID
    check_token(_mint(cs, keys), keys, new, follow=follow)
    assert calls == [1]
    assert _code(lambda: check_token(_mint(cs, keys), keys, old, follow=lambda: None)) \
        == ErrorCode.TOKEN_KID


def test_check_token_has_no_side_effect(cs, keys, store):
    trust = trust_from_map(cs.trust_map())
    token = _mint(cs, keys)
    first = check_token(token, keys, trust)
    assert check_token(token, keys, trust).claims == first.claims   # not burnt by a check
    record_redeemed(store, first.claims)
    assert _code(lambda: record_redeemed(store, first.claims)) == ErrorCode.TOKEN_REPLAYED


def test_authenticate_burns_the_jti_only_after_the_redeem(cs, keys, store):
    trust = trust_from_map({**cs.trust_map(), "contentsUrl": "http://127.0.0.1:9"})
    pins = _Pins(trust)
    token = _mint(cs, keys)
    with requests.Session() as http:
        assert _code(lambda: authenticate(token, keys, pins, store, http, timeout=2)) \
            == ErrorCode.CONTENTS_UNAVAILABLE
        pins.trust = trust_from_map(cs.trust_map())          # the server is back
        claims, red = authenticate(token, keys, pins, store, http)
        assert claims.jti in cs.redeemed and red.download_url.startswith(cs.url)
        assert _code(lambda: authenticate(token, keys, pins, store, http)) \
            == ErrorCode.TOKEN_REPLAYED


class _Pins:
    def __init__(self, trust):
        self.trust = trust

    def get(self):
        return self.trust

    def follow(self):
        return None


@pytest.mark.skipif(not hasattr(JobStore, "reopen"),
                    reason="needs JobStore.reopen(job_id): failed -> queued, error cleared")
def test_accept_retries_a_token_that_failed_before_redemption(tmp_path, monkeypatch):
    from gotapi3dp.config import Config
    from gotapi3dp.wire.jobs import JobState
    from gotapi3dp.wire.token import job_id_for
    from printer import main as printer_main

    from .test_printer_helpers import FakeLink, FakeSlicer

    class NoFirmware:
        def start(self):
            return "/dev/pts/fake"

        def stop(self):
            pass
    monkeypatch.setattr(printer_main, "_make_link", lambda pc, port: FakeLink())
    monkeypatch.setattr(printer_main, "_make_firmware", lambda config, path: NoFirmware())
    monkeypatch.setattr(printer_main, "_slice_fn", lambda: FakeSlicer())
    printer = printer_main.build(Config(data_dir=tmp_path / "data"))
    cs = FakeContents(printer.keys.sign_public)
    try:
        printer.trust.set(trust_from_map({**cs.trust_map(), "contentsUrl": "http://127.0.0.1:9"}))
        token = _mint(cs, printer.keys)
        assert _code(lambda: printer.accept(token)) == ErrorCode.CONTENTS_UNAVAILABLE
        assert printer.jobs.require(job_id_for(token)).state is JobState.FAILED
        printer.trust.set(trust_from_map(cs.trust_map()))       # the server is back
        job, started = printer.accept(token)
        assert started and job.id == job_id_for(token) and len(cs.redeemed) == 1
        again, started = printer.accept(token)                  # now the job is live: no retry
        assert not started and again.id == job.id and len(cs.redeemed) == 1
    finally:
        printer.close()
        cs.close()
