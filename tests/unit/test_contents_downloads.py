"""Contents server: signed downloads bound to one printer, with Range and If-Range."""
from __future__ import annotations

import hashlib

import pytest
from nacl.signing import SigningKey

from gotapi3dp.wire import token as p3t

from .contents_support import Env, PrinterSim, make_3mf, make_env


@pytest.fixture
def env(tmp_path) -> Env:
    return make_env(tmp_path)


@pytest.fixture
def model() -> bytes:
    return make_3mf()


@pytest.fixture
def printer(env) -> PrinterSim:
    sim = PrinterSim()
    assert env.client.post("/api/printers", headers=env.headers(),
                           json=sim.registration()).status_code == 201
    return sim


@pytest.fixture
def url(env, printer, model) -> str:
    cid = env.upload(model, "part.3mf").json["id"]
    token = env.client.post("/api/tokens", headers=env.headers(),
                            json={"printerId": printer.printer_id, "contentId": cid}).json["token"]
    r = printer.redeem(env, token)
    assert r.status_code == 200, r.json
    return r.json["download"]["url"]


def get(env, printer, url, **headers):
    return env.client.get(url, headers={**printer.download_headers(url, env.clock()), **headers})


def test_full_download_matches_sha256(env, printer, url, model):
    r = get(env, printer, url)
    assert r.status_code == 200
    assert hashlib.sha256(r.data).hexdigest() == hashlib.sha256(model).hexdigest()
    assert r.headers["ETag"] == f'"sha256:{hashlib.sha256(model).hexdigest()}"'
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["Content-Type"] == "model/3mf"


def test_range_request_returns_206_and_the_right_bytes(env, printer, url, model):
    r = get(env, printer, url, Range="bytes=10-99")
    assert r.status_code == 206 and r.data == model[10:100]
    assert r.headers["Content-Range"] == f"bytes 10-99/{len(model)}"
    r = get(env, printer, url, Range="bytes=100-")
    assert r.status_code == 206 and r.data == model[100:]
    r = get(env, printer, url, Range="bytes=-50")
    assert r.status_code == 206 and r.data == model[-50:]


def test_multiple_ranges_get_the_whole_file(env, printer, url, model):
    r = get(env, printer, url, Range="bytes=0-1,5-6")
    assert r.status_code == 200 and r.data == model


def test_unsatisfiable_range_is_416(env, printer, url, model):
    r = get(env, printer, url, Range=f"bytes={len(model) + 10}-")
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(model)}"


def test_if_range_resumes_only_with_matching_etag(env, printer, url, model):
    etag = f'"sha256:{hashlib.sha256(model).hexdigest()}"'
    r = get(env, printer, url, Range="bytes=5-", **{"If-Range": etag})
    assert r.status_code == 206 and r.data == model[5:]
    r = get(env, printer, url, Range="bytes=5-", **{"If-Range": '"sha256:' + "0" * 64 + '"'})
    assert r.status_code == 200 and r.data == model


def test_download_without_proof_is_403(env, url):
    r = env.client.get(url)
    assert r.status_code == 403 and r.json["error"]["name"] == "DOWNLOAD_DENIED"


def test_download_with_another_printers_proof_is_403(env, printer, url):
    other = PrinterSim("printer-2")
    env.client.post("/api/printers", headers=env.headers(), json=other.registration())
    assert get(env, other, url).status_code == 403
    # Claiming to be the right printer but signing with another key:
    impostor = PrinterSim(printer.printer_id, sign=SigningKey.generate())
    assert get(env, impostor, url).status_code == 403


def test_proof_for_another_path_or_stale_time_is_403(env, printer, url):
    headers = printer.download_headers("/api/download/other", env.clock())
    assert env.client.get(url, headers=headers).status_code == 403
    stale = printer.download_headers(url, env.clock() - 120)
    assert env.client.get(url, headers=stale).status_code == 403


def test_download_after_expiry_is_403(env, printer, url):
    env.clock.now += 601
    assert get(env, printer, url).status_code == 403


def test_unknown_capability_is_403(env, printer, url):
    for bad in ("/api/download/" + p3t.b64e(bytes(16)), "/api/download/../contents",
                "/api/download/x"):
        assert get(env, printer, bad).status_code == 403, bad


def test_download_stops_when_printer_is_deleted(env, printer, url):
    env.client.delete(f"/api/printers/{printer.printer_id}", headers=env.headers())
    assert get(env, printer, url).status_code == 403


@pytest.mark.parametrize("headers", [
    {"X-P3T-Printer": "printer-1", "X-P3T-Time": "soon", "X-P3T-Proof": "AAAA"},
    {"X-P3T-Printer": "../x", "X-P3T-Time": "1", "X-P3T-Proof": "AAAA"},
    {"X-P3T-Printer": "printer-1", "X-P3T-Time": "1", "X-P3T-Proof": "%%%"},
])
def test_malformed_proof_headers_are_403(env, url, headers):
    assert env.client.get(url, headers=headers).status_code == 403


def test_capability_is_bound_to_the_printer_id_not_just_the_key(env, printer, url):
    """A second printer id sharing the first one's signing key still cannot use its URL."""
    twin = PrinterSim("printer-twin", sign=printer.sign)
    env.client.post("/api/printers", headers=env.headers(), json=twin.registration())
    assert get(env, twin, url).status_code == 403
    assert get(env, printer, url).status_code == 200
