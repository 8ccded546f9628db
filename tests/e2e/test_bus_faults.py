"""The bus under faults, with real processes: a plug-in host that freezes and dies is shown
offline by serviceDiscovery, and the same serviceId works again once it is back.

Uses its own `gotapi-3dp up` (not the session stack): killing the plug-in host here must
not disturb tests that share the session stack.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from gotapi3dp.client import GotapiClient, GotapiError

from .conftest import Stack, running_stack
from .test_flow import app_for, service_id

pytestmark = pytest.mark.e2e

OFFLINE_WITHIN = 15.0  # heartbeat expiry is 3 s (3 x 1 s); generous for a loaded machine
BACK_WITHIN = 90.0     # supervisor back-off (1 s first) + start-up + READY + discovery


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("bus-faults")) as s:
        yield s


def _wait_for(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    """`probe()` until it returns something truthy; its last failure is in the message."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except GotapiError as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"{what} not within {timeout:g} s (last: {last})")


def _listed(app: GotapiClient, sid: str) -> dict[str, Any] | None:
    services = app.request("GET", "serviceDiscovery")["services"]
    return next((s for s in services if s["id"] == sid), None)


def _host_pid(stack: Stack, not_pid: int | None = None) -> int | None:
    out = subprocess.run(["pgrep", "-f", "--", f"--data-dir {stack.data_dir} .*serve plugin-host$"],
                         capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in out if int(p) != not_pid]
    return pids[0] if pids else None


def test_killed_plugin_host_is_listed_offline_then_the_same_service_id_works(
        own_stack: Stack) -> None:
    app = app_for(own_stack)
    sid = service_id(app)
    assert app.request("GET", "printer3d/status", serviceId=sid)["state"]
    pid = own_stack.child_pid("plugin-host")

    os.kill(pid, signal.SIGSTOP)  # frozen: no heartbeats, no answers
    try:
        entry = _wait_for("the service listed offline", lambda: (
            (e := _listed(app, sid)) is not None and e["online"] is False and e), OFFLINE_WITHIN)
        assert entry["id"] == sid  # still listed (from the cache), under the same id
        with pytest.raises(GotapiError) as err:
            app.request("GET", "printer3d/status", serviceId=sid)
        assert err.value.code == 17  # ILLEGAL_SERVER_STATE: the plug-in is not connected
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)

    new_pid = _wait_for("a restarted plug-in host", lambda: _host_pid(own_stack, pid),
                        BACK_WITHIN)
    assert new_pid != pid
    _wait_for("the service listed online again", lambda: (
        (e := _listed(app, sid)) is not None and e["online"] is True), BACK_WITHIN)
    status = _wait_for("status on the same serviceId", lambda: app.request(
        "GET", "printer3d/status", serviceId=sid), BACK_WITHIN)
    assert status["state"] and "temperatures" in status
    assert "restarting" in Path(own_stack.log_path).read_text()
