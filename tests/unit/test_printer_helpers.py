"""Fakes for the printer tests: a contents server on a real socket, a serial link, a slicer.

No tests here; the printer test modules import these.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nacl.public import PublicKey
from nacl.signing import SigningKey, VerifyKey

from gotapi3dp.wire.token import (
    Claims,
    b64d,
    b64e,
    download_message,
    key_hash,
    key_id,
    pop_message,
    seal,
    sign_claims,
    verify_signed,
)

ISSUER = "test-contents"
MODEL = b"solid fake\n" + os.urandom(200_000) + b"\nendsolid fake\n"


class FakeContents:
    """Just enough of the contents server: challenge, redeem (checks the PoP), download."""

    def __init__(self, printer_sign_pk: bytes, content: bytes = MODEL) -> None:
        self.cs_key = SigningKey.generate()
        self.kid = key_id(bytes(self.cs_key.verify_key))
        self.printer_vk = VerifyKey(printer_sign_pk)
        self.content = content
        self.sha256 = hashlib.sha256(content).hexdigest()
        self.served = content           # what download actually sends (tamper here)
        self.break_after: int | None = None   # bytes sent before dropping the connection
        self.breaks = 0                 # how many downloads to break
        self.nonces: set[str] = set()
        self.redeemed: set[bytes] = set()
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.cap = b64e(os.urandom(16))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def trust_map(self) -> dict[str, Any]:
        return {"issuer": ISSUER, "contentsUrl": self.url,
                "keys": [{"kid": self.kid, "publicKey": b64e(bytes(self.cs_key.verify_key))}]}

    def mint(self, printer_id: str, sign_pk: bytes, box_pk: bytes, *,
             signer: SigningKey | None = None, **claims: Any) -> str:
        """A print token as the contents server makes it; claims can be overridden."""
        signer = signer or self.cs_key
        now = int(time.time())
        fields = dict(iss=ISSUER, kid=key_id(bytes(signer.verify_key)), aud=printer_id,
                      cnf=key_hash(sign_pk), sub="acct-1", cid="model-1", chash=self.sha256,
                      jti=os.urandom(16), iat=now, exp=now + 300)
        fields.update(claims)
        return seal(sign_claims(Claims(**fields), signer), PublicKey(box_pk))

    # ----- request handling (called from the server threads) -------------------------

    def challenge(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        nonce = b64e(os.urandom(16))
        self.nonces.add(nonce)
        return 200, {"nonce": nonce, "expiresAt": time.time() + 60}

    def redeem(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        signed = b64d(body["signed"])
        claims = verify_signed(signed, {self.kid: self.cs_key.verify_key}, ISSUER)
        if body["nonce"] not in self.nonces:
            return _err(401, 1209, "POP_NONCE")
        self.nonces.discard(body["nonce"])
        msg = pop_message(signed, b64d(body["nonce"]), "POST", "/api/redeem", body["iat"])
        try:
            self.printer_vk.verify(msg, b64d(body["proof"]))
        except Exception:
            return _err(401, 1208, "POP_INVALID")
        if claims.jti in self.redeemed:
            return _err(409, 1207, "TOKEN_REPLAYED")
        self.redeemed.add(claims.jti)
        return 200, {"download": {"url": f"/api/download/{self.cap}", "expiresAt": time.time() + 600},
                     "content": {"id": claims.cid, "name": "fake", "format": "stl",
                                 "bytes": len(self.content), "sha256": self.sha256}}

    def download_ok(self, path: str, headers: Any) -> bool:
        try:
            msg = download_message("GET", path, headers["X-P3T-Printer"], int(headers["X-P3T-Time"]))
            self.printer_vk.verify(msg, b64d(headers["X-P3T-Proof"]))
        except Exception:
            return False
        return path == f"/api/download/{self.cap}"


def _err(status: int, code: int, name: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": code, "name": name, "message": name.lower()}}


def _handler(fake: FakeContents) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            fake.log.append(("POST", self.path, dict(self.headers)))
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            route = {"/api/redeem/challenge": fake.challenge, "/api/redeem": fake.redeem}
            if self.path not in route:
                return self._json(*_err(404, 1, "UNKNOWN"))
            self._json(*route[self.path](body))

        def do_GET(self) -> None:
            fake.log.append(("GET", self.path, dict(self.headers)))
            if not fake.download_ok(self.path, self.headers):
                return self._json(*_err(403, 1210, "DOWNLOAD_DENIED"))
            data, start = fake.served, 0
            rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
            etag = f'"sha256:{hashlib.sha256(data).hexdigest()}"'
            if rng and (if_range is None or if_range == etag):
                start = int(rng.removeprefix("bytes=").rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            if fake.breaks > 0 and fake.break_after is not None:
                fake.breaks -= 1
                self.wfile.write(body[:fake.break_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


class FakeLink:
    """SerialLink stand-in: 'sends' each command, acks it after `delay` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.opened = 0
        self.closed = 0
        self.streamed: list[str] = []
        self.commands: list[str] = []
        self.fail_after: int | None = None

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def stream(self, lines: Any, on_sent: Any = None, cancel: Any = None, pause: Any = None,
               park: Any = None) -> Any:
        from gotapi3dp.wire.errors import ErrorCode, P3DError
        start, sent = time.monotonic(), 0
        for line in lines:
            while pause is not None and pause.is_set() and not (cancel and cancel.is_set()):
                time.sleep(0.005)
            if cancel is not None and cancel.is_set():
                break
            cmd = line.split(";", 1)[0].strip()
            if not cmd:
                continue
            if self.fail_after is not None and sent >= self.fail_after:
                raise P3DError(ErrorCode.SERIAL_LINK, "fake link broke")
            self.streamed.append(cmd)
            sent += 1
            time.sleep(self.delay)
            if on_sent:
                on_sent(sent)
        return SimpleNamespace(lines_sent=sent, resends=2, checksum_errors=1, timeouts=0,
                               seconds=time.monotonic() - start)

    def command(self, cmd: str, timeout: float = 10.0) -> list[str]:
        self.commands.append(cmd)
        return ["ok"]

    def idle(self) -> None:
        time.sleep(0.005)

    def temperatures(self) -> dict[str, Any]:
        return {"hotend": {"actual": 21.0, "target": 0.0}, "bed": {"actual": 20.0, "target": 0.0}}


class FakeSlicer:
    """slice_file stand-in: writes `layers` layers of `per_layer` moves; records its input."""

    def __init__(self, layers: int = 5, per_layer: int = 10, error: Exception | None = None) -> None:
        self.layers, self.per_layer, self.error = layers, per_layer, error
        self.models: list[bytes] = []

    def __call__(self, model: Path, out: Path, profile: Any, progress: Any = None) -> Any:
        self.models.append(Path(model).read_bytes())
        if self.error is not None:
            raise self.error
        lines = ["; fake slicer", f";LAYER_COUNT:{self.layers}", "M104 S210", "G28"]
        for layer in range(self.layers):
            lines.append(f";LAYER:{layer}")
            lines += [f"G1 X{i} Y{layer} E0.1 ; move" for i in range(self.per_layer)]
            if progress:
                progress(layer + 1, self.layers)
        lines.append("M84")
        Path(out).write_text("\n".join(lines) + "\n")
        return SimpleNamespace(layers=self.layers, lines=len(lines), height=1.0,
                               bounds=((0, 0), (1, 1)), filament_mm=1.0, estimated_seconds=1.0)


def commands_in(slicer: FakeSlicer) -> int:
    return 3 + slicer.layers * slicer.per_layer  # M104, G28, moves, M84


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not met in time")
