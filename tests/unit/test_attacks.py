"""The attack suite: every attack on the secure token protocol, one test each.

Each test asserts the stable error code AND that nothing was left behind: the real token is
still redeemable where it should be, no licence print was spent, no printer was paired, the
printer's replay cache was not burnt. The printer side (printer.pairing, printer.authenticate)
talks to the real contents server app through a requests adapter, not a fake.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
from typing import Any, Callable

import pytest
import requests
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from contents_server import keys as server_keys
from contents_server import pairing as cs_pairing
from contents_server.services import EXTENSION
from gotapi3dp.wire import token as p3t
from gotapi3dp.wire.errors import ErrorCode, P3DError
from printer.authenticate import authenticate, check_token, record_redeemed, redeem
from printer.jobs import JobStore
from printer.keys import load_or_create
from printer.pairing import KeyFollower, Pairing, follow_rotation
from printer.trust import TrustStore

from .contents_support import Env, PrinterSim, box_stl, make_3mf, make_env

ISSUER = "gotapi-3dp-contents"
BASE = "http://contents.test"


# --- plumbing: the printer's HTTP client wired to the contents server app --------------

class FlaskAdapter(requests.adapters.BaseAdapter):
    """requests -> Flask test client; `lose` drops the next N redeem answers after the server
    ran, `down` refuses every connection, `answers` replaces the answer for a path."""

    def __init__(self, env: Env) -> None:
        super().__init__()
        self.env, self.lose, self.calls, self.down = env, 0, 0, False
        self.answers: dict[str, Any] = {}
        self.fetched: list[str] = []            # every GET /api/keys

    def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:
        self.calls += 1
        path = request.url[len(BASE):] if request.url else "/"
        if self.down:
            raise requests.ConnectionError("contents server down")
        if path == "/api/keys":
            self.fetched.append(path)
        if path in self.answers:
            return self._answer(request, 200, json.dumps(self.answers[path]).encode())
        r = self.env.app.test_client().open(path, method=request.method,
                                            headers=dict(request.headers), data=request.body)
        if self.lose > 0 and path.startswith("/api/redeem") and not path.endswith("challenge"):
            self.lose -= 1
            raise requests.ConnectionError("answer lost")
        return self._answer(request, r.status_code, r.data, dict(r.headers))

    @staticmethod
    def _answer(request: requests.PreparedRequest, status: int, data: bytes,
                headers: dict[str, str] | None = None) -> requests.Response:
        resp = requests.Response()
        resp.status_code, resp._content = status, data
        resp.headers.update(headers or {"Content-Type": "application/json"})
        resp.url, resp.request = request.url or "", request
        return resp

    def close(self) -> None:
        pass


@dataclasses.dataclass
class Rig:
    env: Env
    http: requests.Session
    adapter: FlaskAdapter
    keys: Any
    trust: TrustStore
    jobs: JobStore
    sim: PrinterSim
    content_id: str

    @property
    def svc(self) -> Any:
        return self.env.app.extensions[EXTENSION]

    def issue(self, content_id: str | None = None, printer_id: str | None = None) -> Any:
        return self.env.client.post("/api/tokens", headers=self.env.headers(), json={
            "printerId": printer_id or self.keys.printer_id,
            "contentId": content_id or self.content_id})

    def token(self, content_id: str | None = None) -> str:
        r = self.issue(content_id)
        assert r.status_code == 201, r.json
        return str(r.json["token"])

    def state(self, token: str) -> str:
        jti = p3t.Claims.unpack(self.sim.unseal(token)[p3t.KID_BYTES + p3t.SIG_BYTES:]).jti
        row = self.svc.db.one("SELECT state FROM tokens WHERE jti = ?", (jti,))
        return "REVOKED" if row is None else str(row["state"])

    def used(self, content_id: str | None = None) -> int:
        row = self.svc.db.one("SELECT prints_used FROM contents WHERE id = ?",
                              (content_id or self.content_id,))
        return int(row["prints_used"])

    def redeem_ok(self, token: str) -> None:
        """The real printer, the real way: open, then redeem with its proof."""
        signed, _ = open_token(token, self.keys, self.trust.get(), self.jobs,
                               now=self.env.clock())
        redeem(BASE, signed, self.keys, self.http)


def pair(env: Env, keys: Any, trust: TrustStore, http: requests.Session) -> Pairing:
    pairing = Pairing(keys, trust, http)
    shown = pairing.start(BASE)
    r = env.client.post("/api/pairing/confirm", headers=env.headers(),
                        json={"code": shown["userCode"], "fingerprint": shown["fingerprint"]})
    assert r.status_code == 200, r.json
    assert pairing.poll()["status"] == "approved"
    return pairing


@pytest.fixture
def rig(tmp_path, monkeypatch) -> Rig:
    env = make_env(tmp_path)
    monkeypatch.setattr("time.time", env.clock)       # printer and server share one clock
    http = requests.Session()
    adapter = FlaskAdapter(env)
    http.mount(BASE, adapter)
    keys = load_or_create(tmp_path / "printer", "printer-1", "P1")
    trust = TrustStore(tmp_path / "printer" / "trust.json")
    pair(env, keys, trust, http)
    jobs = JobStore(tmp_path / "jobs.sqlite3", clock=env.clock)
    sim = PrinterSim(keys.printer_id, keys.sign_key, keys.box_key)
    content_id = env.upload(box_stl(), "box.stl").json["id"]
    yield Rig(env, http, adapter, keys, trust, jobs, sim, content_id)
    jobs.close()


def open_token(token: str, keys: Any, trust: Any, jobs: JobStore,
               now: float | None = None) -> tuple[bytes, p3t.Claims]:
    """check_token, then burn the jti (what authenticate does around the redeem)."""
    checked = check_token(token, keys, trust, now)
    record_redeemed(jobs, checked.claims)
    return checked.signed, checked.claims


def code(fn: Callable[[], Any]) -> int:
    with pytest.raises(P3DError) as err:
        fn()
    return int(err.value.code)


def name_of(r: Any) -> str:
    return str(r.json["error"]["name"])


def claims_of(rig: Rig, token: str) -> p3t.Claims:
    return p3t.Claims.unpack(rig.sim.unseal(token)[p3t.KID_BYTES + p3t.SIG_BYTES:])


def forge(rig: Rig, signer: SigningKey | None = None, kid_of: SigningKey | None = None,
          box: Any = None, **changes: Any) -> str:
    """A token like the server's, signed by `signer` (default: the real key), one thing changed."""
    real = rig.svc.keys.snapshot().signing_key
    signer = signer or real
    base = claims_of(rig, rig.token())
    c = dataclasses.replace(base, kid=p3t.key_id(bytes((kid_of or signer).verify_key)),
                            jti=PrivateKey.generate().encode()[:16], **changes)
    body = c.pack()
    signed = bytes.fromhex(c.kid) + signer.sign(p3t.DST_TOKEN + body).signature + body
    return p3t.seal(signed, box or rig.keys.box_key.public_key)


def assert_clean(rig: Rig, token: str) -> None:
    """Nothing left behind: no print spent, and a fresh real token still goes through."""
    assert rig.used() == 0
    rig.redeem_ok(rig.token())
    assert rig.used() == 1


# --- forged and damaged tokens ----------------------------------------------------------

def test_forged_by_another_key_is_unknown_kid(rig):
    token = forge(rig, signer=SigningKey.generate())
    assert code(lambda: open_token(token, rig.keys, rig.trust.get(), rig.jobs)) == ErrorCode.TOKEN_KID
    signed = rig.sim.unseal(token)
    r = rig.env.client.post("/api/redeem", json=rig.sim.redeem_body(
        signed, rig.sim.nonce(rig.env), int(rig.env.clock())))
    assert r.status_code == 401 and name_of(r) == "TOKEN_KID"
    assert_clean(rig, token)


def test_forged_under_the_real_kid_fails_the_signature(rig):
    real = rig.svc.keys.snapshot().signing_key
    token = forge(rig, signer=SigningKey.generate(), kid_of=real)
    assert code(lambda: open_token(token, rig.keys, rig.trust.get(), rig.jobs)) \
        == ErrorCode.TOKEN_SIGNATURE
    assert_clean(rig, token)


@pytest.mark.parametrize("where", [0, 9, p3t.KID_BYTES + p3t.SIG_BYTES + 3, -1])
def test_tampered_byte_is_refused_and_the_token_survives(rig, where):
    token = rig.token()
    signed = bytearray(rig.sim.unseal(token))
    signed[where] ^= 0x01
    tampered = p3t.seal(bytes(signed), rig.keys.box_key.public_key)
    assert code(lambda: open_token(tampered, rig.keys, rig.trust.get(), rig.jobs)) in (
        ErrorCode.TOKEN_KID, ErrorCode.TOKEN_SIGNATURE)
    assert rig.state(token) == "ISSUED"
    rig.redeem_ok(token)                     # the untampered original still works, once


def test_tampered_ciphertext_is_unreadable(rig):
    token = rig.token()
    raw = bytearray(p3t.b64d(token[len(p3t.TOKEN_PREFIX):]))
    raw[40] ^= 0x80
    bad = p3t.TOKEN_PREFIX + p3t.b64e(bytes(raw))
    assert code(lambda: open_token(bad, rig.keys, rig.trust.get(), rig.jobs)) \
        == ErrorCode.TOKEN_UNREADABLE
    rig.redeem_ok(token)


@pytest.mark.parametrize("junk", ["", "p3t1.", "p3t1.!!!", "p3t2." + "A" * 100, "x" * 5000])
def test_malformed_tokens_are_unreadable(rig, junk):
    assert code(lambda: open_token(junk, rig.keys, rig.trust.get(), rig.jobs)) \
        == ErrorCode.TOKEN_UNREADABLE
    assert_clean(rig, junk)


def test_malformed_claims_signed_by_the_real_key(rig):
    token = forge(rig, cid="../../etc/passwd")
    assert code(lambda: open_token(token, rig.keys, rig.trust.get(), rig.jobs)) \
        == ErrorCode.TOKEN_MALFORMED
    assert_clean(rig, token)


def test_wrong_token_type(rig):
    token = forge(rig, typ="p3t+download")
    assert code(lambda: open_token(token, rig.keys, rig.trust.get(), rig.jobs)) \
        == ErrorCode.TOKEN_TYPE
    assert_clean(rig, token)


def test_other_issuer_on_the_trusted_key(rig):
    token = forge(rig, iss="evil-contents")
    assert code(lambda: open_token(token, rig.keys, rig.trust.get(), rig.jobs)) \
        == ErrorCode.TOKEN_KID
    assert_clean(rig, token)


# --- time -------------------------------------------------------------------------------

def test_expired_token(rig):
    token = rig.token()
    rig.env.clock.now += 600 + p3t.CLOCK_SKEW + 1
    assert code(lambda: open_token(token, rig.keys, rig.trust.get(), rig.jobs,
                                   now=rig.env.clock())) == ErrorCode.TOKEN_EXPIRED
    r = rig.sim.redeem(rig.env, token)
    assert r.status_code == 401 and name_of(r) == "TOKEN_EXPIRED"
    assert rig.state(token) == "ISSUED" and rig.used() == 0


def test_not_yet_valid_token(rig):
    now = int(rig.env.clock())
    token = forge(rig, iat=now + 3600, exp=now + 3600 + 300)
    assert code(lambda: open_token(token, rig.keys, rig.trust.get(), rig.jobs, now=now)) \
        == ErrorCode.TOKEN_NOT_YET_VALID
    assert_clean(rig, token)


def test_stale_proof(rig):
    token = rig.token()
    body = rig.sim.redeem_body(rig.sim.unseal(token), rig.sim.nonce(rig.env),
                               int(rig.env.clock()) - p3t.CLOCK_SKEW - 5)
    r = rig.env.client.post("/api/redeem", json=body)
    assert r.status_code == 401 and name_of(r) == "POP_INVALID"
    assert rig.state(token) == "ISSUED"
    rig.redeem_ok(token)


# --- audience ---------------------------------------------------------------------------

def second_printer(rig: Rig, tmp_path: Any, printer_id: str = "printer-2") -> tuple[Any, Any]:
    keys = load_or_create(tmp_path / printer_id, printer_id, printer_id)
    trust = TrustStore(tmp_path / printer_id / "trust.json")
    pair(rig.env, keys, trust, rig.http)
    return keys, trust


def test_wrong_audience_redeemed_by_another_printer(rig, tmp_path):
    other_keys, _ = second_printer(rig, tmp_path)
    token = rig.token()
    other = PrinterSim(other_keys.printer_id, other_keys.sign_key, other_keys.box_key)
    body = other.redeem_body(rig.sim.unseal(token), other.nonce(rig.env), int(rig.env.clock()))
    r = rig.env.client.post("/api/redeem", json=body)
    assert r.status_code == 403 and name_of(r) == "TOKEN_AUDIENCE"
    assert rig.state(token) == "ISSUED"
    rig.redeem_ok(token)


def test_resealed_to_another_printer(rig, tmp_path):
    other_keys, other_trust = second_printer(rig, tmp_path)
    token = rig.token()
    resealed = p3t.seal(rig.sim.unseal(token), other_keys.box_key.public_key)
    other_jobs = JobStore(tmp_path / "other-jobs.sqlite3", clock=rig.env.clock)
    try:
        assert code(lambda: open_token(resealed, other_keys, other_trust.get(), other_jobs)) \
            == ErrorCode.TOKEN_AUDIENCE
        assert other_jobs.remember_token(claims_of(rig, token).jti, 2**40)  # cache not burnt
    finally:
        other_jobs.close()
    rig.redeem_ok(token)


def test_plugin_cannot_redeem_without_the_printer_key(rig):
    token = rig.token()
    # The plug-in holds only the sealed token: it cannot open it ...
    with pytest.raises(P3DError):
        p3t.unseal(token, PrivateKey.generate())
    # ... and even with the inner blob it has no printer key to prove possession.
    r = rig.sim.redeem(rig.env, token, signer=SigningKey.generate())
    assert r.status_code == 401 and name_of(r) == "POP_INVALID"
    assert rig.state(token) == "ISSUED" and rig.used() == 0
    rig.redeem_ok(token)


# --- replay and races -------------------------------------------------------------------

def test_replayed_token(rig):
    token = rig.token()
    rig.redeem_ok(token)
    assert code(lambda: open_token(token, rig.keys, rig.trust.get(), rig.jobs)) \
        == ErrorCode.TOKEN_REPLAYED                                # printer's cache
    r = rig.sim.redeem(rig.env, token)                             # server's table
    assert r.status_code == 409 and name_of(r) == "TOKEN_REPLAYED"
    assert rig.used() == 1


def test_two_redeems_racing(rig):
    token = rig.token()
    signed = rig.sim.unseal(token)
    bodies = [rig.sim.redeem_body(signed, rig.sim.nonce(rig.env), int(rig.env.clock()))
              for _ in range(6)]
    statuses = race(rig, bodies)
    assert sorted(statuses) == [200] + [409] * 5
    assert rig.used() == 1


def race(rig: Rig, bodies: list[dict[str, Any]]) -> list[int]:
    statuses: list[int] = []
    barrier = threading.Barrier(len(bodies))

    def go(body: dict[str, Any]) -> None:
        client = rig.env.app.test_client()
        barrier.wait()
        statuses.append(client.post("/api/redeem", json=body).status_code)
    threads = [threading.Thread(target=go, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return statuses


def test_reused_nonce(rig):
    token = rig.token()
    signed = rig.sim.unseal(token)
    nonce = rig.sim.nonce(rig.env)
    bad = rig.sim.redeem_body(signed, nonce, int(rig.env.clock()), signer=SigningKey.generate())
    assert name_of(rig.env.client.post("/api/redeem", json=bad)) == "POP_INVALID"
    good = rig.sim.redeem_body(signed, nonce, int(rig.env.clock()))
    r = rig.env.client.post("/api/redeem", json=good)
    assert r.status_code == 401 and name_of(r) == "POP_NONCE"
    assert rig.state(token) == "ISSUED"
    rig.redeem_ok(token)


# --- idempotent retry -------------------------------------------------------------------

def test_retried_redeem_gets_the_same_answer_not_a_second_print(rig):
    token = rig.token()
    signed = rig.sim.unseal(token)
    body = rig.sim.redeem_body(signed, rig.sim.nonce(rig.env), int(rig.env.clock()))
    first = rig.env.client.post("/api/redeem", json=body)
    again = rig.env.client.post("/api/redeem", json=body)
    assert first.status_code == again.status_code == 200
    assert first.json == again.json and rig.used() == 1
    # the same token with a *new* proof is a replay, not a retry
    r = rig.sim.redeem(rig.env, token)
    assert r.status_code == 409 and name_of(r) == "TOKEN_REPLAYED"
    # a retry by anyone else (another printer id) is not answered
    r = rig.env.client.post("/api/redeem", json={**body, "printerId": "printer-9"})
    assert r.status_code in (401, 403)


def test_printer_retries_a_lost_answer(rig):
    token = rig.token()
    signed, _ = open_token(token, rig.keys, rig.trust.get(), rig.jobs)
    rig.adapter.lose = 1                          # the server commits, the answer is lost
    got = redeem(BASE, signed, rig.keys, rig.http)
    assert got.download_url.startswith(BASE + "/api/download/")
    assert rig.state(token) == "REDEEMED" and rig.used() == 1


def test_retry_after_the_download_window_is_refused(rig):
    token = rig.token()
    body = rig.sim.redeem_body(rig.sim.unseal(token), rig.sim.nonce(rig.env), int(rig.env.clock()))
    assert rig.env.client.post("/api/redeem", json=body).status_code == 200
    rig.env.clock.now += rig.svc.config.download_ttl + 1
    r = rig.env.client.post("/api/redeem", json=body)
    assert r.status_code == 401 and name_of(r) == "POP_NONCE"


# --- licences ---------------------------------------------------------------------------

def licensed(rig: Rig, prints: int) -> str:
    r = rig.env.upload(box_stl() + b"", "licensed.stl", prints=str(prints))
    if r.status_code == 200:     # same bytes as the fixture's content: make them differ
        r = rig.env.upload(make_3mf(), "licensed.3mf", prints=str(prints))
    assert r.status_code == 201, r.json
    assert r.json["prints"] == prints and r.json["remaining"] == prints
    return str(r.json["id"])


def test_licence_counts_down_and_is_shown_at_issue(rig):
    cid = licensed(rig, 2)
    first = rig.issue(cid)
    assert first.json["content"]["remaining"] == 2
    rig.redeem_ok(first.json["token"])
    second = rig.issue(cid)
    assert second.json["content"]["remaining"] == 1
    rig.redeem_ok(second.json["token"])
    r = rig.issue(cid)
    assert r.status_code == 403 and name_of(r) == "LICENCE_EXHAUSTED"
    assert rig.used(cid) == 2


def test_licence_never_below_zero_under_concurrency(rig):
    cid = licensed(rig, 1)
    tokens = [rig.token(cid) for _ in range(5)]           # issued while one print was left
    bodies = [rig.sim.redeem_body(rig.sim.unseal(t), rig.sim.nonce(rig.env), int(rig.env.clock()))
              for t in tokens]
    statuses = race(rig, bodies)
    assert sorted(statuses) == [200] + [403] * 4
    assert rig.used(cid) == 1
    assert sorted(rig.state(t) for t in tokens) == ["ISSUED"] * 4 + ["REDEEMED"]


def test_unlimited_content_has_no_remaining(rig):
    r = rig.issue()
    assert r.json["content"]["prints"] is None and r.json["content"]["remaining"] is None


# --- downloads --------------------------------------------------------------------------

def test_token_for_content_a_cannot_download_b(rig):
    cid_b = rig.env.upload(make_3mf(), "b.3mf").json["id"]
    token = rig.token()
    signed = rig.sim.unseal(token)
    r = rig.env.client.post("/api/redeem", json=rig.sim.redeem_body(
        signed, rig.sim.nonce(rig.env), int(rig.env.clock())))
    url_a = r.json["download"]["url"]
    for path in (f"/api/download/{cid_b}", f"/api/download/{url_a.rsplit('/', 1)[1]}/../{cid_b}",
                 url_a + cid_b):
        got = rig.env.client.get(path, headers=rig.sim.download_headers(path, rig.env.clock()))
        assert got.status_code == 403 and name_of(got) == "DOWNLOAD_DENIED", path
    got = rig.env.client.get(url_a, headers=rig.sim.download_headers(url_a, rig.env.clock()))
    import hashlib
    assert hashlib.sha256(got.data).hexdigest() == claims_of(rig, token).chash


# --- pairing, unpairing, rotation -------------------------------------------------------

def test_revoked_printer_cannot_redeem_outstanding_tokens(rig):
    token = rig.token()
    signed, _ = open_token(token, rig.keys, rig.trust.get(), rig.jobs)
    r = rig.env.client.delete(f"/api/printers/{rig.keys.printer_id}", headers=rig.env.headers())
    assert r.status_code == 200
    assert code(lambda: redeem(BASE, signed, rig.keys, rig.http)) \
        == ErrorCode.PRINTER_NOT_REGISTERED
    pair(rig.env, rig.keys, rig.trust, rig.http)           # paired again, same keys
    assert code(lambda: redeem(BASE, signed, rig.keys, rig.http)) == ErrorCode.TOKEN_REPLAYED
    assert rig.used() == 0


def test_rotated_key_old_tokens_live_until_expiry_new_tokens_use_the_next_key(rig):
    before = rig.svc.keys.snapshot()
    old_token = rig.token()
    old_kid, new_kid = server_keys.rotate(rig.env.data_dir, now=rig.env.clock())
    assert old_kid == before.kid and new_kid == p3t.key_id(bytes(before.next_key.verify_key))
    new_token = rig.token()
    assert claims_of(rig, new_token).kid == new_kid
    rig.redeem_ok(new_token)          # the printer pinned {current, next}: no refresh needed
    rig.redeem_ok(old_token)          # the retired key still verifies until expiry
    # past the grace, a token of the retired key is an unknown key id at the server
    stale = forge(rig, signer=before.signing_key)
    rig.env.clock.now += server_keys.RETIRED_GRACE + 1
    r = rig.sim.redeem(rig.env, stale)
    assert r.status_code == 401 and name_of(r) in ("TOKEN_KID", "TOKEN_EXPIRED")


def test_printer_follows_a_rotation_only_when_signed_by_a_pinned_key(rig, tmp_path):
    trust = rig.trust.get()
    for _ in range(3):                                   # three: no pinned key signed the set
        server_keys.rotate(rig.env.data_dir, now=rig.env.clock())
    published = rig.env.client.get("/api/keys").json
    assert code(lambda: follow_rotation(trust, published)) == ErrorCode.TOKEN_SIGNATURE
    env2 = make_env(tmp_path / "cs2")
    mallory = env2.client.get("/api/keys").json                     # another server's set
    assert code(lambda: follow_rotation(trust, mallory)) == ErrorCode.TOKEN_SIGNATURE
    unsigned = {k: v for k, v in published.items() if k not in ("keysSignature", "endorsement")}
    assert code(lambda: follow_rotation(trust, unsigned)) == ErrorCode.TOKEN_SIGNATURE
    assert rig.trust.get() == trust


def test_printer_follows_one_rotation(rig):
    trust = rig.trust.get()
    server_keys.rotate(rig.env.data_dir, now=rig.env.clock())
    published = rig.env.client.get("/api/keys").json
    new = follow_rotation(trust, published)        # signed by the old next, which is pinned
    assert {k["kid"] for k in published["keys"]} <= set(new.keys)
    assert set(trust.keys) <= set(new.keys)        # old pins kept for tokens still in flight


def test_rotation_is_endorsed_by_the_retiring_key_and_audited(rig):
    before = rig.svc.keys.snapshot()
    server_keys.rotate(rig.env.data_dir, now=rig.env.clock())
    server_keys.rotate(rig.env.data_dir, now=rig.env.clock())
    published = rig.env.client.get("/api/keys").json
    assert published["endorsement"]["kid"] == p3t.key_id(bytes(before.next_key.verify_key))
    new = follow_rotation(rig.trust.get(), published)   # pins {K0, K1}, set {K2, K3}
    assert {k["kid"] for k in published["keys"]} <= set(new.keys)
    events = [e for e in rig.svc.db.all("SELECT event, detail FROM audit")
              if e["event"] == "key:rotated"]
    assert len(events) == 2 and before.kid in events[0]["detail"]


def authenticate_now(rig: Rig, token: str, interval: float = 0.0) -> Any:
    """The printer's whole path: check (following a rotation), redeem, burn the jti."""
    pins = KeyFollower(rig.trust, rig.http, 10.0, interval=interval)
    return authenticate(token, rig.keys, pins, rig.jobs, rig.http, now=rig.env.clock())


def test_printer_follows_two_missed_rotations_by_itself(rig):
    server_keys.rotate(rig.env.data_dir, now=rig.env.clock())
    server_keys.rotate(rig.env.data_dir, now=rig.env.clock())
    token = rig.token()                                  # signed by K2: not pinned
    assert claims_of(rig, token).kid not in rig.trust.get().keys
    claims, redemption = authenticate_now(rig, token)
    assert claims.kid in rig.trust.get().keys and rig.state(token) == "REDEEMED"
    assert redemption.download_url.startswith(BASE + "/api/download/")


def test_unknown_kid_after_three_missed_rotations(rig):
    trust = rig.trust.get()
    for _ in range(3):
        server_keys.rotate(rig.env.data_dir, now=rig.env.clock())
    token = rig.token()
    assert code(lambda: authenticate_now(rig, token)) == ErrorCode.TOKEN_KID
    assert rig.state(token) == "ISSUED" and rig.trust.get() == trust
    assert rig.jobs.remember_token(claims_of(rig, token).jti, 2**40)   # cache not burnt


@pytest.mark.parametrize("which", ["unsigned", "foreign"])
def test_printer_never_follows_an_unsigned_or_foreign_key_set(rig, which):
    """A key set answered by someone else (DNS, proxy) that lists the forger's key."""
    trust = rig.trust.get()
    mallory = SigningKey.generate()
    keys = [{"kid": p3t.key_id(bytes(mallory.verify_key)),
             "publicKey": p3t.b64e(bytes(mallory.verify_key))}]
    fake: dict[str, Any] = {"issuer": ISSUER, "keys": keys}
    if which == "foreign":
        sig = mallory.sign(p3t.keyset_message(ISSUER, keys)).signature
        fake["keysSignature"] = {"kid": keys[0]["kid"], "signature": p3t.b64e(sig)}
        fake["endorsement"] = dict(fake["keysSignature"])
    rig.adapter.answers["/api/keys"] = fake
    token = forge(rig, signer=mallory)
    assert code(lambda: authenticate_now(rig, token)) == ErrorCode.TOKEN_KID
    assert rig.adapter.fetched == ["/api/keys"] and rig.trust.get() == trust
    assert_clean(rig, token)


def test_key_set_fetches_are_rate_limited(rig):
    for _ in range(3):
        server_keys.rotate(rig.env.data_dir, now=rig.env.clock())
    token = rig.token()
    pins = KeyFollower(rig.trust, rig.http, 10.0, interval=3600)
    for _ in range(3):
        assert code(lambda: authenticate(token, rig.keys, pins, rig.jobs, rig.http)) \
            == ErrorCode.TOKEN_KID
    assert rig.adapter.fetched == ["/api/keys"]


# --- a redeem that fails is not burnt ---------------------------------------------------

def test_server_down_does_not_burn_the_token(rig):
    token = rig.token()
    rig.adapter.down = True
    assert code(lambda: authenticate_now(rig, token)) == ErrorCode.CONTENTS_UNAVAILABLE
    rig.adapter.down = False
    assert rig.state(token) == "ISSUED" and rig.used() == 0
    authenticate_now(rig, token)                          # the same token, posted again
    assert rig.state(token) == "REDEEMED" and rig.used() == 1
    assert code(lambda: authenticate_now(rig, token)) == ErrorCode.TOKEN_REPLAYED
    assert rig.used() == 1


def test_all_answers_lost_then_retried_is_one_print(rig):
    token = rig.token()
    rig.adapter.lose = 3                      # the server committed; every answer was lost
    assert code(lambda: authenticate_now(rig, token)) == ErrorCode.CONTENTS_UNAVAILABLE
    assert rig.state(token) == "REDEEMED" and rig.used() == 1
    # a new attempt has a new nonce: not the stored request, so the server refuses it
    assert code(lambda: authenticate_now(rig, token)) == ErrorCode.TOKEN_REPLAYED
    assert rig.used() == 1


def test_a_jti_seen_before_is_refused_even_if_the_server_takes_it(rig):
    token = rig.token()
    assert rig.jobs.remember_token(claims_of(rig, token).jti, 2**40)   # burnt locally
    assert code(lambda: authenticate_now(rig, token)) == ErrorCode.TOKEN_REPLAYED


def start_body(keys: Any, now: float, signer: SigningKey | None = None) -> dict[str, Any]:
    iat = int(now)
    msg = p3t.pair_message(keys.printer_id, keys.sign_public, keys.box_public, iat)
    proof = (signer or keys.sign_key).sign(msg).signature
    ident = {k: v for k, v in keys.identity().items() if k != "fingerprint"}
    return {**ident, "iat": iat, "proof": p3t.b64e(proof)}


def test_pairing_code_brute_force_is_rate_limited(tmp_path):
    env = make_env(tmp_path)
    keys = load_or_create(tmp_path / "p", "printer-7", "P7")
    shown = env.client.post("/api/pairing", json=start_body(keys, env.clock())).json
    for _ in range(cs_pairing.MAX_FAILS_ACCOUNT):
        r = env.client.post("/api/pairing/confirm", headers=env.headers(), json={"code": "BBBB-BBBB"})
        assert r.status_code == 400 and name_of(r) == "PAIRING_CODE"
    r = env.client.post("/api/pairing/confirm", headers=env.headers(), json={"code": shown["userCode"]})
    assert r.status_code == 429 and name_of(r) == "PAIRING_RATE_LIMITED"   # even the right one
    assert env.client.post("/api/redeem/challenge", json={"printerId": "printer-7"}).status_code == 403
    env.clock.now += cs_pairing.FAIL_WINDOW + 1        # the window passes; the code expired too
    r = env.client.post("/api/pairing/confirm", headers=env.headers(), json={"code": shown["userCode"]})
    assert name_of(r) == "PAIRING_CODE"


def test_pairing_codes_are_single_use_random_and_expire(tmp_path):
    env = make_env(tmp_path)
    keys = load_or_create(tmp_path / "p", "printer-7", "P7")
    a = env.client.post("/api/pairing", json=start_body(keys, env.clock())).json
    b = env.client.post("/api/pairing", json=start_body(keys, env.clock())).json
    assert a["userCode"] != b["userCode"] and "printer" not in a["userCode"].lower()
    assert cs_pairing.normalize_code(a["userCode"]) is not None
    ok = env.client.post("/api/pairing/confirm", headers=env.headers(), json={"code": a["userCode"]})
    assert ok.status_code == 200 and ok.json["fingerprint"] == keys.fingerprint
    again = env.client.post("/api/pairing/confirm", headers=env.headers(), json={"code": a["userCode"]})
    assert name_of(again) == "PAIRING_CODE"
    env.clock.now += cs_pairing.CODE_TTL + 1
    late = env.client.post("/api/pairing/confirm", headers=env.headers(), json={"code": b["userCode"]})
    assert name_of(late) == "PAIRING_CODE"
    r = env.client.post("/api/pairing/poll", json={"deviceCode": b["deviceCode"]})
    assert r.status_code == 410 and name_of(r) == "PAIRING_EXPIRED"


def test_pairing_request_must_be_signed_by_its_key(tmp_path):
    env = make_env(tmp_path)
    keys = load_or_create(tmp_path / "p", "printer-7", "P7")
    r = env.client.post("/api/pairing", json=start_body(keys, env.clock(), SigningKey.generate()))
    assert r.status_code == 401 and name_of(r) == "POP_INVALID"
    stale = start_body(keys, env.clock() - 3600)
    assert name_of(env.client.post("/api/pairing", json=stale)) == "POP_INVALID"


def test_wrong_fingerprint_does_not_pair(tmp_path):
    env = make_env(tmp_path)
    keys = load_or_create(tmp_path / "p", "printer-7", "P7")
    shown = env.client.post("/api/pairing", json=start_body(keys, env.clock())).json
    r = env.client.post("/api/pairing/confirm", headers=env.headers(),
                        json={"code": shown["userCode"], "fingerprint": "0000-0000-0000-0000-0000"})
    assert name_of(r) == "PAIRING_CODE"
    poll = env.client.post("/api/pairing/poll", json={"deviceCode": shown["deviceCode"]})
    assert poll.json["status"] in ("pending", "slow_down")
    assert env.client.post("/api/redeem/challenge", json={"printerId": "printer-7"}).status_code == 403


# --- hostile inputs at every hop --------------------------------------------------------

TRAVERSALS = ["../../etc/passwd", "..%2f..%2fetc", "..\\\\x", "/abs", "a\x00b", "ｃｏｎｔｅｎｔ",
              "x" * 65]


@pytest.mark.parametrize("bad", TRAVERSALS)
def test_content_id_traversal_at_every_hop(rig, bad):
    from gotapi3dp.wire.ids import CONTENT_ID_RE
    assert not CONTENT_ID_RE.fullmatch(bad)                        # the plug-in's pattern
    r = rig.issue(bad)                                             # contents server: issue
    assert r.status_code == 400 and name_of(r) == "BAD_CONTENT_ID"
    token = forge(rig, cid=bad)                                    # printer: signed claims
    assert code(lambda: open_token(token, rig.keys, rig.trust.get(), rig.jobs)) \
        == ErrorCode.TOKEN_MALFORMED
    assert rig.svc.db.one("SELECT COUNT(*) FROM tokens WHERE content_id = ?", (bad,))[0] == 0


@pytest.mark.parametrize("data,status", [
    (b"solid x\nendsolid x\n", 422),                                   # empty mesh
    (b"\0" * 80 + (10**8).to_bytes(4, "little") + b"\0" * 50, 422),    # count vs size
    (make_3mf(extra={"3D/bomb.bin": b"\0" * (50 << 20)}), 422),         # 3MF bomb
    (make_3mf(extra={"../../evil": b"x"}), 422),                       # zip-slip name
])
def test_hostile_uploads_leave_nothing(rig, data, status):
    before = rig.svc.db.one("SELECT COUNT(*) FROM contents")[0]
    blobs = sorted(p.name for p in (rig.env.data_dir / "blobs").rglob("*") if p.is_file())
    r = rig.env.upload(data, "x.stl")
    assert r.status_code == status, r.json
    assert rig.svc.db.one("SELECT COUNT(*) FROM contents")[0] == before
    assert sorted(p.name for p in (rig.env.data_dir / "blobs").rglob("*") if p.is_file()) == blobs


def test_upload_over_the_limit_is_413(tmp_path):
    env = make_env(tmp_path, max_upload_bytes=500)
    r = env.upload(box_stl(), "big.stl")
    assert r.status_code == 413
    assert env.client.get("/api/contents", headers=env.headers()).json["contents"] == []


# --- no secret in any log or audit event ------------------------------------------------

def test_no_secret_in_logs_or_audit(rig, caplog):
    caplog.set_level(logging.DEBUG)
    secrets_seen: list[str] = [rig.env.key, rig.keys.api_key]
    pairing = Pairing(rig.keys, rig.trust, rig.http)
    shown = pairing.start(BASE)
    secrets_seen.append(shown["userCode"])
    secrets_seen.append(pairing._pending.device_code)  # noqa: SLF001 (test reads it once)
    rig.env.client.post("/api/pairing/confirm", headers=rig.env.headers(),
                        json={"code": shown["userCode"]})
    pairing.poll()
    token = rig.token()
    secrets_seen.append(token)
    signed, _ = open_token(token, rig.keys, rig.trust.get(), rig.jobs)
    got = redeem(BASE, signed, rig.keys, rig.http)
    secrets_seen += [p3t.b64e(signed), got.download_url.rsplit("/", 1)[1]]
    rig.sim.redeem(rig.env, token)                                     # a refused replay
    path = "/api/download/" + got.download_url.rsplit("/", 1)[1]
    rig.env.client.get(path, headers=rig.sim.download_headers(path, rig.env.clock()))
    rig.env.client.get(path)                                           # a refused download
    audit_rows = [" ".join(str(v) for v in tuple(row))
                  for row in rig.svc.db.all("SELECT * FROM audit")]
    events = {row.split(" ")[2] for row in audit_rows}
    assert {"token:issued", "token:redeemed", "token:redeem-refused", "download:served",
            "download:refused", "pairing:confirmed"} <= events
    haystack = caplog.text + "\n".join(audit_rows)
    for secret in secrets_seen:
        assert secret and secret not in haystack
        assert secret.replace("-", "") not in haystack


def test_audit_query_since(rig):
    from contents_server import audit
    rig.env.clock.now += 100
    mark = rig.env.clock()
    rig.token()
    rows = audit.query(rig.svc.db.conn(), since=mark)
    assert [r["event"] for r in rows] == ["token:issued"]
    assert audit.parse_since("2h", 10_000.0) == 10_000.0 - 7200
    assert audit.parse_since(None, 5.0) == 0.0
    with pytest.raises(P3DError):
        audit.parse_since("yesterday", 5.0)
