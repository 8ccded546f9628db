"""`GET /api/events`: the job-change feed as Server-Sent Events (docs/API.md, printer API).

A reader sends `Last-Event-ID: <epoch>:<seq>` (or `?after=`) to resume; without one, or when
the position is unknown (printer restarted, gap beyond the buffer), it first gets a
`reset` event and the current state of recent jobs, then every change as it commits.

The printer's status (state, temperatures, jobId: what `GET /api/status` answers) rides on
the same stream as `event: status`, with no id (it is a sample, not a change to replay):
once when the stream opens, then whenever it differs from the last one sent, looked at
after every job change and every STATUS_PERIOD s, and again after KEEPALIVE s of silence.
A follower (the plug-in) then answers status from memory without asking the printer every
second, which is how Moonraker feeds its clients (`notify_status_update`), not how a poller
does; and the re-sent status is the stream's keep-alive: a follower that hears nothing for
a few seconds knows the printer stopped talking, and stops trusting what it remembers.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator

from flask import Blueprint, Flask, Response, current_app, request

from .events import FeedEvent, JobFeed

KEEPALIVE = 2.0
STATUS_PERIOD = 1.0
SNAPSHOT_JOBS = 20
FEED = "printer_events"

StatusFn = Callable[[], dict[str, Any]]

bp = Blueprint("events", __name__, url_prefix="/api")


def init_app(app: Flask, jobs: Any, status: StatusFn) -> None:
    """Subscribe a feed to the job store and serve it (the printer's create_app calls this);
    `status()` is the printer's current status, as `GET /api/status` answers it."""
    app.extensions[FEED] = JobFeed().attach(jobs)
    app.extensions[FEED + ".store"] = jobs
    app.extensions[FEED + ".status"] = status
    app.register_blueprint(bp)


def close(app: Flask) -> None:
    """End every open stream now (the printer is stopping); readers reconnect elsewhere."""
    app.extensions[FEED].close()


def status_sse(status: dict[str, Any]) -> str:
    return f"event: status\ndata: {json.dumps(status, separators=(',', ':'))}\n\n"


def _stream(feed: JobFeed, after: int | None, jobs: Any, status: StatusFn) -> Iterator[str]:
    if after is None:
        after = feed.last_seq
        yield f"id: {feed.epoch}:{after}\nevent: reset\ndata: {{}}\n\n"
        for record in reversed(jobs.list(SNAPSHOT_JOBS)):
            job = record.to_map()
            job.pop("stats", None)
            yield FeedEvent(after, job).sse(feed.epoch)
    sent: dict[str, Any] | None = None
    last_write, wait = time.monotonic(), 0.0      # first turn: what was missed, then status
    while not feed.closed:
        events = feed.wait(after, wait)
        wait = STATUS_PERIOD
        out = [event.sse(feed.epoch) for event in events]
        if events:
            after = events[-1].seq
        now = status()
        if now != sent or time.monotonic() - last_write >= KEEPALIVE:
            sent = now
            out.append(status_sse(now))
        if out:
            yield "".join(out)
            last_write = time.monotonic()


@bp.get("/events")
def events() -> Response:
    feed: JobFeed = current_app.extensions[FEED]
    last = request.headers.get("Last-Event-ID") or request.args.get("after")
    body = _stream(feed, feed.position(last), current_app.extensions[FEED + ".store"],
                   current_app.extensions[FEED + ".status"])
    return Response(body, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
