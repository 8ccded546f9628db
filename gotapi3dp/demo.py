"""`gotapi-3dp demo`: the whole Printer Authentication flow, driven as an application would.

Starts the stack, then over GotAPI HTTP only: authorize, discover, connect (Service
Connecting), print (Printing Command), follow the job to its end; then a summary.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .client import GotapiClient, GotapiError
from .config import Config
from .supervisor import Supervisor, UpInfo

DEMO_ORIGIN = "http://localhost:4035"
SCOPES = ["printer3d", "serviceDiscovery", "serviceInformation"]
POLL_INTERVAL = 0.25


@dataclass
class DemoResult:
    job: dict[str, Any]
    stats: dict[str, Any]
    seconds: float


def run_flow(info: UpInfo, console: Console, job_timeout: float = 600.0) -> DemoResult:
    """Authorize, discover, connect, print and follow the job through GotAPI."""
    started = time.monotonic()
    app = GotapiClient(info.gotapi, origin=DEMO_ORIGIN)
    app.authorize("gotapi-3dp demo", SCOPES)
    services = app.request("GET", "serviceDiscovery")["services"]
    service = next(s for s in services if s["online"] and s["id"] == info.serviceId)
    console.print(f"printer [bold]{service['name']}[/] ({service['id']})")
    conn = app.request("POST", "printer3d/connect", serviceId=service["id"],
                       contentId=info.sampleContentId, contentsKey=info.contentsKey)
    content = conn["content"]
    console.print(f"connected: [bold]{content['name']}[/] ({content['format']}, "
                  f"{content['bytes']} bytes, sha256 {content['sha256'][:12]}...)")
    job_id = app.request("POST", "printer3d/print", serviceId=service["id"],
                         connectionId=conn["connectionId"])["jobId"]
    job = _follow(app, service["id"], job_id, console, job_timeout)
    stats = _printer_stats(info, job_id)
    return DemoResult(job, stats, time.monotonic() - started)


def _follow(app: GotapiClient, service_id: str, job_id: str, console: Console,
            timeout: float) -> dict[str, Any]:
    columns = (TextColumn("[bold]{task.fields[state]:<14}"), BarColumn(),
               TextColumn("{task.percentage:>5.1f} %"), TextColumn("layer {task.fields[layer]}"),
               TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("print", total=100, state="queued", layer="-")
        while True:
            job = app.request("GET", "printer3d/job", serviceId=service_id, jobId=job_id)["job"]
            layer = f"{job['layer']}/{job['layers']}" if job["layers"] else "-"
            progress.update(task, completed=job["progress"], state=job["state"], layer=layer)
            if job["state"] in ("completed", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:.0f} s")
            time.sleep(POLL_INTERVAL)


def _printer_stats(info: UpInfo, job_id: str) -> dict[str, Any]:
    """Serial statistics, from the printer's own API (operator view, not the app's)."""
    key_path = f"{info.dataDir}/printer/api.key"
    try:
        with open(key_path) as fh:
            key = fh.read().strip()
        resp = requests.get(f"{info.printer}/api/jobs/{job_id}", headers={"X-Api-Key": key}, timeout=10)
        return dict(resp.json()["job"].get("stats") or {})
    except (OSError, requests.RequestException, ValueError, KeyError):
        return {}


def print_summary(result: DemoResult, console: Console) -> None:
    job, stats = result.job, result.stats
    colour = "green" if job["state"] == "completed" else "red"
    console.print(f"\njob {job['id']}: [bold {colour}]{job['state']}[/]")
    if job.get("error"):
        err = job["error"]
        console.print(f"  error {err.get('code')} {err.get('name', '')}: {err.get('message', '')}")
    console.print(f"  layers            {job['layers']}")
    console.print(f"  G-code lines sent {stats.get('linesSent', '?')}")
    console.print(f"  resends           {stats.get('resends', '?')}")
    console.print(f"  checksum errors   {stats.get('checksumErrors', '?')}")
    console.print(f"  print time        {stats.get('printSeconds', 0):.1f} s")
    console.print(f"  total time        {result.seconds:.1f} s")


def run_demo(config: Config, config_path: str | None, console: Console) -> int:
    supervisor = Supervisor(config, config_path, say=lambda m: console.print(f"[dim]{m}[/]"))
    t0 = time.monotonic()
    try:
        with console.status("starting the four processes..."):
            info = supervisor.start()
        console.print(f"stack up in {time.monotonic() - t0:.1f} s (GotAPI server {info.gotapi})")
        result = run_flow(info, console)
        print_summary(result, console)
        return 0 if result.job["state"] == "completed" else 1
    except GotapiError as exc:
        console.print(f"[red]GotAPI error {exc.code}: {exc.message}[/]")
        return 1
    finally:
        with console.status("stopping..."):
            supervisor.stop()
