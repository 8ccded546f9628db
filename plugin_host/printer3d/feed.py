"""One reader thread per printer on its job-change stream (`GET /api/events`, SSE).

The reader resumes from the last event id it saw (`Last-Event-ID`), reconnects with back-off
when the printer goes away, and hands every job map to `on_job(service_id, job)` in order,
and every status the printer pushes (`event: status`, on change) to `on_status`;
`on_state(service_id, connected)` tells whether the stream is live (the status cache trusts
nothing while it is not). A `reset` event means the printer lost our position (it restarted):
the current state of its recent jobs follows, and `on_job` sees them like any change.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Iterator

import requests

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.25
BACKOFF_MAX = 8.0
READ_TIMEOUT = 6.0  # the printer writes at least every 2 s (its status, as a keep-alive)

OnJob = Callable[[str, dict[str, Any]], None]
OnState = Callable[[str, bool], None]
OnStatus = Callable[[str, dict[str, Any]], None]


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str, str]]:
    """(id, event, data) per SSE message; comments and unknown fields are skipped."""
    ident, event, data = "", "message", []
    for line in lines:
        if not line:
            if data:
                yield ident, event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            ident = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)


class JobStream:
    """Follows one printer's job changes on a daemon thread until `stop()`."""

    def __init__(self, service_id: str, url: str, api_key: str, on_job: OnJob,
                 on_state: OnState, on_status: OnStatus) -> None:
        self.service_id = service_id
        self._url = url.rstrip("/") + "/api/events"
        self._headers = {"X-Api-Key": api_key, "Accept": "text/event-stream"}
        self._on_job, self._on_state, self._on_status = on_job, on_state, on_status
        self._stop = threading.Event()
        self._last_id = ""
        self._response: requests.Response | None = None
        self._thread = threading.Thread(target=self._run, name=f"feed-{service_id}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            _unblock(response)

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        with requests.Session() as http:
            while not self._stop.is_set():
                try:
                    self._follow(http)
                    backoff = BACKOFF_MIN
                except (requests.RequestException, ValueError, OSError) as exc:
                    log.info("job stream of %s: %s; again in %.2f s", self.service_id,
                             type(exc).__name__, backoff)
                except Exception:
                    if self._stop.is_set():
                        return  # stop() closed the response under the read (http.client
                        # then fails on its own half-closed state: AttributeError)
                    log.exception("job stream of %s failed; again in %.2f s",
                                  self.service_id, backoff)
                self._on_state(self.service_id, False)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _follow(self, http: requests.Session) -> None:
        headers = dict(self._headers)
        if self._last_id:
            headers["Last-Event-ID"] = self._last_id
        with http.get(self._url, headers=headers, stream=True,
                      timeout=(3.0, READ_TIMEOUT)) as response:
            response.raise_for_status()
            self._response = response
            self._on_state(self.service_id, True)
            lines = response.iter_lines(decode_unicode=True)
            for ident, event, data in parse_sse(lines):
                if self._stop.is_set():
                    return
                self._last_id = ident or self._last_id
                if event in ("job", "status"):
                    value = json.loads(data)
                    if isinstance(value, dict):
                        handler = self._on_job if event == "job" else self._on_status
                        handler(self.service_id, value)


def _unblock(response: requests.Response) -> None:
    """End the reader's blocking read now: urllib3's `shutdown()` (2.3+) shuts the socket
    for reading. `response.close()` from this thread waits for the lock of the very
    buffered read it should end, so it returned only with the printer's next keep-alive
    (10 s), and the plug-in host took that long to stop."""
    try:
        response.raw.shutdown()
    except (AttributeError, ValueError, RuntimeError, OSError):
        response.close()       # an older urllib3, or a connection already given back
