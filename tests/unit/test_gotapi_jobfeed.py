"""Job changes from the printer to the plug-in: the printer's numbered feed and its SSE
endpoint, the plug-in's SSE reader, its de-duplicated onJobChange events and status cache,
and the plug-in host's idempotency store."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from gotapi3dp.config import PrinterEntry
from gotapi3dp.wire.errors import ErrorCode
from gotapi3dp.wire.intent import Action, Intent
from plugin_host.idempotency import IdempotencyStore
from plugin_host.printer3d.feed import parse_sse
from plugin_host.printer3d.plugin import Printer3DPlugin
from printer import api_events
from printer.events import JobFeed


@dataclass
class Rec:
    job: dict[str, Any]

    def to_map(self) -> dict[str, Any]:
        return {**self.job, "stats": {"linesSent": 1}}


class Store:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.jobs: list[Rec] = []

    def subscribe(self, cb: Any) -> None:
        self.callbacks.append(cb)

    def list(self, limit: int = 100) -> list[Rec]:
        return self.jobs[:limit]

    def commit(self, **job: Any) -> None:
        rec = Rec(job)
        self.jobs.insert(0, rec)
        for cb in self.callbacks:
            cb(rec)


def test_feed_numbers_changes_and_resumes_by_id() -> None:
    store = Store()
    feed = JobFeed(buffer=3).attach(store)
    for p in range(5):
        store.commit(id="j", state="printing", progress=p)
    events = feed.wait(0, 0)
    assert [e.seq for e in events] == [3, 4, 5]  # bounded buffer
    assert "stats" not in events[0].job
    assert feed.position(f"{feed.epoch}:4") == 4
    assert feed.position(f"{feed.epoch}:1") is None      # older than the buffer
    assert feed.position("otherepoch:4") is None         # the printer restarted
    assert feed.position(None) is None
    assert events[-1].sse(feed.epoch).startswith(f"id: {feed.epoch}:5\nevent: job\ndata: ")


def test_feed_wait_wakes_on_publish() -> None:
    store = Store()
    feed = JobFeed().attach(store)
    threading.Timer(0.05, lambda: store.commit(id="j", state="queued")).start()
    assert [e.seq for e in feed.wait(0, 10.0)] == [1]


IDLE = {"state": "idle", "temperatures": {"hotend": {"actual": 21.0, "target": 0.0}}}


def _sse_app(store: Store, status: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    api_events.init_app(app, store, lambda: dict(status or IDLE))
    return app


def test_events_endpoint_snapshot_then_changes_and_resume() -> None:
    store = Store()
    store.jobs.append(Rec({"id": "old", "state": "completed"}))
    app = _sse_app(store)
    resp = app.test_client().get("/api/events")
    body = resp.iter_encoded()
    first = next(body) + next(body)
    assert b"event: reset" in first and b'"id":"old"' in first
    assert next(body).decode() == f"event: status\ndata: {json.dumps(IDLE, separators=(',', ':'))}\n\n"
    store.commit(id="j", state="queued")
    chunk = next(body).decode()
    assert "event: job" in chunk and '"state":"queued"' in chunk
    last_id = chunk.split("\n")[0][len("id: "):]
    resp.close()
    store.commit(id="j", state="downloading")
    resumed = app.test_client().get("/api/events", headers={"Last-Event-ID": last_id})
    chunk = next(resumed.iter_encoded()).decode()
    assert '"state":"downloading"' in chunk and "reset" not in chunk
    resumed.close()


def test_status_is_pushed_on_change_and_as_keep_alive_without_an_id(monkeypatch) -> None:
    """The printer's status rides on the stream: once at the start, then when it differs
    (looked at every STATUS_PERIOD and after job changes), and again after KEEPALIVE of
    silence; never with an `id:`, so a reader's resume position stays on the job changes."""
    monkeypatch.setattr(api_events, "STATUS_PERIOD", 0.02)
    monkeypatch.setattr(api_events, "KEEPALIVE", 0.1)
    store, status = Store(), dict(IDLE)
    app = _sse_app(store, status)
    app.extensions[api_events.FEED + ".status"] = lambda: dict(status)
    body = app.test_client().get("/api/events", headers={"Last-Event-ID": "x:0"}).iter_encoded()
    chunks = [next(body).decode() for _ in range(2)]
    assert "event: reset" in chunks[0] and chunks[1].startswith("event: status\ndata: ")
    assert next(body).decode() == chunks[1]                     # unchanged: the keep-alive
    status["temperatures"] = {"hotend": {"actual": 80.0, "target": 210.0}}
    pushed = next(body).decode()
    assert pushed.startswith("event: status\n") and "id:" not in pushed
    assert json.loads(pushed.split("data: ", 1)[1])["temperatures"]["hotend"]["target"] == 210.0
    status.update(state="printing", jobId="j")
    store.commit(id="j", state="printing")                       # a change and its status
    both = next(body).decode()
    assert both.index("event: job") < both.index("event: status") and '"jobId":"j"' in both


def test_the_plugins_reader_gets_jobs_and_pushed_status_over_real_http(monkeypatch) -> None:
    """The printer's SSE endpoint on a real server, followed by the plug-in's JobStream."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class ChunkedHandler(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"   # chunked, as Gunicorn streams it (1.0 would buffer)

    from plugin_host.printer3d.feed import JobStream
    monkeypatch.setattr(api_events, "STATUS_PERIOD", 0.02)
    store, status = Store(), dict(IDLE)
    app = _sse_app(store)
    app.extensions[api_events.FEED + ".status"] = lambda: dict(status)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=ChunkedHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    got: list[tuple[str, Any]] = []
    stream = JobStream("printer-1", f"http://127.0.0.1:{server.server_port}", "key",
                       lambda sid, job: got.append(("job", job["state"])),
                       lambda sid, live: got.append(("live", live)),
                       lambda sid, st: got.append(("status", st["state"])))
    stream.start()
    try:
        assert wait_for(lambda: ("status", "idle") in got)
        status["state"] = "printing"
        store.commit(id="j", state="printing")
        assert wait_for(lambda: ("status", "printing") in got)
        assert got.index(("live", True)) < got.index(("status", "idle"))
        assert got.index(("job", "printing")) < got.index(("status", "printing"))
        stream.stop()                      # mid-read, 10 s before the next keep-alive
        assert wait_for(lambda: not stream._thread.is_alive(), timeout=3.0)
    finally:
        stream.stop()
        server.shutdown()


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_closing_the_feed_ends_every_open_stream() -> None:
    """The printer is stopping: its streams end at once, not at Gunicorn's graceful timeout."""
    app = _sse_app(Store())
    body = app.test_client().get("/api/events").iter_encoded()
    assert b"event: reset" in next(body) and b"event: status" in next(body)
    threading.Timer(0.1, api_events.close, args=(app,)).start()
    rest = list(body)                    # returns only once the stream has ended
    assert all(b"event: job" not in chunk for chunk in rest)


def test_parse_sse() -> None:
    lines = ["id: e:1", "event: job", 'data: {"a":', "data: 1}", "", ": ping", "",
             "event: reset", "data: {}", ""]
    assert list(parse_sse(iter(lines))) == [("e:1", "job", '{"a":\n1}'),
                                            ("e:1", "reset", "{}")]


class NoStore:
    def close(self) -> None: ...


def _plugin() -> tuple[Printer3DPlugin, list[Intent]]:
    plugin = Printer3DPlugin([PrinterEntry()], None, NoStore(), 1.0,  # type: ignore[arg-type]
                             follow_jobs=False)
    emitted: list[Intent] = []
    plugin.start(emitted.append)
    return plugin, emitted


def test_plugin_emits_each_distinct_job_view_once_in_order() -> None:
    plugin, emitted = _plugin()
    views = [{"id": "j", "state": s, "progress": p, "updatedAt": 100 + p, "stats": {"x": 1}}
             for s, p in (("queued", 0), ("printing", 1), ("printing", 2))]
    for v in views + views[1:]:           # a replay repeats two, the first older than seen
        plugin._on_job("printer-1", v)
    assert [(e.params["job"]["state"], e.params["job"]["progress"]) for e in emitted] == [
        ("queued", 0), ("printing", 1), ("printing", 2)]
    assert all(e.action is Action.EVENT and e.attribute == "onJobChange"
               and e.service_id == "printer-1" and "stats" not in e.params["job"]
               for e in emitted)


def test_status_is_cached_only_while_the_stream_is_live() -> None:
    plugin, _ = _plugin()
    calls: list[int] = []

    class Client:
        def status(self, timeout: float | None = None) -> dict[str, Any]:
            calls.append(1)
            return {"state": "idle", "temperatures": {}}
    plugin._clients["printer-1"] = Client()  # type: ignore[assignment]
    ask = Intent(Action.GET, profile="printer3d", attribute="status", service_id="printer-1")
    plugin.handle(ask)
    plugin.handle(ask)
    assert len(calls) == 2                   # no stream: always asked
    plugin._on_live("printer-1", True)
    plugin.handle(ask)
    plugin.handle(ask)
    assert len(calls) == 3                   # live: the second is from the cache
    plugin._on_job("printer-1", {"id": "j", "state": "queued"})
    plugin.handle(ask)
    assert len(calls) == 4                   # a job change drops the cache


class CountingClient:
    """The printer as the plug-in's status fallback asks it; `during` runs mid-call."""

    def __init__(self, during: Any = None) -> None:
        self.calls = 0
        self.during = during

    def status(self, timeout: float | None = None) -> dict[str, Any]:
        self.calls += 1
        if self.during is not None:
            self.during()
        return {"state": "idle", "temperatures": {"asked": self.calls}}


STATUS = Intent(Action.GET, profile="printer3d", attribute="status", service_id="printer-1")


def test_a_pushed_status_is_answered_from_memory_while_the_printer_talks(monkeypatch) -> None:
    from plugin_host.printer3d import plugin as p3d
    plugin, _ = _plugin()
    client = CountingClient()
    plugin._clients["printer-1"] = client  # type: ignore[assignment]
    plugin._on_status("printer-1", {"state": "idle", "temperatures": {"pushed": 1}})
    assert plugin.answer_now(STATUS) is None                 # stream not live: ignored
    plugin._on_live("printer-1", True)
    plugin._on_status("printer-1", {"state": "printing", "temperatures": {"pushed": 2},
                                    "jobId": "j"})
    monkeypatch.setattr(p3d, "STATUS_TTL", 0.0)              # an asked-for one would be stale
    answer = plugin.answer_now(STATUS)
    assert answer is not None and answer.params == {"state": "printing", "jobId": "j",
                                                    "temperatures": {"pushed": 2}}
    assert client.calls == 0                                 # the printer was never asked
    plugin._on_job("printer-1", {"id": "j", "state": "completed"})
    assert plugin.answer_now(STATUS) is None                 # a job change drops it
    plugin._on_status("printer-1", {"temperatures": {}})     # malformed: ignored, logged
    assert plugin.answer_now(STATUS) is None
    plugin._on_live("printer-1", False)
    plugin._on_live("printer-1", True)
    assert plugin.answer_now(STATUS) is None                 # a new stream starts empty
    plugin._on_status("printer-1", {"state": "idle", "temperatures": {"pushed": 3}})
    assert plugin.answer_now(STATUS) is not None
    monkeypatch.setattr(p3d, "PUSHED_MAX_AGE", 0.0)          # the printer fell silent
    assert plugin.answer_now(STATUS) is None


def test_an_asked_status_overtaken_on_its_way_is_not_cached() -> None:
    """The printer's answer left before a job change (or a pushed status) that arrived while
    it travelled: returned to its asker, but never served to later ones as current."""
    plugin, _ = _plugin()
    plugin._on_live("printer-1", True)
    client = CountingClient(during=lambda: plugin._on_job("printer-1", {"id": "j", "state": "queued"}))
    plugin._clients["printer-1"] = client  # type: ignore[assignment]
    assert plugin.handle(STATUS).params["temperatures"] == {"asked": 1}
    assert plugin.answer_now(STATUS) is None
    client.during = None
    plugin.handle(STATUS)
    assert plugin.answer_now(STATUS) is not None and client.calls == 2


def test_a_hung_printer_makes_status_fail_fast_not_after_the_http_timeout(monkeypatch) -> None:
    """A printer that accepts and never answers (frozen, partitioned): status is 16 (the
    printer is offline) after STATUS_TIMEOUT, not after the plug-in's 20 s HTTP timeout."""
    import socket
    import time

    from gotapi3dp.wire.errors import P3DError
    from plugin_host.printer3d import plugin as p3d
    from plugin_host.printer3d.clients import PrinterClient
    monkeypatch.setattr(p3d, "STATUS_TIMEOUT", 0.3)
    plugin, _ = _plugin()
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(4)                   # the kernel accepts; nobody ever reads or answers
        plugin._clients["printer-1"] = PrinterClient(  # type: ignore[assignment]
            f"http://127.0.0.1:{hung.getsockname()[1]}", "key", 20.0)
        started = time.monotonic()
        with pytest.raises(P3DError) as caught:
            plugin.handle(STATUS)
    assert caught.value.code == ErrorCode.ILLEGAL_DEVICE_STATE
    assert time.monotonic() - started < 10.0


def test_listeners_follow_put_delete_and_disconnect() -> None:
    plugin, _ = _plugin()
    put = Intent(Action.PUT, profile="printer3d", attribute="onJobChange",
                 service_id="printer-1", origin="o1")
    assert plugin.handle(put).result == 0
    assert plugin.listeners() == [("o1", "printer-1")]
    plugin.notice(Intent(Action.EVENT_TRANSMIT_DISCONNECT, origin="o1"))
    assert plugin.listeners() == []


def _print(key: str | None, connection: str = "c1", origin: str = "o") -> Intent:
    return Intent(Action.POST, profile="printer3d", attribute="print", service_id="printer-1",
                  origin=origin, plugin_id="printer3d", params={"connectionId": connection},
                  idempotency_key=key)


def test_idempotency_key_answers_the_first_answer_again(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path / "idem.sqlite3")
    jobs: list[int] = []

    def handle(intent: Intent) -> Intent:
        jobs.append(1)
        return intent.response({"jobId": f"job-{len(jobs)}"})
    first = store.run(_print("k"), handle)
    retry = _print("k")
    again = store.run(retry, handle)
    assert len(jobs) == 1 and again.params == first.params == {"jobId": "job-1"}
    assert again.request_code == retry.request_code
    # Survives a restart of the host (a new store on the same file).
    assert IdempotencyStore(tmp_path / "idem.sqlite3").run(_print("k"), handle).params == {
        "jobId": "job-1"}
    store.run(_print("k", origin="other"), handle)          # keys are per origin
    store.run(_print(None), handle)                          # no key: acts every time
    assert len(jobs) == 3
    reused = store.run(_print("k", connection="c2"), handle)
    assert reused.error_code == ErrorCode.INVALID_REQUEST_PARAMETER and len(jobs) == 3


def test_idempotency_concurrent_retries_act_once(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path / "idem.sqlite3")
    gate, count = threading.Event(), []

    def slow(intent: Intent) -> Intent:
        count.append(1)
        gate.wait(5)
        return intent.response({"jobId": "j"})
    threads = [threading.Thread(target=store.run, args=(_print("k"), slow)) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert len(count) == 1


def test_transient_answers_are_not_stored(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path / "idem.sqlite3")
    answers = iter([ErrorCode.PRINTER_UNAVAILABLE, None])

    def flaky(intent: Intent) -> Intent:
        code = next(answers)
        return intent.error(code, "down") if code else intent.response({"jobId": "j"})
    assert store.run(_print("k"), flaky).error_code == ErrorCode.PRINTER_UNAVAILABLE
    assert store.run(_print("k"), flaky).params == {"jobId": "j"}
    assert json.dumps(store.run(_print("k"), flaky).params) == '{"jobId": "j"}'
