"""CONTRACT.md conformance over the real stack, with `requests` and a WebSocket client only.

Every call of the contract is driven as an independent application would: GotAPI-2 grant
and accessToken, the system profiles, every printer3d call, GotAPI-5 events, nonce/hmac,
idempotency keys, and the error envelope. No process is killed here.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from typing import Any

import pytest
import requests
import simple_websocket

from .conftest import Stack

pytestmark = pytest.mark.e2e

ORIGIN = "http://localhost:5201"
COMMON = ("result", "product", "version")


class App:
    """A bare GotAPI client: requests.Session, the Origin header, nothing else."""

    def __init__(self, stack: Stack, origin: str = ORIGIN) -> None:
        self.base = stack.info["gotapi"] + "/gotapi/"
        self.http = requests.Session()
        self.http.headers["Origin"] = origin
        self.token = ""

    def call(self, method: str, path: str, headers: dict[str, str] | None = None,
             **params: Any) -> dict[str, Any]:
        if self.token and "accessToken" not in params:
            params["accessToken"] = self.token
        where = "params" if method in ("GET", "DELETE") else "data"
        resp = self.http.request(method, self.base + path, headers=headers, timeout=60,
                                 **{where: params})
        assert resp.status_code == 200, (resp.status_code, resp.text)
        assert resp.headers["Content-Type"].startswith("application/json")
        body = resp.json()
        assert all(k in body for k in COMMON), body
        if body["result"] != 0:
            assert isinstance(body["errorCode"], int) and isinstance(body["errorMessage"], str)
        return dict(body)

    def ok(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        body = self.call(method, path, **params)
        assert body["result"] == 0, body
        return body


@pytest.fixture(scope="module")
def app(stack: Stack) -> App:
    a = App(stack)
    client_id = a.ok("GET", "authorization/grant")["clientId"]
    answer = a.ok("GET", "authorization/accessToken", clientId=client_id,
                  scope="printer3d,serviceDiscovery,serviceInformation,system",
                  applicationName="conformance")
    assert answer["expire"] > time.time() * 1000
    assert {s["scope"] for s in answer["scopes"]} >= {"printer3d", "serviceDiscovery"}
    assert all(isinstance(s["expirePeriod"], int) and s["expirePeriod"] > 0
               for s in answer["scopes"])
    a.token = answer["accessToken"]
    return a


@pytest.fixture(scope="module")
def sid(app: App) -> str:
    services = app.ok("GET", "serviceDiscovery")["services"]
    for s in services:
        assert {"id", "name", "online", "type"} <= set(s)
    return next(s["id"] for s in services if s["online"])


def test_availability_needs_no_token(stack: Stack) -> None:
    assert App(stack).ok("GET", "availability")["result"] == 0


def test_service_information_carries_the_profile_document(app: App, sid: str) -> None:
    info = app.ok("GET", "serviceInformation", serviceId=sid)
    assert "printer3d" in info["supports"] and isinstance(info["connect"], dict)
    doc = info["supportApis"]["printer3d"]
    assert doc["swagger"] == "2.0" and doc["basePath"] == "/gotapi/printer3d"
    for path in ("/connect", "/print", "/job", "/pause", "/resume", "/status", "/onJobChange"):
        assert path in doc["paths"], path
    assert doc["paths"]["/onJobChange"]["put"]["x-type"] == "event"


def test_system_lists_plugins(app: App) -> None:
    body = app.ok("GET", "system")
    assert {"availability", "authorization", "serviceDiscovery"} <= set(body["supports"])
    plugin = next(p for p in body["plugins"] if p["id"] == "printer3d")
    assert plugin["name"] and plugin["version"] and "printer3d" in plugin["supports"]


def test_status(app: App, sid: str) -> None:
    body = app.ok("GET", "printer3d/status", serviceId=sid)
    assert isinstance(body["state"], str) and "hotend" in body["temperatures"]


def test_the_whole_printer3d_profile_with_events(stack: Stack, app: App, sid: str) -> None:
    ws = simple_websocket.Client.connect(
        stack.info["gotapi"].replace("http://", "ws://") + "/gotapi/websocket",
        headers={"Origin": ORIGIN})
    try:
        ws.send(json.dumps({"accessToken": app.token}))
        assert json.loads(ws.receive(timeout=20)) == {"result": 0}
        app.ok("PUT", "printer3d/onJobChange", serviceId=sid)
        conn = app.ok("POST", "printer3d/connect", serviceId=sid,
                      contentId=stack.info["sampleContentId"], contentsKey=stack.info["contentsKey"])
        assert conn["connectionId"] and conn["expiresAt"] > time.time()
        assert {"id", "name", "format", "bytes", "sha256"} <= set(conn["content"])
        key = {"Idempotency-Key": os.urandom(8).hex()}
        job_id = app.call("POST", "printer3d/print", headers=key, serviceId=sid,
                          connectionId=conn["connectionId"])["jobId"]
        retried = app.call("POST", "printer3d/print", headers=key, serviceId=sid,
                           connectionId=conn["connectionId"])
        assert retried["result"] == 0 and retried["jobId"] == job_id   # one job, not two
        job = app.ok("GET", "printer3d/job", serviceId=sid, jobId=job_id)["job"]
        assert {"id", "state", "progress", "layer", "layers"} <= set(job)
        paused = app.call("PUT", "printer3d/pause", serviceId=sid, jobId=job_id)
        if paused["result"] == 0:
            app.ok("PUT", "printer3d/resume", serviceId=sid, jobId=job_id)
        else:
            assert paused["errorCode"] == 1304, paused   # the job had not reached printing
        states = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and (not states or states[-1] not in (
                "completed", "failed", "cancelled")):
            text = ws.receive(timeout=5)
            if text is None:
                continue
            event = json.loads(text)
            assert event["serviceId"] == sid and event["profile"] == "printer3d"
            assert event["attribute"] == "onJobChange"
            if event["job"]["id"] == job_id:
                states.append(event["job"]["state"])
        assert states and states[-1] == "completed", states
        assert "printing" in states
        app.ok("DELETE", "printer3d/onJobChange", serviceId=sid)
        again = app.call("DELETE", "printer3d/job", serviceId=sid, jobId=job_id)
        assert again["errorCode"] == 1304   # cancelling a completed job
    finally:
        ws.close()


def test_cancel(stack: Stack, app: App, sid: str) -> None:
    conn = app.ok("POST", "printer3d/connect", serviceId=sid,
                  contentId=stack.info["sampleContentId"], contentsKey=stack.info["contentsKey"])
    job_id = app.ok("POST", "printer3d/print", serviceId=sid,
                    connectionId=conn["connectionId"])["jobId"]
    body = app.call("DELETE", "printer3d/job", serviceId=sid, jobId=job_id)
    job = app.ok("GET", "printer3d/job", serviceId=sid, jobId=job_id)["job"]
    assert (body["result"] == 0 and job["state"] == "cancelled") or job["state"] == "completed"


def test_nonce_hmac(stack: Stack) -> None:
    a = App(stack, "http://localhost:5202")
    key = os.urandom(32).hex()
    a.ok("GET", "availability", key=key)
    nonce = os.urandom(16).hex()
    body = a.ok("GET", "authorization/grant", nonce=nonce)
    assert body["hmac"] == hmac.new(bytes.fromhex(key), bytes.fromhex(nonce),
                                    hashlib.sha256).hexdigest()


def test_error_envelope(stack: Stack, app: App, sid: str) -> None:
    evil = App(stack, "https://evil.example")
    assert evil.call("GET", "availability")["errorCode"] == 18
    bad = app.call("GET", "printer3d/job", serviceId=sid, jobId="nope")
    assert bad["errorCode"] == 10 and "jobId" in bad["errorMessage"]
    assert app.call("GET", "printer3d/status")["errorCode"] == 5
    assert app.call("GET", "printer3d/status", serviceId="x.y")["errorCode"] == 6
    assert app.call("GET", "printer3d/status", accessToken="", serviceId=sid)["errorCode"] == 13
    rebinding = requests.get(stack.info["gotapi"] + "/gotapi/availability", timeout=10,
                             headers={"Origin": ORIGIN, "Host": "attacker.example"})
    assert rebinding.status_code == 421 and rebinding.json()["errorCode"] == 1000
    preflight = requests.options(stack.info["gotapi"] + "/gotapi/printer3d/print", timeout=10,
                                 headers={"Origin": "https://evil.example",
                                          "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers
