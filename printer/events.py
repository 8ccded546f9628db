"""The printer's job-change feed: every committed job change, numbered, kept for replay.

`JobFeed.attach(store)` subscribes to `JobStore.subscribe`; each record becomes one
`FeedEvent` with the next sequence number, appended to a bounded ring buffer (the store calls
us in commit order, so numbers follow commits). Readers (`api_events` streams) wait on a
condition for events after the sequence they have. Event ids are `<epoch>:<seq>`; the epoch
is random per process, so a reader resuming across a printer restart is told to start over.
"""
from __future__ import annotations

import json
import secrets
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

BUFFER_EVENTS = 10_000  # replayable history: far more than a reconnect gap produces


class _Record(Protocol):
    def to_map(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class FeedEvent:
    seq: int
    job: dict[str, Any]

    def sse(self, epoch: str) -> str:
        """One Server-Sent Events message."""
        data = json.dumps(self.job, separators=(",", ":"))
        return f"id: {epoch}:{self.seq}\nevent: job\ndata: {data}\n\n"


class JobFeed:
    """Numbered job changes in commit order; thread-safe."""

    def __init__(self, buffer: int = BUFFER_EVENTS) -> None:
        self.epoch = secrets.token_hex(4)
        self._events: deque[FeedEvent] = deque(maxlen=buffer)
        self._seq = 0
        self._cond = threading.Condition()
        self.closed = False

    def attach(self, store: Any) -> "JobFeed":
        store.subscribe(self.publish)
        return self

    def publish(self, record: _Record) -> None:
        """JobStore subscriber: number the change and wake the readers."""
        job = record.to_map()
        job.pop("stats", None)  # printer-internal
        with self._cond:
            self._seq += 1
            self._events.append(FeedEvent(self._seq, job))
            self._cond.notify_all()

    @property
    def last_seq(self) -> int:
        with self._cond:
            return self._seq

    def position(self, last_event_id: str | None) -> int | None:
        """The sequence a reader resumes after, or None if it must start over (new reader,
        another epoch, or a gap older than the buffer)."""
        if not last_event_id:
            return None
        epoch, _, seq = last_event_id.partition(":")
        if epoch != self.epoch or not seq.isdigit():
            return None
        after = int(seq)
        with self._cond:
            oldest = self._events[0].seq if self._events else self._seq + 1
            if after > self._seq or after < oldest - 1:
                return None
        return after

    def wait(self, after: int, timeout: float) -> list[FeedEvent]:
        """Events with seq > `after`, waiting up to `timeout` for the first one."""
        with self._cond:
            if self._seq <= after and not self.closed:
                self._cond.wait(timeout)
            return [e for e in self._events if e.seq > after]

    def close(self) -> None:
        """The printer is stopping: wake every reader, whose stream then ends (a stream
        left open holds Gunicorn's graceful stop for its whole timeout)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
