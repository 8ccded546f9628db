"""A hung printer must not hold the plug-in host: short timeouts, a bound on calls per printer.

Review: with one printer's worker stopped, 20 parallel `GET job` held all 16 host workers
for the 20 s HTTP timeout, and a `connect` (no printer involved) waited 19 s behind them.
Each test runs real HTTP servers on 127.0.0.1 as printers and calls `Printer3DPlugin.handle`
on a pool of the host's size, as the host does; every wait is bounded, so a regression fails
instead of hanging.
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from gotapi3dp.config import PrinterEntry
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.intent import Action, Intent
from plugin_host.host import WORKERS
from plugin_host.printer3d import plugin as p3d

from .bus_support import wait_until

HTTP_TIMEOUT = 30.0   # large, so the old code (every call on http_timeout) clearly hangs
GUARD = 15.0          # s a call may take here: well under HTTP_TIMEOUT, well over the limits
JOB_ID = "a" * 32


class _QuietServer(ThreadingHTTPServer):
    """Answers its late replies to clients that gave up (a broken pipe) without a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class FakePrinter:
    """A printer's job API on 127.0.0.1: answers after `delay`, or never while `hung`
    (until `release()`, at the end of the test). Counts the requests it received."""

    def __init__(self, hung: bool = False, delay: float = 0.0) -> None:
        self.released = threading.Event()
        self.received = 0
        self._count = threading.Lock()
        printer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                with printer._count:
                    printer.received += 1
                if hung:
                    printer.released.wait(60)
                time.sleep(delay)
                body = json.dumps({"job": {"id": JOB_ID, "state": "printing", "progress": 1.0,
                                           "stats": {"internal": 1}}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_DELETE = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class NoStore:
    def close(self) -> None: ...


@pytest.fixture
def printers() -> Iterator[tuple[FakePrinter, FakePrinter]]:
    """(hung, healthy) printers, released at the end so no thread is left waiting."""
    hung, healthy = FakePrinter(hung=True), FakePrinter(delay=0.02)
    yield hung, healthy
    hung.release()
    healthy.release()


@pytest.fixture
def plugin(printers: tuple[FakePrinter, FakePrinter]) -> p3d.Printer3DPlugin:
    hung, healthy = printers
    entries = [PrinterEntry(service_id="hung", url=hung.url, api_key="k"),
               PrinterEntry(service_id="healthy", url=healthy.url, api_key="k")]
    return p3d.Printer3DPlugin(entries, None, NoStore(), HTTP_TIMEOUT,  # type: ignore[arg-type]
                               follow_jobs=False)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """The host's worker pool. Not joined at the end: a regression fails, it does not hang."""
    workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="plugin")
    yield workers
    workers.shutdown(wait=False, cancel_futures=True)


def _intent(action: Action, attribute: str, service_id: str) -> Intent:
    return Intent(action, profile="printer3d", attribute=attribute, service_id=service_id,
                  params={"jobId": JOB_ID})


def _call(plugin: p3d.Printer3DPlugin, intent: Intent) -> tuple[int, str, dict[str, Any]]:
    """(error code or 0, message, params), as the host would put them in its reply."""
    try:
        return 0, "", plugin.handle(intent).params
    except P3DError as exc:
        return int(exc.code), exc.message or "", {}


def _results(futures: list[Future[tuple[int, str, dict[str, Any]]]]
             ) -> list[tuple[int, str, dict[str, Any]]]:
    deadline = time.monotonic() + GUARD
    return [f.result(timeout=max(0.1, deadline - time.monotonic())) for f in futures]


def test_job_pause_and_resume_of_a_hung_printer_answer_16_before_the_http_timeout(
        plugin, pool) -> None:
    """Each answers what status answers for a hung printer (16, "offline"), after its short
    timeout (3 s, 5 s), not after http_timeout (30 s here)."""
    started = time.monotonic()
    futures = [pool.submit(_call, plugin, _intent(action, attribute, "hung"))
               for action, attribute in ((Action.GET, "job"), (Action.PUT, "pause"),
                                         (Action.PUT, "resume"))]
    answers = _results(futures)
    assert [code for code, _, _ in answers] == [ErrorCode.ILLEGAL_DEVICE_STATE] * 3
    assert all("printer hung is offline" in message for _, message, _ in answers)
    assert time.monotonic() - started < GUARD


def test_a_hung_printer_holds_a_few_workers_and_another_printer_still_answers(
        plugin, printers, pool) -> None:
    """More parallel calls to the hung printer than the host has workers: only
    PRINTER_CALLS of them reach it; the rest answer 16 at once, so a call for a healthy
    printer queued behind them all is served promptly."""
    hung, _ = printers
    flood = [pool.submit(_call, plugin, _intent(Action.GET, "job", "hung"))
             for _ in range(WORKERS + 4)]
    assert wait_until(lambda: hung.received >= p3d.PRINTER_CALLS, timeout=GUARD)
    healthy = pool.submit(_call, plugin, _intent(Action.GET, "job", "healthy"))
    code, message, params = healthy.result(timeout=GUARD)
    assert (code, message) == (0, "")
    assert params == {"job": {"id": JOB_ID, "state": "printing", "progress": 1.0}}
    answers = _results(flood)
    assert {code for code, _, _ in answers} == {ErrorCode.ILLEGAL_DEVICE_STATE}
    refused = [m for _, m, _ in answers if "calls to it are already waiting" in m]
    assert len(refused) >= WORKERS + 4 - 2 * p3d.PRINTER_CALLS   # a second round may reach it
    assert all("printer hung is not answering" in m for m in refused)
    assert hung.received <= 2 * p3d.PRINTER_CALLS


def test_a_burst_of_parallel_calls_to_a_healthy_printer_all_succeed(plugin, pool) -> None:
    """A dashboard polling many jobs at once: the calls queue for the slots (each answer
    takes 20 ms here), none is refused."""
    calls = [_intent(Action.GET, "job", "healthy") for _ in range(3 * WORKERS)]
    calls += [_intent(Action.PUT, "pause", "healthy") for _ in range(WORKERS)]
    answers = _results([pool.submit(_call, plugin, intent) for intent in calls])
    assert [(code, message) for code, message, _ in answers] == [(0, "")] * len(calls)


def test_a_cached_status_needs_no_slot(plugin, printers, pool) -> None:
    """With every slot of the hung printer taken, its status is still served from memory,
    by `answer_now` and by `handle`: neither touches the printer."""
    hung, _ = printers
    plugin._on_live("hung", True)
    plugin._on_status("hung", {"state": "printing", "temperatures": {"hotend": 200}})
    flood = [pool.submit(_call, plugin, _intent(Action.GET, "job", "hung"))
             for _ in range(p3d.PRINTER_CALLS)]
    assert wait_until(lambda: hung.received >= p3d.PRINTER_CALLS, timeout=GUARD)
    status = Intent(Action.GET, profile="printer3d", attribute="status", service_id="hung")
    fast = plugin.answer_now(status)
    assert fast is not None and fast.params["state"] == "printing"
    assert _call(plugin, status)[0] == 0
    _results(flood)


def test_discovery_shows_a_busy_printer_online_and_a_hung_one_by_its_stream(
        plugin, printers, pool) -> None:
    """Review: with its 4 slots held by calls in flight, a printer was reported offline by
    discovery. With no slot free, its job stream decides: live is online."""
    hung, _ = printers
    flood = [pool.submit(_call, plugin, _intent(Action.GET, "job", "hung"))
             for _ in range(p3d.PRINTER_CALLS)]
    assert wait_until(lambda: hung.received >= p3d.PRINTER_CALLS, timeout=GUARD)
    entry = plugin._printers["hung"]
    plugin._on_live("hung", True)
    assert plugin._is_online(entry) is True        # busy, but its stream is alive
    plugin._on_live("hung", False)
    assert plugin._is_online(entry) is False       # busy and silent: not answering
    _results(flood)
