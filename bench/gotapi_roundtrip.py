"""Benchmark: `GET /gotapi/printer3d/status` through the Intent bus and the plug-in, against
the same GotAPI server answering the same JSON without the bus, at 1, 8 and 32 clients.

    python bench/gotapi_roundtrip.py [--seconds 5] [--clients 1,8,32] [--rounds 1]
                                     [--loadgen auto|wrk|python] [--processes 4]

Starts `gotapi-3dp up` on free loopback ports in a temporary data dir (the bus path), and a
second GotAPI server (same `create_app`, same checks, auth and forwarder, same gunicorn
settings) whose bus is an in-process stand-in that answers discovery and `status` with
the JSON the real plug-in gave (the direct path), and a third, bare Flask app on the same
gunicorn settings returning the same bytes with no GotAPI work at all (the floor: what
Flask + gunicorn cost by themselves on this machine). Prints one table and a JSON line.

The load generator is the same for all paths: `wrk` (one thread, one keep-alive connection
per client, its own latency histogram) when it is on the PATH (`apt-get install wrk`), else
Python clients that imitate it: threads spread over a few processes, each with one
persistent connection on a raw socket sending a precomputed request. Prefer wrk: the
Python clients' own GIL hand-offs add milliseconds to the tail they measure once the
server answers in 2-3 ms. wrk does not read bodies, so each run is bracketed by one checked
request (`"result": 0`) on the same URL.

On a virtual machine the hypervisor may run other guests on our vCPUs: every run records the
share of CPU time stolen from this machine meanwhile (`steal`, from /proc/stat), which is
what makes a round slow for no reason of its own. Rounds alternate the paths, so each path
gets its own chances at a quiet moment, and the best round of each is kept. This VM's speed
also drifts by 20-30 % within a minute without any steal showing, so the best rounds of two
paths may come from different minutes: with several rounds the script also prints the median
over rounds of each round's own bus/direct ratio (the two paths run back to back in a
round, so a slow minute slows both) and the median p99 of each path.

It also prints the CPU time (user + system, from /proc) each path's server processes spent
per request: the GotAPI server's own (the gunicorn worker, with ZeroMQ's I/O thread on the
bus path), and on the bus path the other processes' (plug-in host, printer, supervisor).
A slow minute moves it less than it moves requests/s (on this VM still by 20-30 %), so
alternate two versions of the code when comparing them by it; `bus - direct` is what the
bus costs the GotAPI server per request.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import resource
import shutil
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
from urllib.parse import urlencode


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
    from plugin_host import printer3d  # the package only: the plug-in module imports requests

    config = GotapiConfig(port=port)
    spec = json.loads(Path(printer3d.__file__).with_name("printer3d.json").read_text())
    run_gunicorn(lambda: create_app(config, Path(data_dir), InProcessBus(status, spec)),
                 "127.0.0.1", port, threads=config.threads, worker=config.worker,
                 connections=config.connections, name="bench-direct")


def serve_floor(port: int, body: bytes) -> None:
    """The floor: a bare Flask app on the same gunicorn settings returning the same bytes
    (no GotAPI checks, no auth, no forwarder): what Flask + gunicorn cost on their own."""
    from flask import Flask, Response

    from gotapi3dp.config import GotapiConfig
    from gotapi3dp.serving import run_gunicorn

    def make() -> Flask:
        app = Flask("floor")

        @app.get("/gotapi/printer3d/status")
        def status() -> Response:
            return Response(body, mimetype="application/json")
        return app

    config = GotapiConfig()
    run_gunicorn(make, "127.0.0.1", port, threads=config.threads, worker=config.worker,
                 connections=config.connections, name="bench-floor")


# ---- load ---------------------------------------------------------------------------------

def _http_get(url: str, **kwargs: Any) -> Any:
    """`requests.get`, imported here: the servers this script spawns re-import it as their
    main module, and `requests` (with ssl) must not be imported before gevent patches them."""
    import requests

    return requests.get(url, **kwargs)


def authorize(base: str) -> str:
    h = {"Origin": ORIGIN}
    cid = _http_get(f"{base}/gotapi/authorization/grant", headers=h, timeout=10).json()["clientId"]
    return str(_http_get(f"{base}/gotapi/authorization/accessToken", headers=h, timeout=10,
                         params={"clientId": cid, "scope": "printer3d,serviceDiscovery",
                                 "applicationName": "bench"}).json()["accessToken"])


def _client(host: str, port: int, path: str, threads: int, start_at: float, seconds: float,
            out: Any) -> None:
    """One load process: `threads` threads, each one persistent HTTP/1.1 keep-alive
    connection on a raw socket (like wrk: a precomputed request, the response framed by its
    Content-Length), sending the request back to back from `start_at` (wall clock) for
    `seconds`. Puts (latencies in s, errors, CPU seconds of this process) on `out`."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Origin: {ORIGIN}\r\n\r\n").encode()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker() -> None:
        sock = socket.create_connection((host, port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mine: list[float] = []
        bad = 0
        buffer = b""
        time.sleep(max(0.0, start_at - time.time()))
        stop = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            if t0 >= stop:
                break
            sock.sendall(request)
            head, body, buffer = _read_response(sock, buffer)
            mine.append(time.perf_counter() - t0)
            bad += not head.startswith(b"HTTP/1.1 200") or b'"result":0' not in body
        sock.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put((latencies, errors[0], usage.ru_utime + usage.ru_stime))


def _read_response(sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes, bytes]:
    """(status line + headers, body, what was read beyond it) of one HTTP/1.1 response."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = buffer[:end]
            at = head.lower().find(b"\r\ncontent-length:")
            if at < 0:
                raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
            length = int(head[at + 17:].split(b"\r\n", 1)[0])
            if len(buffer) >= end + 4 + length:
                body = buffer[end + 4:end + 4 + length]
                return head, body, buffer[end + 4 + length:]
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed the connection")
        buffer += chunk


def load(base: str, token: str, clients: int, seconds: float,
         processes: int = 4) -> dict[str, float]:
    """`clients` concurrent clients spread over up to `processes` load processes (so the
    load generator is not one GIL); the same generator drives both paths."""
    host, port = base.split("//", 1)[1].rsplit(":", 1)
    path = "/gotapi/printer3d/status?" + urlencode({"serviceId": SERVICE, "accessToken": token})
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    n = max(1, min(processes, clients))
    shares = [clients // n + (i < clients % n) for i in range(n)]
    start_at = time.time() + 0.5  # every process is up and connected by then
    procs = [ctx.Process(target=_client, args=(host, int(port), path, k, start_at, seconds, out))
             for k in shares]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for proc in procs:
        proc.join(10)
    flat = sorted(x for lat, _, _ in results for x in lat)
    q = statistics.quantiles(flat, n=100, method="inclusive")
    return {"rps": len(flat) / seconds, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "errors": float(sum(e for _, e, _ in results)), "requests": float(len(flat)),
            "client_cpu_s": sum(c for _, _, c in results)}


def load_wrk(base: str, token: str, clients: int, seconds: float) -> dict[str, float]:
    """One wrk run: `clients` keep-alive connections on one wrk thread for `seconds`."""
    url = f"{base}/gotapi/printer3d/status?" + urlencode({"serviceId": SERVICE,
                                                          "accessToken": token})
    check_status(url)
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--latency",
                          "-H", f"Origin: {ORIGIN}", url],
                         capture_output=True, text=True, check=True).stdout
    check_status(url)
    requests_done = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = float(bad.group(1)) if bad else 0.0
    errors += sum(float(x) for x in sock.groups()) if sock else 0.0
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": _wrk_ms(out, "50%"), "p99_ms": _wrk_ms(out, "99%"),
            "errors": errors, "requests": requests_done, "client_cpu_s": float("nan")}


def _wrk_ms(out: str, quantile: str) -> float:
    value, unit = re.search(rf"^\s+{quantile}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def check_status(url: str) -> None:
    answer = _http_get(url, headers={"Origin": ORIGIN}, timeout=10).json()
    if answer.get("result") != 0:
        raise RuntimeError(f"status did not answer result 0: {answer}")


def cpu_ticks() -> tuple[int, int]:
    """(stolen, total) CPU ticks of the whole machine so far; (0, 0) where /proc is absent."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def descendants(root: int) -> list[int]:
    """`root` and every process below it (from /proc; [] where /proc is absent)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found if Path(f"/proc/{root}").exists() else []


def role_of(pid: int) -> str:
    """Which part a process of `gotapi-3dp up` is ("gotapi", "plugin-host", ...)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if b"serve" in argv and argv.index(b"serve") + 1 < len(argv):
        return argv[argv.index(b"serve") + 1].decode()
    return "supervisor"


def cpu_seconds(pids: dict[int, str]) -> dict[str, float]:
    """CPU time (user + system) used so far by each role's processes."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    used: dict[str, float] = {}
    for pid, role in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[role] = used.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return used


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else 0.0


def wait_up(url: str, timeout: float = 120.0) -> None:
    import requests

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
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="wrk if it is on the PATH (auto), or the Python clients")
    parser.add_argument("--processes", type=int, default=4,
                        help="Python clients: load processes they are spread over (default 4)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the paths this many times per level; keep each "
                             "path's best round (other load on the machine only slows), "
                             "and with 2 or more also report medians over the rounds")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    if args.loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not on the PATH (apt-get install wrk)")

    def run_load(base: str, token: str, clients: int, seconds: float,
                 pids: dict[int, str]) -> dict[str, float]:
        before, used_before = cpu_ticks(), cpu_seconds(pids)
        if use_wrk:
            run = load_wrk(base, token, clients, seconds)
        else:
            run = load(base, token, clients, seconds, args.processes)
        run["steal_pct"] = steal_pct(before, cpu_ticks())
        used = cpu_seconds(pids)
        for role in used:
            used[role] -= used_before.get(role, 0.0)
        per_request = 1e6 / max(run["requests"], 1.0)
        run["gotapi_cpu_us"] = used.pop("gotapi", 0.0) * per_request
        run["other_cpu_us"] = sum(used.values()) * per_request
        return run
    print(f"load generator: {'wrk' if use_wrk else 'Python clients'}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="gotapi-bench-"))
    gotapi, bus, tap, contents, printer, direct_port, floor_port = free_ports(7)
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
    direct = floor = None
    try:
        deadline = time.monotonic() + 180
        while not (root / "data" / "up.json").exists():
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gotapi-3dp up did not start")
            time.sleep(0.3)
        bus_base = f"http://127.0.0.1:{gotapi}"
        bus_token = authorize(bus_base)
        status = _http_get(f"{bus_base}/gotapi/printer3d/status", headers={"Origin": ORIGIN},
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
        body = json.dumps({"result": 0, **payload}, separators=(",", ":")).encode()
        floor = ctx.Process(target=serve_floor, args=(floor_port, body), daemon=True)
        floor.start()
        floor_base = f"http://127.0.0.1:{floor_port}"
        wait_up(f"{floor_base}/gotapi/printer3d/status")
        pids = {"bus": {pid: role_of(pid) for pid in descendants(up.pid)},
                "direct": dict.fromkeys(descendants(direct.pid or 0), "gotapi"),
                "floor": dict.fromkeys(descendants(floor.pid or 0), "gotapi")}
        results: dict[str, dict[int, dict[str, float]]] = {"bus": {}, "direct": {}, "floor": {}}
        rounds: dict[int, list[dict[str, dict[str, float]]]] = {c: [] for c in levels}
        for clients in levels:
            for _ in range(args.rounds):
                this_round: dict[str, dict[str, float]] = {}
                for name, base, token in (("floor", floor_base, ""),
                                          ("direct", direct_base, direct_token),
                                          ("bus", bus_base, bus_token)):
                    run_load(base, token, clients, 1.0, pids[name])  # warm-up
                    run = this_round[name] = run_load(base, token, clients, args.seconds,
                                                      pids[name])
                    best = results[name].get(clients)
                    if best is None or run["rps"] > best["rps"]:
                        results[name][clients] = run
                rounds[clients].append(this_round)
        report(results, levels)
        if args.rounds > 1:
            report_medians(rounds, levels)
    finally:
        for server in (direct, floor):
            if server is not None and server.pid:
                os.kill(server.pid, signal.SIGTERM)
                server.join(10)
        up.send_signal(signal.SIGINT)
        up.wait(60)
    return 0


def report(results: dict[str, dict[int, dict[str, float]]], levels: list[int]) -> None:
    print(f"{'clients':>7} | {'floor req/s':>11} {'p99 ms':>7} | {'direct req/s':>12} "
          f"{'p50 ms':>7} {'p99 ms':>7} | {'bus req/s':>10} {'p50 ms':>7} {'p99 ms':>7} | "
          f"{'bus/direct':>10} | {'steal % f/d/b':>13}")
    for c in levels:
        f, d, b = results["floor"][c], results["direct"][c], results["bus"][c]
        print(f"{c:>7} | {f['rps']:>11.0f} {f['p99_ms']:>7.2f} | "
              f"{d['rps']:>12.0f} {d['p50_ms']:>7.2f} {d['p99_ms']:>7.2f} | "
              f"{b['rps']:>10.0f} {b['p50_ms']:>7.2f} {b['p99_ms']:>7.2f} | "
              f"{b['rps'] / d['rps']:>9.0%} | "
              f"{f['steal_pct']:>3.1f} /{d['steal_pct']:>4.1f} /{b['steal_pct']:>4.1f}")
    print("CPU time per request, us (user + system, from /proc; of the rounds above): the "
          "GotAPI server's, and on the bus path also the other processes' (plug-in host, "
          "printer, supervisor)")
    print(f"{'clients':>7} | {'floor':>7} | {'direct':>7} | {'bus':>7} {'others':>7} | "
          f"{'bus - direct':>12}")
    for c in levels:
        f, d, b = results["floor"][c], results["direct"][c], results["bus"][c]
        print(f"{c:>7} | {f['gotapi_cpu_us']:>7.0f} | {d['gotapi_cpu_us']:>7.0f} | "
              f"{b['gotapi_cpu_us']:>7.0f} {b['other_cpu_us']:>7.0f} | "
              f"{b['gotapi_cpu_us'] - d['gotapi_cpu_us']:>12.0f}")
    errors = sum(r["errors"] for path in results.values() for r in path.values())
    print(json.dumps({"results": results, "errors": errors}))


def report_medians(rounds: dict[int, list[dict[str, dict[str, float]]]],
                   levels: list[int]) -> None:
    """Medians over rounds: each round's own bus/direct ratio, and each path's p99."""
    print(f"median over {len(rounds[levels[0]])} rounds (paired: bus/direct of the same round)")
    print(f"{'clients':>7} | {'direct req/s':>12} {'p99 ms':>7} {'CPU us':>6} | "
          f"{'bus req/s':>10} {'p99 ms':>7} {'CPU us':>6} {'others':>6} | {'bus/direct':>10}")
    medians: dict[int, dict[str, float]] = {}
    for c in levels:
        runs = rounds[c]
        m = medians[c] = {
            "direct_rps": statistics.median(r["direct"]["rps"] for r in runs),
            "direct_p99_ms": statistics.median(r["direct"]["p99_ms"] for r in runs),
            "bus_rps": statistics.median(r["bus"]["rps"] for r in runs),
            "bus_p99_ms": statistics.median(r["bus"]["p99_ms"] for r in runs),
            "paired_ratio": statistics.median(r["bus"]["rps"] / r["direct"]["rps"]
                                              for r in runs),
            "direct_cpu_us": statistics.median(r["direct"]["gotapi_cpu_us"] for r in runs),
            "bus_cpu_us": statistics.median(r["bus"]["gotapi_cpu_us"] for r in runs),
            "bus_other_cpu_us": statistics.median(r["bus"]["other_cpu_us"] for r in runs),
        }
        print(f"{c:>7} | {m['direct_rps']:>12.0f} {m['direct_p99_ms']:>7.2f} "
              f"{m['direct_cpu_us']:>6.0f} | {m['bus_rps']:>10.0f} {m['bus_p99_ms']:>7.2f} "
              f"{m['bus_cpu_us']:>6.0f} {m['bus_other_cpu_us']:>6.0f} | "
              f"{m['paired_ratio']:>9.0%}")
    print(json.dumps({"medians": medians, "rounds": rounds}))


if __name__ == "__main__":
    sys.exit(main())
