"""The `gotapi-3dp` command line as a user runs it: subprocesses, exit codes, messages."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gotapi3dp.config import FirmwareConfig
from gotapi3dp.sample import sample_path
from printer.firmware import PtyFirmware


def run(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gotapi3dp.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def test_help_lists_every_command() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in ("up", "demo", "serve", "bus", "slice", "contents", "pair", "stream"):
        assert command in out.stdout


def test_unknown_command_is_a_usage_error() -> None:
    out = run("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_slice_writes_gcode(tmp_path: Path) -> None:
    gcode = tmp_path / "sample.gcode"
    out = run("--data-dir", str(tmp_path / "d"), "slice", str(sample_path()), "-o", str(gcode),
              "--set", "layer_height=0.3")
    assert out.returncode == 0, out.stderr
    assert "layers" in out.stdout
    text = gcode.read_text()
    assert ";LAYER:0" in text and "G1" in text
    assert text.count(";LAYER:") == 1 + round((12 - 0.2) / 0.3)


def test_slice_refuses_a_non_mesh_with_a_message(tmp_path: Path) -> None:
    junk = tmp_path / "junk.stl"
    junk.write_text("hello")
    out = run("slice", str(junk), "-o", str(tmp_path / "x.gcode"))
    assert out.returncode == 1
    assert "MODEL_INVALID" in out.stderr
    assert not (tmp_path / "x.gcode").exists()


def test_bad_set_and_bad_config_are_clear_errors(tmp_path: Path) -> None:
    out = run("slice", str(sample_path()), "-o", str(tmp_path / "x.gcode"), "--set", "nozzle=big")
    assert out.returncode == 1 and "--set nozzle=big" in out.stderr
    config = tmp_path / "c.toml"
    config.write_text("[gotapi]\nportt = 1\n")
    out = run("--config", str(config), "slice", str(sample_path()), "-o", str(tmp_path / "x.gcode"))
    assert out.returncode == 1 and "unknown setting gotapi.portt" in out.stderr


def test_serve_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[contents]\nhost = "0.0.0.0"\n')
    out = run("--config", str(config), "--data-dir", str(tmp_path / "d"), "serve", "contents", timeout=30)
    assert out.returncode == 1 and "not a loopback address" in out.stderr


def test_stream_sends_a_file_to_a_serial_port(tmp_path: Path) -> None:
    gcode = tmp_path / "move.gcode"
    gcode.write_text("; a comment\nG28\n" + "".join(f"G1 X{i} Y{i} F3000\n" for i in range(200)) + "M84\n")
    log = tmp_path / "fw.log"
    firmware = PtyFirmware(FirmwareConfig(), log)
    port = firmware.start()
    try:
        out = run("stream", str(gcode), "--port", port)
    finally:
        firmware.stop()
    assert out.returncode == 0, out.stderr
    assert "lines 202" in out.stdout
    executed = [line.split(" ", 1)[1].rsplit("*", 1)[0] for line in log.read_text().splitlines()
                if not any(own in line for own in ("M110", "M155", "M105"))]  # the link's own
    assert executed == ["G28"] + [f"G1 X{i} Y{i} F3000" for i in range(200)] + ["M84"]


def test_stream_to_a_missing_port_fails_cleanly(tmp_path: Path) -> None:
    gcode = tmp_path / "g.gcode"
    gcode.write_text("G28\n")
    out = run("stream", str(gcode), "--port", str(tmp_path / "no-such-tty"), timeout=60)
    assert out.returncode == 1 and "SERIAL_LINK" in out.stderr


def test_slice_with_profile_set_and_preview(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('infill_pattern = "grid"\nskirt_loops = 2\n')
    gcode, previews = tmp_path / "s.gcode", tmp_path / "prev"
    out = run("--data-dir", str(tmp_path / "d"), "slice", str(sample_path()), "-o", str(gcode),
              "--profile", str(profile), "--set", "top_layers=3", "--preview", str(previews),
              "--layers", "0,-1")
    assert out.returncode == 0, out.stderr
    text = gcode.read_text()
    assert ";TYPE:SKIRT" in text and ";TYPE:SKIN" in text and ";Filament used [g]:" in text
    files = sorted(p.name for p in previews.iterdir())
    assert len(files) == 2 and files[0] == "layer-0000.svg"
    assert "<svg" in (previews / files[0]).read_text() and "SKIRT" in (previews / files[0]).read_text()


def test_slice_profile_errors_are_clear(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text("infill_density = 20\n")
    out = run("slice", str(sample_path()), "-o", str(tmp_path / "x.gcode"), "--profile", str(profile))
    assert out.returncode == 1 and "infill_density is a fraction from 0 to 1" in out.stderr
    out = run("slice", str(sample_path()), "-o", str(tmp_path / "x.gcode"), "--preview",
              str(tmp_path / "p"), "--layers", "a")
    assert out.returncode == 1 and "--layers a: expected layer numbers" in out.stderr


def test_firmware_serve_on_tcp_streams_through_a_socket_url(tmp_path: Path) -> None:
    import signal

    refused = run("firmware", "serve", "--tcp", "0.0.0.0:0", timeout=30)
    assert refused.returncode == 1 and "not a loopback address" in refused.stderr
    gcode = tmp_path / "move.gcode"
    gcode.write_text("G28\n" + "".join(f"G1 X{i} Y{i} F3000\n" for i in range(100)))
    log = tmp_path / "fw.log"
    server = subprocess.Popen([sys.executable, "-m", "gotapi3dp.cli", "--data-dir", str(tmp_path / "d"),
                               "firmware", "serve", "--tcp", "127.0.0.1:0", "--advanced-ok",
                               "--baud", "250000", "--log", str(log)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[3].rstrip(",")        # "virtual firmware at URL, ..."
        assert url.startswith("socket://127.0.0.1:")
        out = run("stream", str(gcode), "--port", url)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
    assert out.returncode == 0, out.stderr
    assert "lines 101" in out.stdout and server.returncode == 0
    executed = [line.split(" ", 1)[1].rsplit("*", 1)[0] for line in log.read_text().splitlines()
                if not any(own in line for own in ("M110", "M155", "M105"))]
    assert executed == ["G28"] + [f"G1 X{i} Y{i} F3000" for i in range(100)]


def test_global_options_work_after_the_command_too(tmp_path: Path) -> None:
    """Review: `gotapi-3dp up --data-dir D` was a usage error, and `up --help` listed none."""
    assert "--data-dir" in run("up", "--help").stdout
    after = run("bus", "key", "--data-dir", str(tmp_path))
    assert after.returncode == 0, after.stderr
    assert (tmp_path / "gotapi" / "bus" / "server.key").exists()
    before = run("--data-dir", str(tmp_path), "bus", "key")
    assert before.stdout == after.stdout            # the same key: the same data dir
    other = tmp_path / "other"
    winner = run("--data-dir", str(tmp_path), "bus", "key", "--data-dir", str(other))
    assert winner.returncode == 0 and winner.stdout != after.stdout   # the later one wins
    assert (other / "gotapi" / "bus" / "server.key").exists()
