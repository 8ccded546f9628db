"""The Printer Authentication flow end to end, over HTTP only, against four real processes."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import trimesh

from gotapi3dp.client import GotapiClient, GotapiError
from gotapi3dp.sample import sample_path
from printer.gcode import checksum

from .conftest import Stack

pytestmark = pytest.mark.e2e

ORIGIN = "http://localhost:4035"
SCOPES = ["printer3d", "serviceDiscovery", "serviceInformation"]
LAYER_HEIGHT = 0.2
BED_CENTRE = 110.0


def app_for(stack: Stack) -> GotapiClient:
    app = GotapiClient(stack.info["gotapi"], origin=ORIGIN, timeout=60)
    app.authorize("e2e test", SCOPES)
    return app


def service_id(app: GotapiClient) -> str:
    services = app.request("GET", "serviceDiscovery")["services"]
    online = [s for s in services if s["online"]]
    assert online, services
    return str(online[0]["id"])


def wait_job(app: GotapiClient, sid: str, job_id: str, timeout: float = 180.0,
             until: tuple[str, ...] = ("completed", "failed", "cancelled")) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = app.request("GET", "printer3d/job", serviceId=sid, jobId=job_id)["job"]
        if job["state"] in until:
            return dict(job)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {until}: {job}")


def print_sample(stack: Stack, app: GotapiClient, sid: str) -> tuple[dict[str, Any], str]:
    conn = app.request("POST", "printer3d/connect", serviceId=sid,
                       contentId=stack.info["sampleContentId"], contentsKey=stack.info["contentsKey"])
    job_id = app.request("POST", "printer3d/print", serviceId=sid,
                         connectionId=conn["connectionId"])["jobId"]
    return conn, str(job_id)


_LINE = re.compile(r"^N(\d+) (.*)\*(\d+)$")
_WORD = re.compile(r"([XYZEF])(-?\d+\.?\d*)")


def parse_firmware_log(path: Path) -> list[tuple[int, str]]:
    """(line number, command) of every executed line, checking each checksum."""
    out = []
    for raw in path.read_text().splitlines():
        m = _LINE.match(raw)
        assert m, f"firmware log line not numbered with a checksum: {raw!r}"
        assert checksum(raw.rsplit("*", 1)[0].encode()) == int(m.group(3)), raw
        out.append((int(m.group(1)), m.group(2)))
    return out


def extruding_moves(commands: list[str]) -> list[tuple[float, float, float, float, float]]:
    """(x0, y0, x1, y1, z) of each G1 that extrudes, tracking absolute position and E."""
    x = y = z = e = 0.0
    moves = []
    for cmd in commands:
        words = cmd.split()
        if not words:
            continue
        if words[0] == "G92":
            e = dict((w[0], float(w[1:])) for w in words[1:]).get("E", e)
            continue
        if words[0] not in ("G0", "G1"):
            continue
        v = {k: float(n) for k, n in _WORD.findall(cmd)}
        nx, ny, nz, ne = v.get("X", x), v.get("Y", y), v.get("Z", z), v.get("E", e)
        if ne > e + 1e-9 and (nx != x or ny != y):
            moves.append((x, y, nx, ny, nz))
        x, y, z, e = nx, ny, nz, ne
    return moves


def test_full_print_through_gotapi(stack: Stack) -> None:
    app = app_for(stack)
    sid = service_id(app)
    conn, job_id = print_sample(stack, app, sid)
    sample = trimesh.load(sample_path())
    assert conn["content"]["bytes"] == sample_path().stat().st_size
    assert re.fullmatch(r"[0-9a-f]{64}", conn["content"]["sha256"])

    job = wait_job(app, sid, job_id)
    assert job["state"] == "completed", job
    assert job["progress"] == 100
    assert job["layers"] == round(sample.extents[2] / LAYER_HEIGHT)

    log_path = stack.data_dir / "printer" / "firmware.log"
    executed = parse_firmware_log(log_path)
    # Every line exactly once and in order: numbers go up by one, restarting after each M110.
    expected = None
    for number, command in executed:
        if command.startswith("M110"):
            expected = int(command.split("N")[1]) + 1
            continue
        assert expected is None or number == expected, (number, expected, command)
        expected = number + 1
    commands = [c for _, c in executed]
    moves = extruding_moves(commands)
    assert moves, "no extruding moves reached the firmware"
    first_z = min(m[4] for m in moves)
    body = [m for m in moves if m[4] > first_z + 1e-6]  # skip a first-layer skirt or prime line
    xs = [v for m in body for v in (m[0], m[2])]
    ys = [v for m in body for v in (m[1], m[3])]
    half_x, half_y = sample.extents[0] / 2, sample.extents[1] / 2
    assert abs(min(xs) - (BED_CENTRE - half_x)) <= 1.0 and abs(max(xs) - (BED_CENTRE + half_x)) <= 1.0
    assert abs(min(ys) - (BED_CENTRE - half_y)) <= 1.0 and abs(max(ys) - (BED_CENTRE + half_y)) <= 1.0
    top_z = max(m[4] for m in moves)
    assert abs(top_z - sample.extents[2]) <= LAYER_HEIGHT


def test_printing_the_same_connection_twice_is_one_job(stack: Stack) -> None:
    app = app_for(stack)
    sid = service_id(app)
    conn, job_id = print_sample(stack, app, sid)
    again = app.request("POST", "printer3d/print", serviceId=sid, connectionId=conn["connectionId"])
    assert again["jobId"] == job_id
    assert wait_job(app, sid, job_id)["state"] == "completed"


def test_a_connection_is_bound_to_the_origin_that_made_it(stack: Stack) -> None:
    """Another app (its own origin and token) cannot print with a connectionId it saw."""
    app = app_for(stack)
    sid = service_id(app)
    conn = app.request("POST", "printer3d/connect", serviceId=sid,
                       contentId=stack.info["sampleContentId"], contentsKey=stack.info["contentsKey"])
    other = GotapiClient(stack.info["gotapi"], origin="http://127.0.0.1:8080", timeout=60)
    other.authorize("another app", SCOPES)
    with pytest.raises(GotapiError) as refused:
        other.request("POST", "printer3d/print", serviceId=sid, connectionId=conn["connectionId"])
    assert refused.value.code == 1110


def test_unknown_service_is_error_6(stack: Stack) -> None:
    app = app_for(stack)
    with pytest.raises(GotapiError) as err:
        app.request("GET", "printer3d/status", serviceId="nope.printer3d")
    assert err.value.code == 6


def test_missing_access_token_is_error_13(stack: Stack) -> None:
    app = app_for(stack)
    sid = service_id(app)
    app.access_token = None
    with pytest.raises(GotapiError) as err:
        app.request("GET", "printer3d/status", serviceId=sid)
    assert err.value.code == 13


def test_status_reports_temperatures(stack: Stack) -> None:
    app = app_for(stack)
    status = app.request("GET", "printer3d/status", serviceId=service_id(app))
    assert status["state"]
    assert set(status["temperatures"]) >= {"hotend", "bed"}


def test_non_mesh_content_is_refused(stack: Stack, tmp_path: Path) -> None:
    junk = tmp_path / "notes.stl"
    junk.write_bytes(b"this is not a mesh at all\n" * 20)
    result = stack.cli("contents", "add", str(junk), "--url", stack.info["contents"],
                       "--key", stack.info["contentsKey"])
    assert result.returncode == 1
    assert "1103" in result.stderr or "CONTENT_INVALID" in result.stderr, result.stderr


def test_contents_add_prints_metadata(stack: Stack) -> None:
    model = Path(__file__).resolve().parents[3] / "shared" / "models" / "Voron_Design_Cube_v7.stl"
    result = stack.cli("contents", "add", str(model), "--name", "Voron cube",
                       "--url", stack.info["contents"], "--key", stack.info["contentsKey"])
    assert result.returncode == 0, result.stderr
    assert '"id"' in result.stdout and "Voron cube" in result.stdout
