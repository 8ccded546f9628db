"""kill -9 of the printer process mid-print: `interrupted`, safe end sequence, explicit resume
through GotAPI, and every line from the layer in progress on executed exactly once."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from gotapi3dp.client import GotapiClient, GotapiError
from gotapi3dp.config import SliceProfile
from gotapi3dp.sample import sample_path
from printer.gcode import parse_line
from printer.recovery import load_lines, scan_layers
from printer.serial_link import commands

from .conftest import Stack
from .test_flow import app_for, print_sample, service_id

pytestmark = pytest.mark.e2e

HOST_COMMANDS = ("M110", "M155", "M105")     # the link's own handshake, auto-report, probes


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own (killing its printer disturbs no other test), firmware at 40 kB/s."""
    s = Stack(tmp_path_factory.mktemp("crash"))
    s.config_path.write_text(s.config_path.read_text() + "\n[printer.firmware]\nbaud = 400000\nheat_rate = 500.0\n")
    s.start()
    try:
        yield s
    finally:
        s.stop()


def job_of(app: GotapiClient, sid: str, job_id: str) -> dict[str, Any] | None:
    try:
        return dict(app.request("GET", "printer3d/job", serviceId=sid, jobId=job_id)["job"])
    except GotapiError:
        return None                              # the printer is down or restarting


def wait_until(app: GotapiClient, sid: str, job_id: str, check: Any,
               timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = job_of(app, sid, job_id)
        if job is not None and check(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never got there: {job}")


def kill_printer(stack: Stack) -> None:
    """SIGKILL the Gunicorn worker that prints (and its master), then wait until both are gone."""
    master = stack.child_pid("printer")
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(master)], capture_output=True,
                                              text=True).stdout.split()]
    assert workers, "no printer worker"
    for pid in [*workers, master]:
        os.kill(pid, signal.SIGKILL)
    for pid in workers:                     # not our children: poll until the pid is gone
        while Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid):
            time.sleep(0.01)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def executed(lines: list[str]) -> list[str]:
    parsed = [parse_line(line.encode()) for line in lines]
    return [p.command for p in parsed if p.command.split(" ")[0] not in HOST_COMMANDS]


def test_kill_9_mid_print_then_resume_from_the_layer(slow_stack: Stack, tmp_path: Path) -> None:
    from printer.slicer import slice_file
    gcode = tmp_path / "sample.gcode"
    slice_file(sample_path(), gcode, SliceProfile())      # what the printer sliced
    lines = load_lines(gcode)
    expected, layers = list(commands(lines)), scan_layers(lines)

    app = app_for(slow_stack)
    sid = service_id(app)
    _, job_id = print_sample(slow_stack, app, sid)
    running = wait_until(app, sid, job_id, lambda j: j["state"] == "printing" and j["layer"] >= 8)
    assert running["layer"] < running["layers"] - 8, "the print ended too soon to be killed"

    log_path = slow_stack.data_dir / "printer" / "firmware.log"
    kill_printer(slow_stack)
    before = log_path.read_text().splitlines()            # the firmware died with the process

    stopped = wait_until(app, sid, job_id, lambda j: j["state"] == "interrupted")
    time.sleep(1.0)                                        # never resumed on its own
    assert job_of(app, sid, job_id)["state"] == "interrupted"
    app.request("PUT", "printer3d/resume", serviceId=sid, jobId=job_id)
    done = wait_until(app, sid, job_id, lambda j: j["state"] in ("completed", "failed"))
    assert done["state"] == "completed", done

    after = executed(log_path.read_text().splitlines()[len(before):])
    ran_before = executed(before[:-1])                    # the last line may be cut by the kill
    safe_end = after.index("M84")
    assert {"M104 S0", "M140 S0", "M107"} <= set(after[:safe_end])   # made safe on restart
    marker = len(after) - 1 - after[::-1].index("G28 X Y")
    tail = after[marker + 8:]                              # the prelude ends 7 lines later
    start = len(expected) - len(tail)
    assert tail == expected[start:]                        # every line from there, exactly once
    layer = layers.layer_at(start)
    assert start == layers.start_of(layer)                 # ... from the start of a layer
    assert abs(layer - stopped["layer"]) <= 1              # ... the one in progress
    assert ran_before[:start] == expected[:start]          # nothing before it was skipped
    assert after[marker - 7:marker - 3] == [f"M140 S{SliceProfile().bed_temp:g}",
                                             f"M104 S{SliceProfile().hotend_temp:g}",
                                             f"M190 S{SliceProfile().bed_temp:g}",
                                             f"M109 S{SliceProfile().hotend_temp:g}"]


def test_killing_only_the_printer_master_never_leaves_two_printers(slow_stack: Stack) -> None:
    """SIGKILL of the printer's Gunicorn master alone orphans its worker, which holds the
    firmware and prints on. The supervisor ends it before it starts the new printer, so two
    processes never drive one printer; the job is then interrupted, resumable by hand."""
    app = app_for(slow_stack)
    sid = service_id(app)
    _, job_id = print_sample(slow_stack, app, sid)
    wait_until(app, sid, job_id, lambda j: j["state"] == "printing" and j["layer"] >= 3)
    master = slow_stack.child_pid("printer")
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(master)], capture_output=True,
                                              text=True).stdout.split()]
    assert workers, "no printer worker"
    os.kill(master, signal.SIGKILL)

    deadline = time.monotonic() + 30
    while any(_proc_state(pid) != "Z" for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_proc_state(pid) == "Z" for pid in workers), "the orphaned worker lives on"
    wait_until(app, sid, job_id, lambda j: j["state"] == "interrupted")
    assert slow_stack.child_pid("printer") != master
    assert "left processes running; stopped them" in slow_stack.log_path.read_text()
    app.request("DELETE", "printer3d/job", serviceId=sid, jobId=job_id)
    wait_until(app, sid, job_id, lambda j: j["state"] == "cancelled")
