"""GotAPI-5 against the real stack: the WebSocket handshake and its error codes, and every
job change of a real print reaching the app in order (printer -> plug-in -> bus -> socket)."""
from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import simple_websocket

from gotapi3dp.client import GotapiClient
from gotapi3dp.wire.jobs import JobState, can_transition

from .conftest import Stack
from .test_flow import SCOPES, print_sample, service_id

pytestmark = pytest.mark.e2e

TERMINAL = {"completed", "failed", "cancelled"}


def ws_url(stack: Stack) -> str:
    return stack.info["gotapi"].replace("http://", "ws://") + "/gotapi/websocket"


def app_at(stack: Stack, origin: str) -> GotapiClient:
    app = GotapiClient(stack.info["gotapi"], origin=origin, timeout=60)
    app.authorize("events test", SCOPES)
    return app


def open_socket(stack: Stack, origin: str | None, first: str | None
                ) -> tuple[simple_websocket.Client, dict[str, Any]]:
    headers = {"Origin": origin} if origin else {}
    ws = simple_websocket.Client.connect(ws_url(stack), headers=headers)
    if first is not None:
        ws.send(first)
    return ws, json.loads(ws.receive(timeout=20))


def close(ws: simple_websocket.Client) -> None:
    try:
        ws.close()
    except simple_websocket.ConnectionClosed:
        pass  # the server closed it first (after an error answer)
    except OSError:
        pass  # ...and the client's reader thread closed the socket before `connected` said so


class Listener:
    """Reads events off a socket on a thread, into a queue."""

    def __init__(self, ws: simple_websocket.Client) -> None:
        self.ws, self.events = ws, queue.Queue()  # type: ignore[var-annotated]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            while True:
                text = self.ws.receive()
                if text is None:
                    return
                self.events.put(json.loads(text))
        except simple_websocket.ConnectionClosed:
            return

    def until_terminal(self, job_id: str, timeout: float = 180.0) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=1.0)
            except queue.Empty:
                continue
            if event.get("job", {}).get("id") == job_id:
                seen.append(event)
                if event["job"]["state"] in TERMINAL:
                    return seen
        raise AssertionError(f"no terminal event for {job_id}; saw {seen[-3:]}")


@pytest.mark.parametrize("origin,first,code", [
    ("http://localhost:5101", '{"nope": 1}', 1),       # no accessToken
    (None, '{"accessToken": "x"}', 2),                 # no origin
    ("http://localhost:5101", '{"accessToken": "forged"}', 3),
    ("http://localhost:5101", "not json {", 5),
])
def test_websocket_handshake_errors(stack: Stack, origin: str | None, first: str,
                                    code: int) -> None:
    ws, answer = open_socket(stack, origin, first)
    close(ws)
    assert answer["result"] == 1 and answer["errorCode"] == code, answer


def test_token_of_another_origin_is_3(stack: Stack) -> None:
    app = app_at(stack, "http://localhost:5102")
    ws, answer = open_socket(stack, "http://localhost:5103",
                             json.dumps({"accessToken": app.access_token}))
    close(ws)
    assert answer["errorCode"] == 3


def test_second_socket_of_an_origin_is_4(stack: Stack) -> None:
    app = app_at(stack, "http://localhost:5104")
    first = json.dumps({"accessToken": app.access_token})
    ws, answer = open_socket(stack, "http://localhost:5104", first)
    try:
        assert answer == {"result": 0}
        ws2, answer2 = open_socket(stack, "http://localhost:5104", first)
        close(ws2)
        assert answer2["errorCode"] == 4
    finally:
        close(ws)


def test_many_sockets_stay_open_while_the_server_answers(stack: Stack) -> None:
    """Each socket is a greenlet, not one of a few request threads: 40 apps hold a socket
    open at once and plain requests are still answered meanwhile."""
    sockets = []
    try:
        for i in range(40):
            origin = f"http://localhost:{5300 + i}"
            app = app_at(stack, origin)
            ws, answer = open_socket(stack, origin, json.dumps({"accessToken": app.access_token}))
            sockets.append(ws)
            assert answer == {"result": 0}, (i, answer)
        app = app_at(stack, "http://localhost:5299")
        app.timeout = 10  # with one thread per socket this would wait for a free thread
        assert app.request("GET", "availability")["result"] == 0
        assert app.request("GET", "servicediscovery")["services"]
    finally:
        for ws in sockets:
            close(ws)


def test_every_job_change_reaches_the_app_in_order(stack: Stack) -> None:
    origin = "http://localhost:5105"
    app = app_at(stack, origin)
    sid = service_id(app)
    ws, answer = open_socket(stack, origin, json.dumps({"accessToken": app.access_token}))
    assert answer == {"result": 0}
    listener = Listener(ws)
    try:
        assert app.request("PUT", "printer3d/onJobChange", serviceId=sid)["result"] == 0
        _, job_id = print_sample(stack, app, sid)
        events = listener.until_terminal(job_id)
    finally:
        close(ws)
    assert all(e["serviceId"] == sid and e["profile"] == "printer3d"
               and e["attribute"] == "onJobChange" for e in events)
    jobs = [e["job"] for e in events]
    states = [j["state"] for j in jobs]
    assert states[-1] == "completed", states
    for before, after in zip(jobs, jobs[1:]):   # in order: legal steps, progress never back
        if before["state"] != after["state"]:
            assert can_transition(JobState(before["state"]), JobState(after["state"])), states
        if before["state"] == after["state"] == "printing":
            assert after["progress"] >= before["progress"]
            assert (after.get("layer") or 0) >= (before.get("layer") or 0)
    printed = {j["layer"] for j in jobs if j["state"] == "printing" and j.get("layer")}
    layers = jobs[-1]["layers"]
    assert layers and printed >= set(range(1, layers)), (sorted(printed), layers)
    final = app.request("GET", "printer3d/job", serviceId=sid, jobId=job_id)["job"]
    assert jobs[-1] == final


def test_a_page_reload_reconnects_at_once_and_keeps_its_events(stack: Stack) -> None:
    """Close and reopen within a fraction of a second, as a reloading page does: the origin
    is free again at once, and what the new socket registers is not wiped by the old
    socket's close being noticed late."""
    origin = "http://localhost:5107"
    app = app_at(stack, origin)
    sid = service_id(app)
    first = json.dumps({"accessToken": app.access_token})
    ws, answer = open_socket(stack, origin, first)
    assert answer == {"result": 0}
    assert app.request("PUT", "printer3d/onJobChange", serviceId=sid)["result"] == 0
    close(ws)
    time.sleep(0.1)
    ws, answer = open_socket(stack, origin, first)
    assert answer == {"result": 0}
    listener = Listener(ws)
    job_id = ""
    try:
        assert app.request("PUT", "printer3d/onJobChange", serviceId=sid)["result"] == 0
        time.sleep(1.0)  # longer than any close-noticing delay the server ever had
        _, job_id = print_sample(stack, app, sid)
        event = listener.events.get(timeout=60)
        assert event["job"]["id"] == job_id and event["attribute"] == "onJobChange", event
        app.request("DELETE", "printer3d/job", serviceId=sid, jobId=job_id)
        assert listener.until_terminal(job_id)[-1]["job"]["state"] in TERMINAL
    finally:
        close(ws)


def test_closed_socket_unregisters_and_the_plugin_is_told(stack: Stack) -> None:
    tap = subprocess.Popen([sys.executable, "-m", "gotapi3dp.cli", "--config",
                            str(stack.config_path), "--data-dir", str(stack.data_dir),
                            "bus", "tap", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    origin = "http://localhost:5106"
    try:
        time.sleep(1.0)
        app = app_at(stack, origin)
        sid = service_id(app)
        ws, answer = open_socket(stack, origin, json.dumps({"accessToken": app.access_token}))
        assert answer == {"result": 0}
        app.request("PUT", "printer3d/onJobChange", serviceId=sid)
        close(ws)
        time.sleep(0.3)  # the server notices a close at once (its reader wakes the sender)
        # The origin can connect again: its old session is gone.
        ws, answer = open_socket(stack, origin, json.dumps({"accessToken": app.access_token}))
        close(ws)
        assert answer == {"result": 0}
        time.sleep(1.0)
    finally:
        tap.send_signal(signal.SIGINT)
        out, _ = tap.communicate(timeout=10)
    notices = [json.loads(line) for line in out.splitlines()
               if "EVENT_TRANSMIT_DISCONNECT" in line]
    assert any(n["intent"]["origin"] == origin for n in notices), out[-2000:]


def test_a_socket_closes_with_12_when_its_token_expires(tmp_path: Path) -> None:
    """Review: the socket of an expired token kept streaming and held the origin's one
    slot. Now it gets 12 as its last message and closes; a fresh token opens a new one."""
    from .conftest import running_stack
    origin = "http://localhost:5120"
    with running_stack(tmp_path, gotapi_extra="token_lifetime = 3") as short:
        app = app_at(short, origin)
        ws, answer = open_socket(short, origin, json.dumps({"accessToken": app.access_token}))
        assert answer == {"result": 0}
        listener = Listener(ws)
        last = listener.events.get(timeout=30)        # within lifetime + TOKEN_RECHECK
        assert last["result"] == 1 and last["errorCode"] == 12, last
        deadline = time.monotonic() + 10
        while ws.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not ws.connected
        again = app_at(short, origin)
        ws2, answer2 = open_socket(short, origin, json.dumps({"accessToken": again.access_token}))
        close(ws2)
        assert answer2 == {"result": 0}
        close(ws)
