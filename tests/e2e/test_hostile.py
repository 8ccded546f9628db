"""Hostile cases against the real processes: forged, misdirected, replayed and expired tokens,
a plug-in that must never see plaintext, and a plug-in host that dies mid-request."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest
import requests
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey

from gotapi3dp.client import GotapiError
from gotapi3dp.sample import sample_path
from gotapi3dp.wire import token as tk

from .conftest import Stack
from .test_flow import app_for, print_sample, service_id, wait_job

pytestmark = pytest.mark.e2e


def printer_api(stack: Stack, method: str, path: str, **kw: Any) -> requests.Response:
    key = stack.read_key("printer", "api.key")
    return requests.request(method, f"{stack.info['printer']}{path}",
                            headers={"X-Api-Key": key}, timeout=30, **kw)


def identity(stack: Stack) -> dict[str, Any]:
    return dict(requests.get(f"{stack.info['printer']}/api/identity", timeout=10).json())


def contents_key(stack: Stack) -> SigningKey:
    return SigningKey((stack.data_dir / "contents" / "signing.key").read_bytes())


def make_token(stack: Stack, *, signer: SigningKey | None = None, kid_of: SigningKey | None = None,
               aud: str | None = None, box: PublicKey | None = None, age: int = 0) -> str:
    """A token like the contents server makes, with one thing changed."""
    ident = identity(stack)
    cs = contents_key(stack)
    signer = signer or cs
    kid = tk.key_id(bytes((kid_of or signer).verify_key))
    now = int(time.time()) - age
    claims = tk.Claims(iss="gotapi-3dp-contents", kid=kid, aud=aud or ident["printerId"],
                       cnf=tk.key_hash(tk.b64d(ident["signKey"])), sub="attacker",
                       cid=stack.info["sampleContentId"], chash="0" * 64, jti=os.urandom(16),
                       iat=now, exp=now + 600)
    body = claims.pack()
    signed = bytes.fromhex(kid) + signer.sign(tk.DST_TOKEN + body).signature + body
    return tk.seal(signed, box or PublicKey(tk.b64d(ident["boxKey"])))


def firmware_lines(stack: Stack) -> int:
    path = stack.data_dir / "printer" / "firmware.log"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("case,code", [
    ("other_signer", 1201),      # TOKEN_KID: a key the printer never pinned
    ("forged_kid", 1202),        # TOKEN_SIGNATURE: right key id, wrong key
    ("sealed_elsewhere", 1200),  # TOKEN_UNREADABLE: sealed to another printer
    ("other_audience", 1205),    # TOKEN_AUDIENCE: signed for printer-2, re-sealed to us
    ("expired", 1206),           # TOKEN_EXPIRED
])
def test_printer_refuses_bad_tokens(stack: Stack, case: str, code: int) -> None:
    attacker = SigningKey.generate()
    token = {
        "other_signer": lambda: make_token(stack, signer=attacker),
        "forged_kid": lambda: make_token(stack, signer=attacker, kid_of=contents_key(stack)),
        "sealed_elsewhere": lambda: make_token(stack, box=PrivateKey.generate().public_key),
        "other_audience": lambda: make_token(stack, aud="printer-2"),
        "expired": lambda: make_token(stack, age=3600),
    }[case]()
    before = firmware_lines(stack)
    resp = printer_api(stack, "POST", "/api/jobs", json={"token": token})
    assert 400 <= resp.status_code < 500
    assert resp.json()["error"]["code"] == code, resp.json()
    job_id = tk.job_id_for(token)
    job = printer_api(stack, "GET", f"/api/jobs/{job_id}").json()["job"]
    assert job["state"] == "failed" and job["error"]["code"] == code
    assert firmware_lines(stack) == before  # nothing was printed


def test_the_plugin_never_sees_plaintext(stack: Stack) -> None:
    """No Intent on the bus and no answer to the app holds the claims, the download URL or the model."""
    tap = subprocess.Popen([sys.executable, "-m", "gotapi3dp.cli", "--config", str(stack.config_path),
                            "--data-dir", str(stack.data_dir), "bus", "tap", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1.0)  # let the SUB socket join
        app = app_for(stack)
        sid = service_id(app)
        answers: list[dict[str, Any]] = []
        conn, job_id = print_sample(stack, app, sid)
        answers.append(conn)
        answers.append(wait_job(app, sid, job_id))
        time.sleep(0.5)
    finally:
        tap.send_signal(signal.SIGINT)
        bus_text, _ = tap.communicate(timeout=10)
    assert "REQUEST" in bus_text and "printer3d" in bus_text, "the tap saw nothing"

    db_path = next((stack.data_dir / "contents").glob("*.sqlite3"))
    with sqlite3.connect(db_path) as db:
        jtis = [bytes(r[0]) for r in db.execute("SELECT jti FROM tokens")]
        caps = [r[0] for r in db.execute("SELECT cap FROM downloads")]
    assert jtis and caps
    seen = bus_text + json.dumps(answers)
    model = sample_path().read_bytes()
    for jti in jtis:
        assert jti.hex() not in seen and tk.b64e(jti) not in seen
    for cap in caps:
        assert cap not in seen
    assert "/api/download" not in seen
    assert tk.TOKEN_PREFIX not in seen  # the sealed token itself never travels on the bus either
    assert model[84:134].hex() not in seen  # the first triangle of the model


def test_plugin_host_killed_while_a_request_waits(stack: Stack) -> None:
    app = app_for(stack)
    sid = service_id(app)
    pid = stack.child_pid("plugin-host")
    os.kill(pid, signal.SIGSTOP)  # frozen: the request reaches it and is never answered
    try:
        t0 = time.monotonic()
        with pytest.raises(GotapiError) as err:
            app.request("GET", "printer3d/status", serviceId=sid)
        waited = time.monotonic() - t0
        assert err.value.code == 7
        assert waited < 20.0  # within the configured request_timeout
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)
    # The server keeps serving, and the supervisor brings the plug-in host back.
    assert requests.get(f"{stack.info['gotapi']}/gotapi/availability",
                        headers={"Origin": "http://localhost:4035"}, timeout=5).json()["result"] == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status = app.request("GET", "printer3d/status", serviceId=sid)
            assert status["state"]
            return
        except GotapiError:
            time.sleep(0.5)
    raise AssertionError("the plug-in host did not come back")


@pytest.mark.parametrize("kind,head,tail", [
    ("application/x-www-form-urlencoded", b"serviceId=x&pad=", b""),
    ("application/x-www-form-urlencoded", b"pad=", b"&accessToken=x&serviceId=x"),
    ("application/json", b'{"serviceId": "x", "pad": "', b'"}'),
])
def test_chunked_body_over_the_limit_is_1003(stack: Stack, kind: str, head: bytes,
                                             tail: bytes) -> None:
    """Without Content-Length (Transfer-Encoding: chunked) the limit still holds: 413/1003,
    never the body cut at the limit and read as if it were whole."""
    def chunks():  # a generator body: requests sends it chunked
        yield head
        for _ in range(40):
            yield b"a" * 65536
        yield tail
    r = requests.post(f"{stack.info['gotapi']}/gotapi/printer3d/connect", data=chunks(),
                      headers={"Origin": "http://localhost:4035", "Content-Type": kind},
                      timeout=30)
    assert r.status_code == 413, r.text[:300]
    assert r.json()["errorCode"] == 1003


def test_chunked_body_of_exactly_the_limit_is_read_whole(stack: Stack) -> None:
    """The edge: a chunked body of exactly max_body_bytes is not refused, and its last
    parameter (after the padding) is read."""
    tail = b"&accessToken=bogus"
    pad = (1 << 20) - len(b"pad=") - len(tail)
    r = requests.post(f"{stack.info['gotapi']}/gotapi/printer3d/connect",
                      data=iter([b"pad=", b"a" * pad, tail]),
                      headers={"Origin": "http://localhost:4035",
                               "Content-Type": "application/x-www-form-urlencoded"},
                      timeout=30)
    # 13 would mean the token after the padding was cut off; a bogus token is not 13
    assert r.status_code == 200 and r.json()["errorCode"] not in (13, 1003), r.text[:300]


@pytest.mark.parametrize("header", ["Origin", "X-GotAPI-Origin"])
def test_an_origin_header_sent_twice_is_18_over_real_http(stack: Stack, header: str) -> None:
    """The server reads headers from the WSGI environ, where Gunicorn joins a repeated
    header with a comma: two allowed origins must still be two origins, not the last one."""
    host, port = stack.info["gotapi"].removeprefix("http://").split(":")
    request = (f"GET /gotapi/availability HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"{header}: http://localhost:4035\r\n{header}: http://localhost:4035\r\n"
               "Connection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    answer = json.loads(body)
    assert answer["result"] == 1 and answer["errorCode"] == 18, answer
    assert b"access-control-allow-origin" not in head.lower()
