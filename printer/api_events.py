"""`GET /api/events`: the job-change feed as Server-Sent Events (docs/API.md, printer API).

A reader sends `Last-Event-ID: <epoch>:<seq>` (or `?after=`) to resume; without one, or when
the position is unknown (printer restarted, gap beyond the buffer), it first gets a
`reset` event and the current state of recent jobs, then every change as it commits.
A comment line every KEEPALIVE seconds keeps proxies and dead-peer detection honest.
"""
from __future__ import annotations

from typing import Any, Iterator

from flask import Blueprint, Flask, Response, current_app, request

from .events import FeedEvent, JobFeed

KEEPALIVE = 10.0
SNAPSHOT_JOBS = 20
FEED = "printer_events"

bp = Blueprint("events", __name__, url_prefix="/api")


def init_app(app: Flask, jobs: Any) -> None:
    """Subscribe a feed to the job store and serve it (the printer's create_app calls this)."""
    app.extensions[FEED] = JobFeed().attach(jobs)
    app.extensions[FEED + ".store"] = jobs
    app.register_blueprint(bp)


def _stream(feed: JobFeed, after: int | None, jobs: Any) -> Iterator[str]:
    if after is None:
        after = feed.last_seq
        yield f"id: {feed.epoch}:{after}\nevent: reset\ndata: {{}}\n\n"
        for record in reversed(jobs.list(SNAPSHOT_JOBS)):
            job = record.to_map()
            job.pop("stats", None)
            yield FeedEvent(after, job).sse(feed.epoch)
    while True:
        events = feed.wait(after, KEEPALIVE)
        if not events:
            yield ": keep-alive\n\n"
            continue
        for event in events:
            yield event.sse(feed.epoch)
        after = events[-1].seq


@bp.get("/events")
def events() -> Response:
    feed: JobFeed = current_app.extensions[FEED]
    last = request.headers.get("Last-Event-ID") or request.args.get("after")
    body = _stream(feed, feed.position(last), current_app.extensions[FEED + ".store"])
    return Response(body, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
