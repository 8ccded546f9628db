"""The job store: the state machine enforced, restarts, and the replay cache."""
from __future__ import annotations

import pytest

from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.jobs import JobState
from printer.jobs import JobStore

JOB = "0" * 32


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def test_create_is_idempotent(store):
    record, created = store.create(JOB)
    assert created and record.state is JobState.QUEUED and record.stats == {}
    again, created = store.create(JOB)
    assert not created and again.view.created_at == record.view.created_at


def test_legal_path_to_completed(store):
    store.create(JOB)
    for state in (JobState.AUTHENTICATING, JobState.DOWNLOADING, JobState.SLICING):
        store.transition(JOB, state)
    store.transition(JOB, JobState.PRINTING, layers=7, progress=0.0)
    store.update_progress(JOB, progress=42.5, layer=3)
    store.transition(JOB, JobState.PAUSED)
    store.transition(JOB, JobState.PRINTING)
    done = store.transition(JOB, JobState.COMPLETED, progress=100.0,
                            stats={"linesSent": 10, "resends": 1})
    m = done.to_map()
    assert m["state"] == "completed" and m["layers"] == 7 and m["layer"] == 3
    assert m["progress"] == 100.0 and m["stats"]["linesSent"] == 10
    assert "error" not in m and m["updatedAt"] >= m["createdAt"]


@pytest.mark.parametrize("path, illegal", [
    ([], JobState.PRINTING),                                   # queued -> printing
    ([JobState.AUTHENTICATING], JobState.SLICING),             # skips downloading
    ([JobState.CANCELLED], JobState.PRINTING),                 # terminal stays terminal
    ([JobState.FAILED], JobState.CANCELLED),
    ([JobState.AUTHENTICATING, JobState.DOWNLOADING], JobState.PAUSED),
])
def test_illegal_transitions_raise_job_state(store, path, illegal):
    store.create(JOB)
    for state in path:
        store.transition(JOB, state)
    before = store.require(JOB).state
    with pytest.raises(P3DError) as err:
        store.transition(JOB, illegal)
    assert err.value.code == ErrorCode.JOB_STATE
    assert store.require(JOB).state is before


def test_error_is_stored(store):
    store.create(JOB)
    err = P3DError(ErrorCode.TOKEN_EXPIRED).to_http()["error"]
    record = store.transition(JOB, JobState.FAILED, error=err)
    assert record.to_map()["error"] == {"code": 1206, "name": "TOKEN_EXPIRED",
                                        "message": err["message"]}


def test_unknown_job(store):
    assert store.get(JOB) is None
    with pytest.raises(P3DError) as err:
        store.transition(JOB, JobState.AUTHENTICATING)
    assert err.value.code == ErrorCode.JOB_NOT_FOUND


def test_active_jobs_become_interrupted_on_restart(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    ids = {s: f"{i:032x}" for i, s in enumerate(
        [JobState.QUEUED, JobState.DOWNLOADING, JobState.PRINTING, JobState.COMPLETED])}
    walk = {JobState.QUEUED: [], JobState.DOWNLOADING: [JobState.AUTHENTICATING, JobState.DOWNLOADING],
            JobState.PRINTING: [JobState.AUTHENTICATING, JobState.DOWNLOADING, JobState.SLICING,
                                JobState.PRINTING],
            JobState.COMPLETED: [JobState.AUTHENTICATING, JobState.DOWNLOADING, JobState.SLICING,
                                 JobState.PRINTING, JobState.COMPLETED]}
    for state, job_id in ids.items():
        store.create(job_id)
        for step in walk[state]:
            store.transition(job_id, step)
    store.update_progress(ids[JobState.PRINTING], progress=50.0, layer=4, layers=9)
    store.close()                     # the process "dies" here

    reopened = JobStore(path)
    assert sorted(reopened.interrupted_at_start) == sorted(
        ids[s] for s in (JobState.QUEUED, JobState.DOWNLOADING, JobState.PRINTING))
    printing = reopened.require(ids[JobState.PRINTING])
    assert printing.state is JobState.INTERRUPTED and printing.view.layer == 4
    assert reopened.require(ids[JobState.COMPLETED]).state is JobState.COMPLETED
    # interrupted can only print again, fail or be cancelled
    reopened.transition(ids[JobState.QUEUED], JobState.CANCELLED)
    with pytest.raises(P3DError):
        reopened.transition(ids[JobState.DOWNLOADING], JobState.SLICING)
    assert len(reopened.list()) == 4
    reopened.close()


def test_replay_cache_survives_restart(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    assert store.remember_token(b"\x01" * 16, exp=2**31)
    assert not store.remember_token(b"\x01" * 16, exp=2**31)
    assert store.remember_token(b"\x02" * 16, exp=2**31)
    store.close()
    reopened = JobStore(path)
    assert not reopened.remember_token(b"\x01" * 16, exp=2**31)
    reopened.close()


def test_subscribers_see_every_committed_change_in_order(store):
    seen: list[tuple[str, str, int]] = []

    def listener(record):
        # Outside the transaction: the store can be read (and written) from the callback.
        assert store.require(record.id).state is not None
        seen.append((record.id, record.state.value, record.view.layer))

    store.subscribe(listener)
    store.create(JOB)
    store.create(JOB)                                   # no change: nothing delivered
    store.transition(JOB, JobState.AUTHENTICATING)
    with pytest.raises(P3DError):
        store.transition(JOB, JobState.PRINTING)        # refused: nothing delivered
    store.update_progress(JOB, layer=4)
    assert seen == [(JOB, "queued", 0), (JOB, "authenticating", 0), (JOB, "authenticating", 4)]


def test_a_failing_subscriber_does_not_undo_the_change(store):
    store.subscribe(lambda record: 1 / 0)
    got = []
    store.subscribe(got.append)
    store.create(JOB)
    assert store.require(JOB).state is JobState.QUEUED and [r.id for r in got] == [JOB]


def test_journal_survives_a_reopen(tmp_path):
    store = JobStore(tmp_path / "j.sqlite3")
    store.create(JOB)
    assert store.acked(JOB) is None
    store.record_acked(JOB, 120, 3)
    store.record_acked(JOB, 180, 4)
    store.close()
    again = JobStore(tmp_path / "j.sqlite3")
    assert again.acked(JOB) == (180, 4)
    again.drop_journal(JOB)
    assert again.acked(JOB) is None
    again.close()


def test_sliced_is_stored_and_shown(store):
    store.create(JOB)
    store.update_progress(JOB, layers=7, sliced=3, layer=1)
    m = store.require(JOB).to_map()
    assert (m["sliced"], m["layers"], m["layer"]) == (3, 7, 1)


def test_a_database_from_before_sliced_is_migrated(tmp_path):
    import sqlite3
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(str(path))
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, progress REAL "
               "NOT NULL DEFAULT 0, layer INTEGER NOT NULL DEFAULT 0, layers INTEGER NOT NULL "
               "DEFAULT 0, error TEXT, content_id TEXT, created_at REAL NOT NULL, updated_at "
               "REAL NOT NULL, stats TEXT NOT NULL DEFAULT '{}')")
    db.execute("INSERT INTO jobs (id, state, layers, created_at, updated_at) "
               "VALUES (?, 'completed', 9, 1, 1)", (JOB,))
    db.commit()
    db.close()
    store = JobStore(path)
    try:
        assert store.require(JOB).view.sliced == 0 and store.require(JOB).view.layers == 9
        store.update_progress(JOB, sliced=9)
        assert store.require(JOB).to_map()["sliced"] == 9
    finally:
        store.close()
    again = JobStore(path)                                  # a second open migrates nothing
    assert again.require(JOB).view.sliced == 9
    again.close()
