"""The CLI app as a user runs it: `gotapi-3dp print|printers|contents list|jobs` as subprocesses
against the running stack (the session `stack` fixture)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trimesh

from .conftest import Stack

pytestmark = pytest.mark.e2e
PRINT_TIMEOUT = 600.0


def model(path: Path, x: float, y: float, z: float) -> Path:
    """A box STL whose bytes no other test has uploaded (a fresh content each time)."""
    jitter = int(uuid.uuid4().int % 1000) / 10000
    trimesh.creation.box(extents=(x + jitter, y, z)).export(path)
    return path


def test_print_a_file_adds_it_then_follows_the_job_to_completed(stack: Stack, tmp_path: Path) -> None:
    path = model(tmp_path / "cube.stl", 12, 12, 2)
    out = stack.cli("print", str(path), timeout=PRINT_TIMEOUT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "added cube.stl to the contents server as " in out.stdout
    assert "following the job: " in out.stdout
    assert "printing" in out.stdout
    last = out.stdout.strip().splitlines()[-1]
    assert ": completed (100 %, layer " in last
    layer, layers = last.rsplit("layer ", 1)[1].rstrip(")").split("/")
    assert layer == layers and int(layers) > 0


def test_print_by_content_id_on_a_named_printer(stack: Stack, tmp_path: Path) -> None:
    added = stack.cli("contents", "add", str(model(tmp_path / "m.stl", 10, 8, 1.6)), "--prints", "3")
    assert added.returncode == 0, added.stderr
    content_id = json.loads(added.stdout)["id"]
    out = stack.cli("print", content_id, "--printer", stack.info["serviceId"], timeout=PRINT_TIMEOUT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "completed" in out.stdout.strip().splitlines()[-1]

    listed = stack.cli("contents", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert content_id in [c["id"] for c in json.loads(listed.stdout)]
    jobs = stack.cli("jobs", "--json")
    assert jobs.returncode == 0, jobs.stderr
    mine = [j for j in json.loads(jobs.stdout) if j.get("contentId") == content_id]
    assert [j["state"] for j in mine] == ["completed"]


def test_a_failing_job_exits_1_and_says_why(stack: Stack, tmp_path: Path) -> None:
    path = model(tmp_path / "too-big.stl", 400, 30, 2)        # wider than the 220 mm bed
    out = stack.cli("print", str(path), timeout=PRINT_TIMEOUT)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "failed" in out.stdout
    assert "error 1305 MODEL_INVALID" in out.stdout


def test_an_unknown_content_is_a_readable_gotapi_error(stack: Stack) -> None:
    out = stack.cli("print", "no-such-content", timeout=PRINT_TIMEOUT)
    assert out.returncode == 1
    assert "GotAPI error 1102" in out.stdout


def test_printers_lists_the_printer_online(stack: Stack) -> None:
    out = stack.cli("printers", "--json")
    assert out.returncode == 0, out.stderr
    printers = json.loads(out.stdout)
    assert any(p["id"] == stack.info["serviceId"] and p["online"] for p in printers)
    table = stack.cli("printers")
    assert table.returncode == 0 and "Virtual Printer" in table.stdout


def test_no_running_stack_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "gotapi3dp.cli", "--data-dir", str(tmp_path),
                          "printers"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "no running stack" in out.stderr and "gotapi-3dp up" in out.stderr


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    s = Stack(tmp_path_factory.mktemp("cli-slow-stack"))
    with open(s.config_path, "a") as fh:
        fh.write("\n[printer.firmware]\nbaud = 200000\n")
    s.start()
    yield s
    assert s.stop() == 0, s.log_path.read_text()


def test_ctrl_c_asks_and_cancels_the_job(slow_stack: Stack) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gotapi3dp.cli", "--config", str(slow_stack.config_path),
         "--data-dir", str(slow_stack.data_dir), "print", slow_stack.info["sampleContentId"]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    seen = []
    for line in proc.stdout:              # wait until the job is printing
        seen.append(line)
        if line.startswith("printing"):
            break
    assert any(line.startswith("printing") for line in seen), "".join(seen) + proc.stderr.read()  # type: ignore[union-attr]
    os.kill(proc.pid, signal.SIGINT)
    proc.stdin.write("y\n")
    proc.stdin.flush()
    rest, err = proc.communicate(timeout=PRINT_TIMEOUT)
    out = "".join(seen) + rest
    assert proc.returncode == 1, out + err
    assert "Cancel job " in out and "cancel requested" in out
    assert ": cancelled (" in out.strip().splitlines()[-1]
