"""Benchmark: secure-token issue + redeem cycles per second through the real HTTP contents server.

Starts `gotapi-3dp serve contents` (Gunicorn, one gthread worker) on a free loopback port in
a temporary data dir, pairs a simulated printer by code, uploads a model, then times N
cycles of: POST /api/tokens (issue), unseal, POST /api/redeem/challenge, POST /api/redeem
(with proof of possession). Then it splits the cost: the crypto of one cycle (sign, seal,
unseal, verify, PoP sign and verify) and the SQLite writes of one cycle (issue insert, nonce
insert, nonce consume, spend) measured in-process; HTTP is what remains.

    python bench/tokens.py [--cycles 300]
"""
from __future__ import annotations

import argparse
import io
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import trimesh
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from gotapi3dp.wire import token as p3t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    (root / "config.toml").write_text(f"[contents]\nport = {port}\n")
    proc = subprocess.Popen([sys.executable, "-m", "gotapi3dp.cli", "--config",
                             str(root / "config.toml"), "--data-dir", str(root / "data"),
                             "serve", "contents"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(url + "/api/health", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("contents server did not start")


class Printer:
    def __init__(self) -> None:
        self.id = "bench-printer"
        self.sign = SigningKey.generate()
        self.box = PrivateKey.generate()

    def pair(self, http: requests.Session, url: str, key: str) -> None:
        iat = int(time.time())
        sk, bk = bytes(self.sign.verify_key), bytes(self.box.public_key)
        proof = self.sign.sign(p3t.pair_message(self.id, sk, bk, iat)).signature
        shown = http.post(url + "/api/pairing", json={
            "printerId": self.id, "name": "bench", "signKey": p3t.b64e(sk),
            "boxKey": p3t.b64e(bk), "iat": iat, "proof": p3t.b64e(proof)}).json()
        http.post(url + "/api/pairing/confirm", headers={"X-Api-Key": key},
                  json={"code": shown["userCode"]}).raise_for_status()

    def redeem(self, http: requests.Session, url: str, token: str) -> None:
        signed = p3t.unseal(token, self.box)
        nonce = http.post(url + "/api/redeem/challenge", json={"printerId": self.id}).json()["nonce"]
        iat = int(time.time())
        proof = self.sign.sign(p3t.pop_message(signed, p3t.b64d(nonce), "POST", "/api/redeem",
                                               iat)).signature
        r = http.post(url + "/api/redeem", json={"printerId": self.id, "signed": p3t.b64e(signed),
                                                 "nonce": nonce, "iat": iat,
                                                 "proof": p3t.b64e(proof)})
        r.raise_for_status()


def http_cycles(url: str, key: str, cycles: int) -> float:
    http = requests.Session()
    printer = Printer()
    printer.pair(http, url, key)
    stl = trimesh.creation.box(extents=(20, 20, 10)).export(file_type="stl")
    cid = http.post(url + "/api/contents", headers={"X-Api-Key": key},
                    files={"file": ("box.stl", io.BytesIO(stl))}).json()["id"]
    body = {"printerId": printer.id, "contentId": cid}
    for _ in range(10):                                      # warm up
        printer.redeem(http, url, http.post(url + "/api/tokens", json=body,
                                            headers={"X-Api-Key": key}).json()["token"])
    t0 = time.perf_counter()
    for _ in range(cycles):
        token = http.post(url + "/api/tokens", json=body, headers={"X-Api-Key": key}).json()["token"]
        printer.redeem(http, url, token)
    return (time.perf_counter() - t0) / cycles


def crypto_cycle(n: int) -> float:
    """Everything cryptographic in one issue + redeem, both sides, in-process."""
    cs, ps, pb = SigningKey.generate(), SigningKey.generate(), PrivateKey.generate()
    kid = p3t.key_id(bytes(cs.verify_key))
    t0 = time.perf_counter()
    for _ in range(n):
        now = int(time.time())
        claims = p3t.Claims(iss="cs", kid=kid, aud="p", cnf=p3t.key_hash(bytes(ps.verify_key)),
                            sub="a", cid="c", chash="0" * 64, jti=secrets.token_bytes(16),
                            iat=now, exp=now + 600)
        token = p3t.seal(p3t.sign_claims(claims, cs), pb.public_key)
        signed = p3t.unseal(token, pb)                            # printer
        p3t.verify_signed(signed, {kid: cs.verify_key}, "cs")
        nonce = secrets.token_bytes(32)
        proof = ps.sign(p3t.pop_message(signed, nonce, "POST", "/api/redeem", now)).signature
        p3t.verify_signed(signed, {kid: cs.verify_key}, "cs")   # server
        p3t.verify_detached(ps.verify_key, p3t.pop_message(signed, nonce, "POST", "/api/redeem",
                                                           now), proof)
    return (time.perf_counter() - t0) / n


def sqlite_cycle(root: Path, n: int) -> float:
    """The four write transactions of one cycle, on the server's schema and pragmas."""
    from contents_server.db import Database
    db = Database(root / "bench.sqlite3")
    with db.tx() as conn:
        conn.execute("INSERT INTO accounts VALUES ('a', 'a', x'00', 0)")
        conn.execute("INSERT INTO printers VALUES ('p', 'a', 'p', x'00', x'00', 0)")
    t0 = time.perf_counter()
    for i in range(n):
        jti, nonce = os.urandom(16), os.urandom(32)
        with db.tx() as conn:
            conn.execute("INSERT INTO tokens (jti, printer_id, content_id, account, state, "
                         "issued_at, expires_at) VALUES (?, 'p', 'c', 'a', 'ISSUED', 0, 600)", (jti,))
            conn.execute("INSERT INTO audit (ts, event) VALUES (0, 'token:issued')")
        with db.tx() as conn:
            conn.execute("INSERT INTO nonces (nonce, printer_id, expires_at) VALUES (?, 'p', 1e12)",
                         (nonce,))
        with db.tx() as conn:
            conn.execute("UPDATE nonces SET used = 1 WHERE nonce = ?", (nonce,))
        with db.tx() as conn:
            conn.execute("UPDATE tokens SET state = 'REDEEMED', answer = '{}' WHERE jti = ?", (jti,))
            conn.execute("INSERT INTO audit (ts, event) VALUES (0, 'token:redeemed')")
    db.close()
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, url = start_server(root)
        try:
            key = (root / "data" / "contents" / "demo.key").read_text().strip()
            total = http_cycles(url, key, args.cycles)
        finally:
            proc.terminate()
            proc.wait(10)
        crypto = crypto_cycle(max(100, args.cycles))
        sql = sqlite_cycle(root, max(100, args.cycles))
    rest = max(0.0, total - crypto - sql)
    print(f"issue+redeem through HTTP: {1 / total:.0f} cycles/s ({total * 1e3:.2f} ms/cycle, "
          f"{args.cycles} cycles, 4 HTTP requests each)")
    for label, part in (("crypto", crypto), ("SQLite (synchronous=FULL)", sql),
                        ("HTTP + Flask + JSON (rest)", rest)):
        print(f"  {label:<28} {part * 1e3:6.2f} ms  {100 * part / total:5.1f} %")


if __name__ == "__main__":
    main()
