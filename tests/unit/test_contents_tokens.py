"""Contents server: printer pairing, token issue, and redemption (replay, PoP, nonce, expiry)."""
from __future__ import annotations

import dataclasses
import secrets
import threading

import pytest
from nacl.signing import SigningKey

from gotapi3dp.wire import token as p3t

from .contents_support import Env, PrinterSim, box_stl, make_env

ISSUER = "gotapi-3dp-contents"


@pytest.fixture
def env(tmp_path) -> Env:
    return make_env(tmp_path)


@pytest.fixture
def printer(env) -> PrinterSim:
    sim = PrinterSim()
    r = env.client.post("/api/printers", headers=env.headers(), json=sim.registration())
    assert r.status_code == 201, r.json
    return sim


@pytest.fixture
def content_id(env) -> str:
    return env.upload(box_stl(), "box.stl").json["id"]


def issue(env: Env, printer_id: str, content_id: str, key: str | None = None):
    return env.client.post("/api/tokens", headers=env.headers(key),
                           json={"printerId": printer_id, "contentId": content_id})


def token_for(env, printer, content_id) -> str:
    r = issue(env, printer.printer_id, content_id)
    assert r.status_code == 201, r.json
    return r.json["token"]


def token_state(env, token: str, printer: PrinterSim) -> str:
    from contents_server.services import EXTENSION
    jti = p3t.Claims.unpack(printer.unseal(token)[p3t.KID_BYTES + p3t.SIG_BYTES:]).jti
    row = env.app.extensions[EXTENSION].db.one("SELECT state FROM tokens WHERE jti = ?", (jti,))
    return "REVOKED" if row is None else row["state"]


def name_of(response) -> str:
    return response.json["error"]["name"]


# --- pairing --------------------------------------------------------------------------

def test_register_answers_issuer_and_keys(env, printer):
    r = env.client.post("/api/printers", headers=env.headers(), json=printer.registration())
    assert r.status_code == 200           # same owner again: keys replaced
    assert r.json["printerId"] == printer.printer_id
    assert r.json["keys"] == env.client.get("/api/keys").json["keys"]


def test_printer_of_another_account_is_409(env, printer):
    other = env.new_account("mallory")
    thief = PrinterSim(printer.printer_id)
    r = env.client.post("/api/printers", headers=env.headers(other), json=thief.registration())
    assert r.status_code == 409 and name_of(r) == "PRINTER_CONFLICT"


@pytest.mark.parametrize("patch", [{"signKey": "AAAA"}, {"boxKey": p3t.b64e(bytes(32))},
                                   {"printerId": "../x"}, {"signKey": 5}, {"name": "x\n"}])
def test_bad_registration_is_400(env, patch):
    body = {**PrinterSim().registration(), **patch}
    r = env.client.post("/api/printers", headers=env.headers(), json=body)
    assert r.status_code == 400, r.json


def test_register_needs_api_key(env):
    r = env.client.post("/api/printers", json=PrinterSim().registration())
    assert r.status_code == 401


# --- issue ----------------------------------------------------------------------------

def test_issued_token_opens_only_for_the_printer(env, printer, content_id):
    r = issue(env, printer.printer_id, content_id)
    assert r.status_code == 201
    assert r.json["content"]["id"] == content_id
    claims = p3t.verify_signed(printer.unseal(r.json["token"]), _server_keys(env), ISSUER)
    assert claims.aud == printer.printer_id and claims.cid == content_id
    assert claims.cnf == p3t.key_hash(bytes(printer.sign.verify_key))
    assert claims.exp == r.json["expiresAt"] and claims.exp - claims.iat <= 600
    with pytest.raises(p3t.P3DError):
        PrinterSim().unseal(r.json["token"])
    assert token_state(env, r.json["token"], printer) == "ISSUED"


def _server_keys(env):
    from nacl.signing import VerifyKey
    return {k["kid"]: VerifyKey(p3t.b64d(k["publicKey"]))
            for k in env.client.get("/api/keys").json["keys"]}


def test_token_for_another_accounts_content_is_404(env, printer):
    other = env.new_account("alice")
    theirs = env.upload(box_stl() + b"", "x.stl", key=other)
    assert theirs.status_code == 201
    r = issue(env, printer.printer_id, theirs.json["id"])
    assert r.status_code == 404 and name_of(r) == "CONTENT_NOT_FOUND"


def test_token_for_unregistered_printer_is_403(env, content_id):
    r = issue(env, "printer-unknown", content_id)
    assert r.status_code == 403 and name_of(r) == "PRINTER_NOT_REGISTERED"


def test_token_for_another_accounts_printer_is_403(env, printer):
    other = env.new_account("alice")
    cid = env.upload(box_stl(), key=other).json["id"]
    r = issue(env, printer.printer_id, cid, key=other)
    assert r.status_code == 403 and name_of(r) == "PRINTER_NOT_REGISTERED"


def test_token_with_bad_content_id_is_400(env, printer):
    r = issue(env, printer.printer_id, "../../etc/passwd")
    assert r.status_code == 400 and name_of(r) == "BAD_CONTENT_ID"


# --- redeem ---------------------------------------------------------------------------

def test_redeem_gives_download_and_content(env, printer, content_id):
    token = token_for(env, printer, content_id)
    r = printer.redeem(env, token)
    assert r.status_code == 200, r.json
    assert r.json["download"]["url"].startswith("/api/download/")
    assert r.json["download"]["expiresAt"] > env.clock()
    assert r.json["content"]["id"] == content_id
    assert token_state(env, token, printer) == "REDEEMED"


def test_redeem_twice_is_409(env, printer, content_id):
    token = token_for(env, printer, content_id)
    assert printer.redeem(env, token).status_code == 200
    r = printer.redeem(env, token)
    assert r.status_code == 409 and name_of(r) == "TOKEN_REPLAYED"


def test_concurrent_redeems_exactly_one_wins(env, printer, content_id):
    token = token_for(env, printer, content_id)
    signed = printer.unseal(token)
    bodies = [printer.redeem_body(signed, printer.nonce(env), int(env.clock())) for _ in range(8)]
    statuses: list[int] = []
    barrier = threading.Barrier(len(bodies))

    def go(body):
        client = env.app.test_client()
        barrier.wait()
        statuses.append(client.post("/api/redeem", json=body).status_code)
    threads = [threading.Thread(target=go, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(statuses) == [200] + [409] * (len(bodies) - 1)


def test_wrong_pop_key_is_401_and_token_stays_issued(env, printer, content_id):
    token = token_for(env, printer, content_id)
    r = printer.redeem(env, token, signer=SigningKey.generate())    # the plug-in trying
    assert r.status_code == 401 and name_of(r) == "POP_INVALID"
    assert token_state(env, token, printer) == "ISSUED"
    assert printer.redeem(env, token).status_code == 200             # the real printer


def test_pop_over_another_path_or_stale_time_is_401(env, printer, content_id):
    token = token_for(env, printer, content_id)
    signed = printer.unseal(token)
    nonce = printer.nonce(env)
    body = printer.redeem_body(signed, nonce, int(env.clock()))
    msg = p3t.pop_message(signed, p3t.b64d(nonce), "POST", "/api/other", body["iat"])
    body["proof"] = p3t.b64e(printer.sign.sign(msg).signature)
    assert name_of(env.client.post("/api/redeem", json=body)) == "POP_INVALID"
    stale = printer.redeem_body(signed, printer.nonce(env), int(env.clock()) - 120)
    assert name_of(env.client.post("/api/redeem", json=stale)) == "POP_INVALID"
    assert token_state(env, token, printer) == "ISSUED"


def test_nonce_reuse_is_401(env, printer, content_id):
    token = token_for(env, printer, content_id)
    signed = printer.unseal(token)
    nonce = printer.nonce(env)
    bad = printer.redeem_body(signed, nonce, int(env.clock()), signer=SigningKey.generate())
    assert name_of(env.client.post("/api/redeem", json=bad)) == "POP_INVALID"
    good = printer.redeem_body(signed, nonce, int(env.clock()))       # nonce already spent
    r = env.client.post("/api/redeem", json=good)
    assert r.status_code == 401 and name_of(r) == "POP_NONCE"


def test_unknown_expired_or_foreign_nonce_is_401(env, printer, content_id):
    token = token_for(env, printer, content_id)
    signed = printer.unseal(token)
    made_up = printer.redeem_body(signed, p3t.b64e(secrets.token_bytes(32)), int(env.clock()))
    assert name_of(env.client.post("/api/redeem", json=made_up)) == "POP_NONCE"
    nonce = printer.nonce(env)
    env.clock.now += 61
    late = printer.redeem_body(signed, nonce, int(env.clock()))
    assert name_of(env.client.post("/api/redeem", json=late)) == "POP_NONCE"
    other = PrinterSim("printer-2")
    env.client.post("/api/printers", headers=env.headers(), json=other.registration())
    foreign = printer.redeem_body(signed, other.nonce(env), int(env.clock()))
    assert name_of(env.client.post("/api/redeem", json=foreign)) == "POP_NONCE"


def test_challenge_for_unregistered_printer_is_403(env):
    r = env.client.post("/api/redeem/challenge", json={"printerId": "nobody"})
    assert r.status_code == 403


def test_expired_token_is_401(env, printer, content_id):
    token = token_for(env, printer, content_id)
    env.clock.now += 600 + p3t.CLOCK_SKEW + 1
    r = printer.redeem(env, token)
    assert r.status_code == 401 and name_of(r) == "TOKEN_EXPIRED"


def test_token_signed_by_another_key_is_refused(env, printer, content_id):
    token = token_for(env, printer, content_id)
    claims = p3t.verify_signed(printer.unseal(token), _server_keys(env), ISSUER)
    rogue = SigningKey.generate()
    forged = dataclasses.replace(claims, kid=p3t.key_id(bytes(rogue.verify_key)))
    signed = p3t.sign_claims(forged, rogue)
    body = printer.redeem_body(signed, printer.nonce(env), int(env.clock()))
    r = env.client.post("/api/redeem", json=body)
    assert r.status_code == 401 and name_of(r) == "TOKEN_KID"
    # Our kid, a foreign signature: the kid is right, the signature is not.
    ours = p3t.sign_claims(forged, rogue)
    ours = bytes.fromhex(claims.kid) + ours[p3t.KID_BYTES:]
    body = printer.redeem_body(ours, printer.nonce(env), int(env.clock()))
    r = env.client.post("/api/redeem", json=body)
    assert r.status_code == 401 and name_of(r) == "TOKEN_SIGNATURE"


def test_tampered_signed_blob_is_refused(env, printer, content_id):
    signed = bytearray(printer.unseal(token_for(env, printer, content_id)))
    signed[-1] ^= 1
    body = printer.redeem_body(bytes(signed), printer.nonce(env), int(env.clock()))
    assert name_of(env.client.post("/api/redeem", json=body)) == "TOKEN_SIGNATURE"


def test_token_for_printer_a_redeemed_by_printer_b_is_403(env, printer, content_id):
    token = token_for(env, printer, content_id)
    other = PrinterSim("printer-2")
    env.client.post("/api/printers", headers=env.headers(), json=other.registration())
    signed = printer.unseal(token)             # A leaks its signed blob to B
    body = other.redeem_body(signed, other.nonce(env), int(env.clock()))
    r = env.client.post("/api/redeem", json=body)
    assert r.status_code == 403 and name_of(r) == "TOKEN_AUDIENCE"


def test_deleted_printer_cannot_redeem(env, printer, content_id):
    token = token_for(env, printer, content_id)
    nonce = printer.nonce(env)
    r = env.client.delete(f"/api/printers/{printer.printer_id}", headers=env.headers())
    assert r.status_code == 200 and r.json == {"ok": True}
    body = printer.redeem_body(printer.unseal(token), nonce, int(env.clock()))
    r = env.client.post("/api/redeem", json=body)
    assert r.status_code in (401, 403)         # its nonces went with it
    assert token_state(env, token, printer) == "REVOKED"
    # paired again with the very same keys: the old token stays dead
    env.client.post("/api/printers", headers=env.headers(), json=printer.registration())
    r = printer.redeem(env, token)
    assert r.status_code == 409 and name_of(r) == "TOKEN_REPLAYED"


def test_rekeyed_printer_old_token_is_audience_error(env, printer, content_id):
    token = token_for(env, printer, content_id)
    rekeyed = PrinterSim(printer.printer_id, box=printer.box)        # new signing key
    env.client.post("/api/printers", headers=env.headers(), json=rekeyed.registration())
    r = rekeyed.redeem(env, token)
    assert r.status_code == 403 and name_of(r) == "TOKEN_AUDIENCE"


def test_delete_printer_of_another_account_is_refused(env, printer):
    other = env.new_account("mallory")
    r = env.client.delete(f"/api/printers/{printer.printer_id}", headers=env.headers(other))
    assert r.status_code == 403
    assert env.client.delete(f"/api/printers/{printer.printer_id}").status_code == 401


@pytest.mark.parametrize("patch", [{"signed": "!!"}, {"iat": "now"}, {"iat": True},
                                   {"printerId": "../x"}, {"proof": 5}, {"nonce": None}])
def test_malformed_redeem_body_is_rejected(env, printer, content_id, patch):
    token = token_for(env, printer, content_id)
    body = {**printer.redeem_body(printer.unseal(token), printer.nonce(env), int(env.clock())),
            **patch}
    r = env.client.post("/api/redeem", json=body)
    assert 400 <= r.status_code < 500 and "error" in r.json
    assert token_state(env, token, printer) == "ISSUED"


def test_redeem_body_not_json_is_400(env):
    r = env.client.post("/api/redeem", data="nope", content_type="text/plain")
    assert r.status_code == 400
