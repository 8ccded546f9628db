"""The README's main job: `gotapi-3dp demo` prints the bundled sample through all four
processes, on its own, and leaves nothing running."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_config

pytestmark = pytest.mark.e2e


def test_demo_prints_the_sample_and_stops_everything(tmp_path: Path) -> None:
    config, data_dir = tmp_path / "config.toml", tmp_path / "data"
    write_config(config)
    run = subprocess.run([sys.executable, "-m", "gotapi3dp.cli", "--config", str(config),
                          "--data-dir", str(data_dir), "demo"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "completed" in run.stdout and "layers" in run.stdout
    sent = next(line for line in run.stdout.splitlines() if "G-code lines sent" in line)
    assert int(sent.split()[-1]) > 1000
    assert not (data_dir / "up.json").exists()
    for name in ("contents", "printer", "gotapi", "plugin-host"):
        assert subprocess.run(["pgrep", "-f", "--", f"--data-dir {data_dir} .*serve {name}$"],
                              capture_output=True).returncode == 1, f"{name} still running"
