"""Benchmark: `GET /gotapi/printer3d/status` through the Intent bus and the plug-in, against
the same GotAPI server answering the same JSON without the bus, at 1, 8 and 32 clients.

    python bench/gotapi_roundtrip.py [--seconds 5] [--clients 1,8,32]

Starts `gotapi-3dp up` on free loopback ports in a temporary data dir (the bus path), and a
second GotAPI server (same `create_app`, same checks, auth and forwarder, same gunicorn
settings) whose bus is an in-process stand-in that answers discovery and `status` with
the JSON the real plug-in gave (the direct path). Prints one table and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ORIGIN = "http://localhost:4035"
SERVICE = "printer-1.printer3d"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# ---- the direct path: the same server, a bus that answers in-process ----------------------

@dataclass
class _Record:
    id: str = "printer3d"
    name: str = "3D Printer"
    version: str = "bench"
    profiles: list[str] = field(default_factory=lambda: ["printer3d"])
    host_id: str = "bench"
    online: bool = True
    last_seen: float = 0.0
    apis: dict[str, Any] = field(default_factory=dict)


class InProcessBus:
    """The Bus surface, answering without ZeroMQ or a plug-in."""

    def __init__(self, status: dict[str, Any], spec: dict[str, Any]) -> None:
        self._status = status
        self._records = [_Record(apis={"printer3d": spec})]

    def plugins(self) -> list[_Record]:
        return self._records

    def on_event(self, callback: Any) -> None: ...
    def notify(self, intent: Any, plugin_id: str | None = None) -> None: ...

    def request(self, intent: Any, plugin_id: str, timeout: float) -> Any:
        if intent.profile == "networkServiceDiscovery":
            return intent.response({"services": [{"id": "printer-1", "name": "p", "online": True}]})
        return intent.response(dict(self._status))


def serve_direct(port: int, data_dir: str, status: dict[str, Any]) -> None:
    from gotapi3dp.config import GotapiConfig
    from gotapi3dp.serving import run_gunicorn
    from gotapi_server.app import create_app
    from plugin_host.printer3d.plugin import SPEC_PATH

    config = GotapiConfig(port=port)
    spec = json.loads(SPEC_PATH.read_text())
    run_gunicorn(lambda: create_app(config, Path(data_dir), InProcessBus(status, spec)),
                 "127.0.0.1", port, threads=config.threads, name="bench-direct")


# ---- load ---------------------------------------------------------------------------------

def authorize(base: str) -> str:
    h = {"Origin": ORIGIN}
    cid = requests.get(f"{base}/gotapi/authorization/grant", headers=h, timeout=10).json()["clientId"]
    return str(requests.get(f"{base}/gotapi/authorization/accessToken", headers=h, timeout=10,
                            params={"clientId": cid, "scope": "printer3d,serviceDiscovery",
                                    "applicationName": "bench"}).json()["accessToken"])


def load(base: str, token: str, clients: int, seconds: float) -> dict[str, float]:
    url = f"{base}/gotapi/printer3d/status"
    params = {"serviceId": SERVICE, "accessToken": token}
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        http = requests.Session()
        http.headers["Origin"] = ORIGIN
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            body = http.get(url, params=params, timeout=30).json()
            latencies[i].append(time.perf_counter() - t0)
            errors[i] += body.get("result") != 0

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t_start = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    flat = sorted(x for per in latencies for x in per)
    q = statistics.quantiles(flat, n=100, method="inclusive")
    return {"rps": len(flat) / elapsed, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "errors": float(sum(errors)), "requests": float(len(flat))}


def wait_up(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, headers={"Origin": ORIGIN}, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="1,8,32")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    root = Path(tempfile.mkdtemp(prefix="gotapi-bench-"))
    gotapi, bus, tap, contents, printer, direct_port = free_ports(6)
    config = root / "config.toml"
    config.write_text(f"""
[gotapi]
port = {gotapi}
bus_endpoint = "tcp://127.0.0.1:{bus}"
tap_endpoint = "tcp://127.0.0.1:{tap}"
[plugin_host]
bus_endpoint = "tcp://127.0.0.1:{bus}"
contents_url = "http://127.0.0.1:{contents}"
[contents]
port = {contents}
[printer]
port = {printer}
""")
    up = subprocess.Popen([sys.executable, "-m", "gotapi3dp.cli", "--config", str(config),
                           "--data-dir", str(root / "data"), "up"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    direct = None
    try:
        deadline = time.monotonic() + 180
        while not (root / "data" / "up.json").exists():
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gotapi-3dp up did not start")
            time.sleep(0.3)
        bus_base = f"http://127.0.0.1:{gotapi}"
        bus_token = authorize(bus_base)
        status = requests.get(f"{bus_base}/gotapi/printer3d/status", headers={"Origin": ORIGIN},
                              params={"serviceId": SERVICE, "accessToken": bus_token},
                              timeout=10).json()
        payload = {k: v for k, v in status.items() if k not in ("result", "product", "version")}
        ctx = multiprocessing.get_context("spawn")
        direct = ctx.Process(target=serve_direct,
                             args=(direct_port, str(root / "direct"), payload), daemon=True)
        direct.start()
        direct_base = f"http://127.0.0.1:{direct_port}"
        wait_up(f"{direct_base}/gotapi/availability")
        direct_token = authorize(direct_base)
        results: dict[str, dict[int, dict[str, float]]] = {"bus": {}, "direct": {}}
        for clients in levels:
            for name, base, token in (("direct", direct_base, direct_token),
                                      ("bus", bus_base, bus_token)):
                load(base, token, clients, 1.0)  # warm-up
                results[name][clients] = load(base, token, clients, args.seconds)
        report(results, levels)
    finally:
        if direct is not None and direct.pid:
            os.kill(direct.pid, signal.SIGTERM)
            direct.join(10)
        up.send_signal(signal.SIGINT)
        up.wait(60)
    return 0


def report(results: dict[str, dict[int, dict[str, float]]], levels: list[int]) -> None:
    print(f"{'clients':>7} | {'direct req/s':>12} {'p50 ms':>7} {'p99 ms':>7} | "
          f"{'bus req/s':>10} {'p50 ms':>7} {'p99 ms':>7} | {'bus/direct':>10}")
    for c in levels:
        d, b = results["direct"][c], results["bus"][c]
        print(f"{c:>7} | {d['rps']:>12.0f} {d['p50_ms']:>7.2f} {d['p99_ms']:>7.2f} | "
              f"{b['rps']:>10.0f} {b['p50_ms']:>7.2f} {b['p99_ms']:>7.2f} | "
              f"{b['rps'] / d['rps']:>9.0%}")
    errors = sum(r["errors"] for path in results.values() for r in path.values())
    print(json.dumps({"results": results, "errors": errors}))


if __name__ == "__main__":
    sys.exit(main())
