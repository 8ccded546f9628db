"""Small command-line defects: a missing model file, a closed stdout pipe, a stray blank line."""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import msgpack
import pytest
import zmq

from gotapi3dp import app_cli, cli
from gotapi3dp.sample import sample_path
from gotapi3dp.wire.busproto import HEARTBEAT, PROTOCOL, READY, Announce, PluginInfo
from gotapi3dp.wire.ids import new_id
from gotapi_server.bus import Bus

from .test_cli import run


# -- print: a path that is not there is not a content id ---------------------------------------
@pytest.mark.parametrize("target", ["/nonexistent.stl", "models/part", "part.3MF", "part.obj",
                                    "part.gcode", "./part", "~/part", "..\\part"])
def test_print_of_a_missing_file_says_so_before_any_request(tmp_path: Path, target: str) -> None:
    out = run("--data-dir", str(tmp_path / "d"), "print", target, timeout=60)   # no up.json
    assert out.returncode == 1
    assert out.stderr == f"gotapi-3dp: error: no such file: {target}\n"
    assert "contentId" not in out.stdout + out.stderr


def test_print_of_a_directory_says_it_is_not_a_file(tmp_path: Path) -> None:
    out = run("--data-dir", str(tmp_path / "d"), "print", str(tmp_path), timeout=60)
    assert out.returncode == 1 and f"not a file: {tmp_path}" in out.stderr


def test_content_ids_are_never_taken_for_paths() -> None:
    for content_id in [new_id() for _ in range(200)] + ["stl", "a-obj", "_3mf", "x" * 64]:
        assert not app_cli.looks_like_path(content_id), content_id
        app_cli.check_target(content_id)                       # no error: goes to the server


def test_resolve_content_passes_a_content_id_through_without_a_request() -> None:
    content_id = new_id()
    said: list[str] = []
    assert app_cli.resolve_content({}, content_id, said.append) == content_id and not said


# -- a closed stdout pipe is the reader saying "enough" -----------------------------------------
@pytest.fixture
def busy_bus() -> Iterator[Bus]:
    """A bus with one host that announces itself and heartbeats: steady tap traffic."""
    bus = Bus("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", heartbeat=0.05, liveness=100)
    bus.start()
    stop = threading.Event()

    def host() -> None:                                  # its socket lives in this thread only
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.routing_id = b"pipe-host"
        sock.connect(bus.endpoint)
        announce = Announce("pipe-host", [PluginInfo("echo", "Echo", "1.0", ["echo"])])
        sock.send_multipart([PROTOCOL, READY, msgpack.packb(announce.to_map())])
        while not stop.wait(0.02):
            sock.send_multipart([PROTOCOL, HEARTBEAT])
            while sock.poll(0):
                sock.recv_multipart()
        sock.close()
        ctx.term()

    thread = threading.Thread(target=host, daemon=True)
    thread.start()
    yield bus
    stop.set()
    thread.join(timeout=5)
    bus.stop()


@pytest.mark.parametrize("as_json", [True, False])
def test_bus_tap_into_a_closed_pipe_exits_quietly(tmp_path: Path, busy_bus: Bus,
                                                  as_json: bool) -> None:
    """`gotapi-3dp bus tap --json | head -1`: exit 0, nothing on stderr but the banner."""
    proc = subprocess.Popen([sys.executable, "-m", "gotapi3dp.cli", "--data-dir", str(tmp_path / "d"),
                             "bus", "tap", "--endpoint", busy_bus.tap_endpoint,
                             *(["--json"] if as_json else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the tap printed nothing"
        assert proc.stdout.readline().strip()
        proc.stdout.close()                            # the reader has had enough
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.returncode == 0, stderr
    assert "Broken pipe" not in stderr and "Exception" not in stderr and "error" not in stderr


TABLE_INTO_A_PIPE = """
import sys
from gotapi3dp import app_cli, cli
app_cli.load_up = lambda config: {{}}
app_cli.contents_call = lambda up, method, path: {{"contents": [
    {{"id": str(i), "name": "part-%05d" % i, "format": "stl"}} for i in range(5000)]}}
sys.exit(cli.main(["--data-dir", {data_dir!r}, "contents", "list"]))
"""


def test_a_rich_table_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`gotapi-3dp contents list | true`: the reader is gone before the table is written.
    Rich's own answer to that broken pipe is exit 1."""
    read_end, write_end = os.pipe()
    os.close(read_end)                                 # the reader has had enough already
    try:
        out = subprocess.run([sys.executable, "-c",
                              TABLE_INTO_A_PIPE.format(data_dir=str(tmp_path / "d"))],
                             stdout=write_end, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)
    assert out.returncode == 0, out.stderr
    assert out.stderr == b""


def test_a_broken_pipe_elsewhere_is_still_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Only stdout's reader leaving is quiet; a broken pipe to a server or port is reported."""
    def broken(args: object, config: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(cli, "cmd_bus_tap", broken)
    assert cli.main(["--data-dir", str(tmp_path / "d"), "bus", "tap"]) == 1
    assert "gotapi-3dp: error: [Errno 32] Broken pipe" in capsys.readouterr().err


# -- slice: no blank line from the progress display ---------------------------------------------
def test_slice_of_a_missing_model_prints_only_the_error(tmp_path: Path) -> None:
    out = run("--data-dir", str(tmp_path / "d"), "slice", str(tmp_path / "nonexistent.stl"),
              "-o", str(tmp_path / "x.gcode"), timeout=60)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith("gotapi-3dp: error: MODEL_INVALID")


def test_slice_output_starts_with_the_summary(tmp_path: Path) -> None:
    gcode = tmp_path / "s.gcode"
    out = run("--data-dir", str(tmp_path / "d"), "slice", str(sample_path()), "-o", str(gcode),
              "--set", "layer_height=0.3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{gcode}: ")


# -- jobs: ids are never cut, --json is the printer's jobs as they are ---------------------------
JOBS = [{"id": f"8e8ac0f613d8c23{i:017x}", "state": state, "progress": 42.5, "layer": 3,
         "layers": 120, "sliced": 120, "contentId": f"Kq3v_{i}xY8sPzR-2mWnT7bLcD",
         "createdAt": 1_700_000_000.0, "updatedAt": 1_700_000_100.0,
         "stats": {"linesSent": 9, "resends": 0, "checksumErrors": 0, "printSeconds": 1.5},
         **({"error": {"code": 3004, "name": "PRINTER_FAULT",
                       "message": "thermal runaway on the hotend heater"}} if i else {})}
        for i, state in enumerate(("printing", "interrupted", "failed"))]

JOBS_TABLE = """
import sys
from gotapi3dp import app_cli, cli
app_cli.load_up = lambda config: {{"printer": "http://127.0.0.1:9", "dataDir": {data_dir!r}}}
app_cli.call = lambda *args, **kwargs: {{"jobs": {jobs!r}}}
sys.exit(cli.main(["--data-dir", {data_dir!r}, "jobs"]))
"""


def _jobs_data_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / "d"
    (data_dir / "printer").mkdir(parents=True)
    (data_dir / "printer" / "api.key").write_text("k" * 32)
    return data_dir


@pytest.mark.parametrize("columns", ["80", "60", "200"])
def test_jobs_table_never_cuts_an_id(tmp_path: Path, columns: str) -> None:
    """`gotapi-3dp jobs` at 80 columns, or into a pipe: every id whole, to paste into
    `gotapi-3dp job resume JOB_ID`; the other columns fold, nothing is elided."""
    data_dir = _jobs_data_dir(tmp_path)
    out = subprocess.run([sys.executable, "-c", JOBS_TABLE.format(data_dir=str(data_dir),
                                                                  jobs=JOBS)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": columns, "TERM": "dumb"})
    assert out.returncode == 0, out.stderr
    assert "…" not in out.stdout
    for job in JOBS:
        assert job["id"] in out.stdout and job["contentId"] in out.stdout
    if columns == "200":                                # room for the error text unfolded
        assert "PRINTER_FAULT: thermal runaway" in out.stdout


def test_jobs_json_is_the_printers_jobs_without_stats(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = _jobs_data_dir(tmp_path)
    monkeypatch.setattr(app_cli, "load_up", lambda config: {"printer": "http://127.0.0.1:9",
                                                            "dataDir": str(data_dir)})
    monkeypatch.setattr(app_cli, "call", lambda *args, **kwargs: {"jobs": JOBS})
    assert cli.main(["--data-dir", str(data_dir), "jobs", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == [{k: v for k, v in job.items() if k != "stats"} for job in JOBS]
    assert all("errorText" not in job for job in shown)
