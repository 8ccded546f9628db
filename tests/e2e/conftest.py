"""Start the real four-process stack (`gotapi-3dp up`) on free loopback ports."""
from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

UP_TIMEOUT = 120.0


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def write_config(path: Path, request_timeout: float = 20.0, gotapi_extra: str = "") -> dict[str, int]:
    gotapi, bus, tap, contents, printer = free_ports(5)
    path.write_text(f"""
[gotapi]
port = {gotapi}
bus_endpoint = "tcp://127.0.0.1:{bus}"
tap_endpoint = "tcp://127.0.0.1:{tap}"
request_timeout = {request_timeout}
{gotapi_extra}

[plugin_host]
bus_endpoint = "tcp://127.0.0.1:{bus}"
contents_url = "http://127.0.0.1:{contents}"

[contents]
port = {contents}

[printer]
port = {printer}
""")
    return {"gotapi": gotapi, "bus": bus, "tap": tap, "contents": contents, "printer": printer}


class Stack:
    """A running `gotapi-3dp up` and what its up.json says."""

    def __init__(self, root: Path, gotapi_extra: str = "") -> None:
        self.root = root
        self.data_dir = root / "data"
        self.config_path = root / "config.toml"
        self.ports = write_config(self.config_path, gotapi_extra=gotapi_extra)
        self.log_path = root / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gotapi3dp.cli", "--config", str(self.config_path),
                               "--data-dir", str(self.data_dir), *args],
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gotapi3dp.cli", "--config", str(self.config_path),
                 "--data-dir", str(self.data_dir), "up"], stdout=log, stderr=subprocess.STDOUT)
        up_json = self.data_dir / "up.json"
        deadline = time.monotonic() + UP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gotapi-3dp up exited:\n{self.log_path.read_text()}")
            if up_json.exists():
                self.info = json.loads(up_json.read_text())
                return
            time.sleep(0.2)
        raise RuntimeError(f"gotapi-3dp up did not come up:\n{self.log_path.read_text()}")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def child_pid(self, name: str) -> int:
        """PID of a supervised process, found by its command line."""
        out = subprocess.run(["pgrep", "-f", "--", f"--data-dir {self.data_dir} .*serve {name}$"],
                             capture_output=True, text=True).stdout.split()
        return int(out[0])

    def read_key(self, process: str, name: str) -> str:
        return (self.data_dir / process / name).read_text().strip()


@contextlib.contextmanager
def running_stack(root: Path, extra_config: str = "", gotapi_extra: str = "") -> Iterator[Stack]:
    """A started stack, stopped at the end with exit code 0 and no process left behind.
    `extra_config`: TOML appended to the config; `gotapi_extra`: lines of its [gotapi]."""
    s = Stack(root, gotapi_extra)
    if extra_config:
        with open(s.config_path, "a") as fh:
            fh.write("\n" + extra_config)
    s.start()
    try:
        yield s
    finally:
        code = s.stop()
        assert code == 0, f"gotapi-3dp up exited with {code}:\n{s.log_path.read_text()}"
        for name in ("contents", "printer", "gotapi", "plugin-host"):
            assert subprocess.run(["pgrep", "-f", "--", f"--data-dir {s.data_dir} .*serve {name}$"],
                                  capture_output=True).returncode == 1, f"{name} still running"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s
