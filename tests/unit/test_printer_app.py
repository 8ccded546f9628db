"""The printer HTTP API over `build(config)`, with fake firmware, link and slicer and a fake
contents server on a real socket."""
from __future__ import annotations

import pytest

from gotapi3dp.config import Config
from gotapi3dp.wire.jobs import JobState
from gotapi3dp.wire.token import job_id_for
from printer import main as printer_main
from printer.app import create_app
from printer.runner import END_SEQUENCE

from .test_printer_helpers import FakeContents, FakeLink, FakeSlicer, commands_in, wait_for


class FakeFirmware:
    def __init__(self, config, log_path):
        self.log_path, self.started, self.stopped = log_path, False, False

    def start(self):
        self.started = True
        return "/dev/pts/fake"

    def stop(self):
        self.stopped = True


@pytest.fixture
def rig(tmp_path, monkeypatch):
    made = {"links": [], "firmware": []}
    link = FakeLink(delay=0.002)
    slicer = FakeSlicer(layers=4, per_layer=20)

    def make_link(pc, port):
        made["links"].append(port)
        return link

    def make_firmware(config, log_path):
        made["firmware"].append(FakeFirmware(config, log_path))
        return made["firmware"][-1]

    monkeypatch.setattr(printer_main, "_make_link", make_link)
    monkeypatch.setattr(printer_main, "_make_firmware", make_firmware)
    monkeypatch.setattr(printer_main, "_slice_fn", lambda: slicer)
    config = Config(data_dir=tmp_path / "data")
    printer = printer_main.build(config)
    cs = FakeContents(printer.keys.sign_public)

    class Rig:
        pass
    r = Rig()
    r.config, r.printer, r.cs, r.link, r.slicer, r.made = config, printer, cs, link, slicer, made
    r.client = create_app(printer).test_client()
    r.auth = {"X-Api-Key": printer.keys.api_key}
    r.mint = lambda **kw: cs.mint(printer.keys.printer_id, printer.keys.sign_public,
                                  printer.keys.box_public, **kw)
    r.trust = lambda: r.client.post("/api/trust", json=cs.trust_map(), headers=r.auth)
    r.job = lambda job_id: r.client.get(f"/api/jobs/{job_id}", headers=r.auth).get_json()["job"]
    yield r
    for built in {id(printer): printer, id(r.printer): r.printer}.values():
        built.close()
    cs.close()


def _wait_job(rig, job_id, state, timeout=10):
    return wait_for(lambda: (j := rig.job(job_id))["state"] == state.value and j, timeout)


def test_build_wires_firmware_and_link(rig):
    fw, = rig.made["firmware"]
    assert fw.started and fw.log_path == rig.config.data_dir / "printer" / "firmware.log"
    assert rig.printer.serial_port == "/dev/pts/fake"
    assert (rig.config.data_dir / "printer" / "api.key").exists()
    rig.printer.close()
    assert fw.stopped


def test_identity_needs_no_key(rig):
    resp = rig.client.get("/api/identity")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["printerId"] == "printer-1" and body["trusted"] is False
    assert body["bed"] == {"x": 220.0, "y": 220.0, "z": 250.0}
    assert set(body) >= {"signKey", "boxKey", "fingerprint", "name"}
    rig.trust()
    assert rig.client.get("/api/identity").get_json()["trusted"] is True


@pytest.mark.parametrize("headers, query", [
    ({}, ""), ({"X-Api-Key": ""}, ""), ({"X-Api-Key": "wrong"}, ""), ({}, "?apikey=KEY"),
])
def test_api_key_required(rig, headers, query):
    query = query.replace("KEY", rig.printer.keys.api_key)
    for method, path in (("get", "/api/jobs"), ("post", "/api/jobs"), ("get", "/api/status"),
                         ("post", "/api/trust"), ("get", "/api/nowhere")):
        resp = getattr(rig.client, method)(path + query, headers=headers, json={"token": "x"})
        assert resp.status_code == 401, (method, path)
        assert resp.get_json()["error"]["name"] == "PRINTER_AUTH"
    assert rig.printer.jobs.list() == []


def test_error_shapes(rig):
    resp = rig.client.get("/api/nowhere", headers=rig.auth)
    assert resp.status_code == 404 and set(resp.get_json()["error"]) == {"code", "name", "message"}
    resp = rig.client.patch("/api/jobs", headers=rig.auth)
    assert resp.status_code == 405 and "error" in resp.get_json()
    resp = rig.client.get("/api/jobs/" + "0" * 32, headers=rig.auth)
    assert resp.status_code == 404 and resp.get_json()["error"]["name"] == "JOB_NOT_FOUND"
    resp = rig.client.get("/api/jobs/../etc", headers=rig.auth)
    assert resp.status_code in (400, 404)
    resp = rig.client.post("/api/jobs", headers=rig.auth, data="not json")
    assert resp.status_code == 400
    resp = rig.client.post("/api/jobs", headers=rig.auth, json={"token": "x" * 100_000})
    assert resp.status_code == 413
    resp = rig.client.get("/api/identity", headers={"Host": "evil.example:4060"})
    assert resp.status_code == 421 and resp.get_json()["error"]["name"] == "HOST_NOT_ALLOWED"


def test_token_prints_and_same_token_is_the_same_job(rig):
    assert rig.trust().status_code == 200
    token = rig.mint()
    first = rig.client.post("/api/jobs", json={"token": token}, headers=rig.auth)
    assert first.status_code == 201, first.get_json()
    job = first.get_json()["job"]
    assert job["id"] == job_id_for(token) and job["contentId"] == "model-1"
    again = rig.client.post("/api/jobs", json={"token": token}, headers=rig.auth)
    assert again.status_code == 200 and again.get_json()["job"]["id"] == job["id"]
    done = _wait_job(rig, job["id"], JobState.COMPLETED)
    assert done["progress"] == 100.0 and done["layers"] == 4 and done["layer"] == 4
    assert done["stats"]["linesSent"] == commands_in(rig.slicer)
    assert rig.slicer.models == [rig.cs.content]
    assert len(rig.cs.redeemed) == 1
    jobs = rig.client.get("/api/jobs", headers=rig.auth).get_json()["jobs"]
    assert [j["id"] for j in jobs] == [job["id"]]
    status = rig.client.get("/api/status", headers=rig.auth).get_json()
    assert status["state"] == "idle" and "jobId" not in status
    assert status["temperatures"]["hotend"]["actual"] == 21.0


def test_untrusted_then_failed_job_carries_the_error(rig):
    token = rig.mint()
    resp = rig.client.post("/api/jobs", json={"token": token}, headers=rig.auth)
    assert resp.status_code == 403
    body = resp.get_json()
    assert body["error"]["name"] == "PRINTER_NOT_TRUSTED" and body["jobId"] == job_id_for(token)
    job = rig.job(body["jobId"])
    assert job["state"] == "failed" and job["error"]["code"] == 1308
    again = rig.client.post("/api/jobs", json={"token": token}, headers=rig.auth)
    assert again.status_code == 403 and again.get_json() == body   # the same answer, not "ok"
    assert rig.cs.redeemed == set()


@pytest.mark.parametrize("claims, status, name", [
    ({"iat": 1_000_000, "exp": 1_000_300}, 401, "TOKEN_EXPIRED"),
    ({"aud": "printer-2"}, 403, "TOKEN_AUDIENCE"),
])
def test_bad_tokens(rig, claims, status, name):
    rig.trust()
    token = rig.mint(**claims)
    resp = rig.client.post("/api/jobs", json={"token": token}, headers=rig.auth)
    assert resp.status_code == status and resp.get_json()["error"]["name"] == name
    assert rig.job(resp.get_json()["jobId"])["error"]["name"] == name
    assert rig.printer.runner.current is None
    retry = rig.client.post("/api/jobs", json={"token": token}, headers=rig.auth)  # review
    assert retry.status_code == status and retry.get_json() == resp.get_json()


def test_busy_printer_leaves_the_second_token_unspent(rig):
    rig.trust()
    rig.link.delay = 0.01
    first = rig.client.post("/api/jobs", json={"token": rig.mint()}, headers=rig.auth)
    first_id = first.get_json()["job"]["id"]
    second_token = rig.mint()
    busy = rig.client.post("/api/jobs", json={"token": second_token}, headers=rig.auth)
    assert busy.status_code == 409 and busy.get_json()["error"]["name"] == "PRINTER_BUSY"
    assert "jobId" not in busy.get_json() and len(rig.cs.redeemed) == 1
    status = rig.client.get("/api/status", headers=rig.auth).get_json()
    assert status["jobId"] == first_id
    resp = rig.client.delete(f"/api/jobs/{first_id}", headers=rig.auth)
    assert resp.status_code == 200 and resp.get_json()["job"]["state"] == "cancelled"
    later = rig.client.post("/api/jobs", json={"token": second_token}, headers=rig.auth)
    assert later.status_code == 201


def test_cancel_pause_resume_over_http(rig):
    rig.trust()
    rig.link.delay = 0.01
    job_id = rig.client.post("/api/jobs", json={"token": rig.mint()},
                             headers=rig.auth).get_json()["job"]["id"]
    wait_for(lambda: len(rig.link.streamed) > 5)
    resp = rig.client.put(f"/api/jobs/{job_id}/pause", headers=rig.auth)
    assert resp.status_code == 200 and resp.get_json()["job"]["state"] == "paused"
    assert rig.client.put(f"/api/jobs/{job_id}/pause", headers=rig.auth).status_code == 409
    assert rig.client.put(f"/api/jobs/{job_id}/resume", headers=rig.auth).get_json()["job"]["state"] \
        == "printing"
    resp = rig.client.delete(f"/api/jobs/{job_id}", headers=rig.auth)
    assert resp.get_json()["job"]["state"] == "cancelled"
    assert rig.link.commands == list(END_SEQUENCE)
    again = rig.client.delete(f"/api/jobs/{job_id}", headers=rig.auth)
    assert again.status_code == 409 and again.get_json()["error"]["name"] == "JOB_STATE"


def test_restart_keeps_identity_and_interrupts(rig, monkeypatch):
    rig.trust()
    rig.link.delay = 0.01
    job_id = rig.client.post("/api/jobs", json={"token": rig.mint()},
                             headers=rig.auth).get_json()["job"]["id"]
    wait_for(lambda: len(rig.link.streamed) > 5)
    old_identity = rig.printer.identity()
    rig.printer.close()
    rig.printer = printer_main.build(rig.config)
    assert rig.printer.identity() == old_identity
    assert rig.printer.jobs.require(job_id).state is JobState.INTERRUPTED
    assert rig.printer.trust.get() is not None
