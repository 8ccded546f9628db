"""Durable job records and the token replay cache, in SQLite (WAL, synchronous=FULL).

Every state change goes through `transition`, which enforces `can_transition` inside one
`BEGIN IMMEDIATE` transaction. On open, a job left active by a dead process becomes
`interrupted`. The `journal` holds, per printing job, how many G-code commands the firmware
acknowledged and the layer in progress (what a resume after a crash starts from).
The `seen_tokens` table remembers token ids (jti) across restarts.
Subscribers (`subscribe`) see every committed change, in commit order, outside any transaction.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.jobs import JobState, JobView, can_transition

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    layer INTEGER NOT NULL DEFAULT 0,
    layers INTEGER NOT NULL DEFAULT 0,
    sliced INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    content_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    stats TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
CREATE TABLE IF NOT EXISTS journal (
    job_id TEXT PRIMARY KEY,
    acked INTEGER NOT NULL,
    layer INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_tokens (
    jti BLOB PRIMARY KEY,
    exp INTEGER NOT NULL,
    seen_at REAL NOT NULL
);
"""
_COLUMNS = ("id, state, progress, layer, layers, sliced, error, content_id, created_at, "
            "updated_at, stats")
_FIELDS = {"progress", "layer", "layers", "sliced", "error", "content_id", "stats"}
# Columns added after the first release: (name, definition), added to older databases on open.
_MIGRATIONS = (("sliced", "INTEGER NOT NULL DEFAULT 0"),)
_JSON_FIELDS = {"error", "stats"}
log = logging.getLogger(__name__)
REPLAY_KEEP = 3600  # seconds past `exp` a jti is kept (expired tokens fail before the cache)


@dataclass
class JobRecord:
    """A stored job: the shared view plus the printer-only stream statistics."""

    view: JobView
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.view.id

    @property
    def state(self) -> JobState:
        return JobState(self.view.state)

    def to_map(self) -> dict[str, Any]:
        m = self.view.to_map()
        m["stats"] = dict(self.stats)
        return m


class JobStore:
    """Jobs and seen token ids; safe to call from the HTTP threads and the runner thread."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._subscribers: list[Callable[[JobRecord], None]] = []
        self._pending: deque[JobRecord] = deque()
        self._deliver_lock = threading.RLock()
        self.interrupted_at_start = self._interrupt_active()

    def _migrate(self) -> None:
        """Add the columns a database from an older version lacks."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, definition in _MIGRATIONS:
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")

    def subscribe(self, callback: Callable[[JobRecord], None]) -> None:
        """Call `callback(record)` after every committed change (create, transition,
        update_progress), in commit order, outside any DB transaction and lock of the store."""
        with self._lock:
            self._subscribers.append(callback)

    def _committed(self, job_id: str) -> None:
        """Queue the job as just committed (call with `_lock` held, after COMMIT)."""
        if self._subscribers:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?",
                                   (job_id,)).fetchone()
            if row:
                self._pending.append(_record(row))

    def _deliver(self) -> None:
        """Hand queued records to the subscribers; one deliverer at a time keeps the order."""
        with self._deliver_lock:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    record = self._pending.popleft()
                    callbacks = list(self._subscribers)
                for callback in callbacks:
                    try:
                        callback(record)
                    except Exception:  # a listener's bug must not undo a committed change
                        log.exception("job subscriber failed on %s", record.id)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _interrupt_active(self) -> list[str]:
        """Jobs the previous process left active become `interrupted`; returns their ids."""
        states = [s.value for s in JobState if can_transition(s, JobState.INTERRUPTED)]
        marks = ",".join("?" * len(states))
        with self._tx() as db:
            rows = db.execute(f"SELECT id FROM jobs WHERE state IN ({marks})", states)
            ids = [r[0] for r in rows]
            db.execute(f"UPDATE jobs SET state=?, updated_at=? WHERE state IN ({marks})",
                       [JobState.INTERRUPTED.value, self._clock(), *states])
        return ids

    def create(self, job_id: str) -> tuple[JobRecord, bool]:
        """Insert a `queued` job; returns (record, created). An existing id is returned as is."""
        now = self._clock()
        with self._lock:
            with self._tx() as db:
                cur = db.execute("INSERT OR IGNORE INTO jobs (id, state, created_at, updated_at) "
                                 "VALUES (?, ?, ?, ?)", (job_id, JobState.QUEUED.value, now, now))
                created = cur.rowcount == 1
            if created:
                self._committed(job_id)
        self._deliver()
        return self.require(job_id), created

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _record(row) if row else None

    def require(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise P3DError(ErrorCode.JOB_NOT_FOUND, f"no job {job_id}")
        return record

    def list(self, limit: int = 100) -> list[JobRecord]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created_at DESC, id "
                                    "LIMIT ?", (limit,)).fetchall()
        return [_record(r) for r in rows]

    def transition(self, job_id: str, new_state: JobState, **fields: Any) -> JobRecord:
        """Move a job to `new_state` (and set fields) if the state machine allows it."""
        updates = _encode_fields(fields)
        with self._lock:
            with self._tx() as db:
                row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
                if row is None:
                    raise P3DError(ErrorCode.JOB_NOT_FOUND, f"no job {job_id}")
                old = JobState(row[0])
                if not can_transition(old, new_state):
                    raise P3DError(ErrorCode.JOB_STATE, f"job {job_id} cannot go from "
                                   f"{old.value} to {new_state.value}")
                updates.update(state=new_state.value, updated_at=self._clock())
                _update(db, job_id, updates)
            self._committed(job_id)
        self._deliver()
        return self.require(job_id)

    def reopen(self, job_id: str) -> bool:
        """Queue a `failed` job again (its redeem never reached the contents server).

        Outside the state machine on purpose: only the printer's accept path calls it, for a
        token whose redemption failed before the contents server answered. False if the job
        is not failed.
        """
        with self._lock:
            with self._tx() as db:
                cur = db.execute("UPDATE jobs SET state=?, error=NULL, progress=0, layer=0, "
                                 "layers=0, sliced=0, updated_at=? WHERE id=? AND state=?",
                                 (JobState.QUEUED.value, self._clock(), job_id,
                                  JobState.FAILED.value))
                changed = cur.rowcount == 1
            if changed:
                self._committed(job_id)
        self._deliver()
        return changed

    def update_progress(self, job_id: str, **fields: Any) -> None:
        """Set progress/layer/layers/sliced/stats of a job without changing its state."""
        updates = _encode_fields(fields)
        updates["updated_at"] = self._clock()
        with self._lock:
            with self._tx() as db:
                _update(db, job_id, updates)
            self._committed(job_id)
        self._deliver()

    def record_acked(self, job_id: str, acked: int, layer: int) -> None:
        """Journal: the firmware acknowledged the first `acked` commands; `layer` in progress."""
        with self._tx() as db:
            db.execute("INSERT INTO journal (job_id, acked, layer, updated_at) VALUES (?,?,?,?) "
                       "ON CONFLICT(job_id) DO UPDATE SET acked=excluded.acked, "
                       "layer=excluded.layer, updated_at=excluded.updated_at",
                       (job_id, int(acked), int(layer), self._clock()))

    def acked(self, job_id: str) -> tuple[int, int] | None:
        """The journal of a job: (commands acknowledged, layer in progress), or None."""
        with self._lock:
            row = self._db.execute("SELECT acked, layer FROM journal WHERE job_id=?",
                                   (job_id,)).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def drop_journal(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM journal WHERE job_id=?", (job_id,))

    def remember_token(self, jti: bytes, exp: int) -> bool:
        """Record a token id; False if it was seen before (a replay). Prunes old entries."""
        now = self._clock()
        with self._tx() as db:
            db.execute("DELETE FROM seen_tokens WHERE exp < ?", (now - REPLAY_KEEP,))
            cur = db.execute("INSERT OR IGNORE INTO seen_tokens (jti, exp, seen_at) "
                             "VALUES (?, ?, ?)", (bytes(jti), int(exp), now))
            return cur.rowcount == 1


def _encode_fields(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - _FIELDS
    if unknown:
        raise ValueError(f"unknown job fields: {sorted(unknown)}")
    return {k: (json.dumps(v) if k in _JSON_FIELDS and v is not None else v)
            for k, v in fields.items()}


def _update(db: sqlite3.Connection, job_id: str, updates: dict[str, Any]) -> None:
    # Column names come from _FIELDS (checked above) and our own keys, never from input.
    sets = ", ".join(f"{k}=?" for k in updates)
    db.execute(f"UPDATE jobs SET {sets} WHERE id=?", [*updates.values(), job_id])


def _record(row: tuple[Any, ...]) -> JobRecord:
    (job_id, state, progress, layer, layers, sliced, error, content_id,
     created_at, updated_at, stats) = row
    view = JobView(id=job_id, state=state, progress=round(float(progress), 2), layer=int(layer),
                   layers=int(layers), sliced=int(sliced), error=json.loads(error) if error else None,
                   content_id=content_id, created_at=created_at, updated_at=updated_at)
    return JobRecord(view, json.loads(stats) if stats else {})
