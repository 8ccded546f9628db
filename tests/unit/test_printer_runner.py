"""The job runner with a fake streaming slicer and serial link: complete, cancel, pause,
failures, slicing and printing overlapped, progress events, reboot and crash resume."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from gotapi3dp.config import SliceProfile
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.jobs import JobState
from printer.jobs import JobStore
from printer.keys import load_or_create
from printer.runner import END_SEQUENCE, JobRunner, Work

from .test_printer_helpers import MODEL, FakeLink, commands_in, wait_for

SHA = hashlib.sha256(MODEL).hexdigest()
REBOOT = "the printer restarted (it sent `start`); line numbers are lost"


class FakeSlicer:
    """stream_gcode stand-in: `layers` layers of `per_layer` moves, one chunk at a time.

    `events` records ("sliced", n) as each layer chunk is produced; a RecordingLink sharing
    it records ("sent", command) as each command is acknowledged, so order is observable.
    """

    def __init__(self, layers: int = 5, per_layer: int = 10, error: Exception | None = None,
                 events: list | None = None) -> None:
        self.layers, self.per_layer, self.error = layers, per_layer, error
        self.models: list[bytes] = []
        self.events = events if events is not None else []
        self.closed = 0

    def __call__(self, model: Path, profile: object) -> FakeStream:
        self.models.append(Path(model).read_bytes())
        if self.error is not None:
            raise self.error
        return FakeStream(self)


class FakeStream:
    def __init__(self, slicer: FakeSlicer) -> None:
        self.slicer, self.layers = slicer, slicer.layers

    def __enter__(self) -> FakeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.slicer.closed += 1

    def __iter__(self):
        n = self.layers
        yield _chunk("start", -1, n, ["; fake slicer", f";LAYER_COUNT:{n}", "M104 S210", "G28"])
        for layer in range(n):
            self.slicer.events.append(("sliced", layer))
            yield _chunk("layer", layer, n, [f";LAYER:{layer}"] + [
                f"G1 X{i} Y{layer} E0.1 ; move" for i in range(self.slicer.per_layer)])
        yield _chunk("end", n, n, ["M84"])


def _chunk(kind: str, index: int, layers: int, lines: list[str]) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, index=index, layers=layers, z=0.0, lines=lines,
                           result=None)


class RecordingLink(FakeLink):
    """FakeLink that logs each acknowledged command into `events`; `reboot_after` makes the
    firmware 'restart' (the serial link's error for a `start` mid-stream) after n commands."""

    def __init__(self, events: list, reboot_after: int | None = None, **kw) -> None:
        super().__init__(**kw)
        self.events, self.reboot_after = events, reboot_after

    def stream(self, lines, on_sent=None, cancel=None, pause=None, park=None):
        def sent(n: int) -> None:
            self.events.append(("sent", self.streamed[-1]))
            if self.reboot_after is not None and n >= self.reboot_after:
                self.reboot_after = None
                raise P3DError(ErrorCode.SERIAL_LINK, REBOOT)
            if on_sent:
                on_sent(n)
        return super().stream(lines, sent, cancel, pause, park)


class Rig:
    def __init__(self, tmp_path, link=None, slicer=None, download_error=None):
        self.store = JobStore(tmp_path / "jobs.sqlite3")
        self.keys = load_or_create(tmp_path / "keys", "printer-1", "P1")
        self.link = link or FakeLink()
        self.slicer = slicer or FakeSlicer()
        self.download_error = download_error
        self.work_dir = tmp_path / "work"
        self.runner = JobRunner(self.store, self.work_dir, self.keys, SliceProfile(),
                                lambda: self.link, self.slicer, requests.Session(),
                                download_fn=self.download)
        self.runner.start()

    def download(self, url, dest, sha, size, keys, printer_id, http=None, cancel=None):
        assert sha == SHA and size == len(MODEL) and printer_id == "printer-1"
        if self.download_error:
            raise self.download_error
        dest.write_bytes(MODEL)
        return dest

    def submit(self, n=1):
        job_id = f"{n:032x}"
        self.runner.reserve(job_id)
        self.store.create(job_id)
        self.store.transition(job_id, JobState.AUTHENTICATING)
        self.runner.submit(Work(job_id, "http://cs/api/download/x", SHA, len(MODEL), "stl"))
        return job_id

    def state(self, job_id):
        return self.store.require(job_id).state

    def wait_state(self, job_id, state, timeout=10):
        wait_for(lambda: self.state(job_id) is state, timeout)
        return self.store.require(job_id)

    def close(self):
        self.runner.stop()
        self.store.close()


@pytest.fixture
def make(tmp_path):
    rigs = []

    def factory(**kw):
        rigs.append(Rig(tmp_path, **kw))
        return rigs[-1]
    yield factory
    for rig in rigs:
        rig.close()


def test_job_completes(make):
    rig = make()
    job_id = rig.submit()
    record = rig.wait_state(job_id, JobState.COMPLETED)
    m = record.to_map()
    total = commands_in(rig.slicer)
    assert m["progress"] == 100.0 and m["layers"] == 5 and m["layer"] == 5
    assert m["stats"] == {"linesSent": total, "resends": 2, "checksumErrors": 1,
                          "printSeconds": m["stats"]["printSeconds"]}
    assert len(rig.link.streamed) == total and rig.link.streamed[0] == "M104 S210"
    assert rig.slicer.models == [MODEL]
    assert rig.link.commands == []                   # no end sequence after a normal finish
    assert not (rig.work_dir / job_id).exists()      # no model or G-code left behind
    assert rig.runner.current is None


def test_cancel_mid_print_sends_the_end_sequence(make):
    rig = make(link=FakeLink(delay=0.01), slicer=FakeSlicer(layers=5, per_layer=40))
    job_id = rig.submit()
    wait_for(lambda: len(rig.link.streamed) > 30)
    record = rig.runner.cancel(job_id)
    assert record.state is JobState.CANCELLED
    assert rig.link.commands == list(END_SEQUENCE)
    sent = len(rig.link.streamed)
    assert 30 < sent < commands_in(rig.slicer)
    assert record.stats["linesSent"] == sent
    assert 0 < record.view.progress < 100
    assert 1 <= record.view.layer < 5
    with pytest.raises(P3DError) as err:
        rig.runner.cancel(job_id)
    assert err.value.code == ErrorCode.JOB_STATE
    assert rig.runner.current is None


def test_pause_and_resume(make):
    rig = make(link=FakeLink(delay=0.005), slicer=FakeSlicer(layers=4, per_layer=40))
    job_id = rig.submit()
    wait_for(lambda: len(rig.link.streamed) > 10)
    assert rig.runner.pause(job_id).state is JobState.PAUSED
    with pytest.raises(P3DError):
        rig.runner.pause(job_id)
    held = len(rig.link.streamed)

    time.sleep(0.15)
    assert len(rig.link.streamed) <= held + 1
    assert rig.runner.resume(job_id).state is JobState.PRINTING
    rig.wait_state(job_id, JobState.COMPLETED)
    assert len(rig.link.streamed) == commands_in(rig.slicer)


def test_unprintable_model_fails_without_printing(make):
    rig = make(slicer=FakeSlicer(error=P3DError(ErrorCode.MODEL_INVALID, "empty mesh")))
    job_id = rig.submit()
    record = rig.wait_state(job_id, JobState.FAILED)
    assert record.view.error == {"code": 1305, "name": "MODEL_INVALID", "message": "empty mesh"}
    assert rig.link.streamed == [] and rig.link.commands == []


def test_slicer_crash_is_slice_failed(make):
    rig = make(slicer=FakeSlicer(error=ZeroDivisionError()))
    record = rig.wait_state(rig.submit(), JobState.FAILED)
    assert record.view.error["name"] == "SLICE_FAILED"


def test_hash_failure_never_reaches_the_slicer(make):
    rig = make(download_error=P3DError(ErrorCode.CONTENT_HASH))
    record = rig.wait_state(rig.submit(), JobState.FAILED)
    assert record.view.error["code"] == ErrorCode.CONTENT_HASH
    assert rig.slicer.models == []


def test_serial_failure_fails_and_makes_safe(make):
    link = FakeLink()
    link.fail_after = 7
    rig = make(link=link)
    record = rig.wait_state(rig.submit(), JobState.FAILED)
    assert record.view.error["name"] == "SERIAL_LINK"
    assert record.stats["linesSent"] == 7
    assert link.closed >= 1 and link.commands == list(END_SEQUENCE)


def test_one_job_at_a_time(make):
    rig = make(link=FakeLink(delay=0.01), slicer=FakeSlicer(layers=3, per_layer=40))
    first = rig.submit(1)
    with pytest.raises(P3DError) as err:
        rig.runner.reserve(f"{2:032x}")
    assert err.value.code == ErrorCode.PRINTER_BUSY
    rig.runner.reserve(first)                       # the holder itself may re-reserve
    rig.runner.cancel(first)
    second = rig.submit(2)
    rig.wait_state(second, JobState.COMPLETED, timeout=15)


def test_stop_mid_print_leaves_it_interrupted_and_a_new_runner_resumes_it(make):
    rig = make(link=FakeLink(delay=0.01), slicer=FakeSlicer(layers=5, per_layer=40))
    job_id = rig.submit()
    wait_for(lambda: len(rig.link.streamed) > 60)       # past layer 1 (commands 2..41)
    rig.runner.stop()
    assert rig.state(job_id) is JobState.INTERRUPTED
    assert rig.link.commands == list(END_SEQUENCE)
    acked, layer = rig.store.acked(job_id)
    assert layer >= 2 and acked >= 2 + 40 * (layer - 1)
    # A new runner (the restarted process) on the same store and files resumes it.
    link = FakeLink()
    again = JobRunner(rig.store, rig.work_dir, rig.keys, SliceProfile(), lambda: link,
                      rig.slicer, requests.Session())
    again.start()
    try:
        assert again.resume(job_id).state is JobState.PRINTING
        wait_for(lambda: rig.state(job_id) is JobState.COMPLETED)
    finally:
        again.stop()
    start = 2 + 40 * (layer - 1)                        # first command of the layer in progress
    tail = [f"G1 X{i} Y{n} E0.1" for n in range(layer - 1, 5) for i in range(40)] + ["M84"]
    prelude = link.streamed[:len(link.streamed) - len(tail)]
    assert link.streamed[len(prelude):] == tail         # every line from there on, once
    assert prelude[:4] == ["M140 S0", "M104 S210", "M190 S0", "M109 S210"]
    assert "G28 X Y" in prelude and prelude[-1].startswith("G1 F")
    assert start > 0 and rig.store.acked(job_id) is None   # journal dropped once completed
    assert not (rig.work_dir / job_id).exists()


def test_interrupted_before_slicing_cannot_resume(make):
    rig = make()
    rig.store.create("ab" * 16)
    rig.store.transition("ab" * 16, JobState.INTERRUPTED)
    with pytest.raises(P3DError) as err:
        rig.runner.resume("ab" * 16)
    assert err.value.code == ErrorCode.JOB_STATE
    assert rig.runner.cancel("ab" * 16).state is JobState.CANCELLED


def test_layer_0_reaches_the_link_before_the_last_layer_is_sliced(make):
    events: list = []
    rig = make(link=RecordingLink(events), slicer=FakeSlicer(layers=5, per_layer=4,
                                                              events=events))
    rig.wait_state(rig.submit(), JobState.COMPLETED)
    first_move = events.index(("sent", "G1 X0 Y0 E0.1"))
    assert events.index(("sliced", 0)) < first_move < events.index(("sliced", 4))
    assert rig.slicer.closed == 1                       # workers stopped once done


def test_progress_events_every_percent_and_layer_in_order(make):
    rig = make(slicer=FakeSlicer(layers=5, per_layer=40))
    seen: list = []
    rig.store.subscribe(lambda r: seen.append(r.view))
    job_id = rig.submit()
    wait_for(lambda: seen and seen[-1].state == "completed")   # delivered after the commit
    printing = [v for v in seen if v.state in ("printing", "completed")]
    assert [v.state for v in seen if v.state != "printing"] == [
        "queued", "authenticating", "downloading", "slicing", "slicing", "completed"]
    percents = [int(v.progress) for v in printing]
    assert percents == sorted(percents) and set(percents) == set(range(101))
    layers = [v.layer for v in printing]
    assert layers == sorted(layers) and set(layers) == set(range(6))
    sliced = [v.sliced for v in printing]
    assert sliced == sorted(sliced) and set(sliced) == set(range(6))
    assert all(v.layers == 5 and v.sliced >= v.layer for v in printing)
    final = rig.store.require(job_id).to_map()
    assert final["sliced"] == final["layers"] == final["layer"] == 5


def test_firmware_reboot_mid_print_is_interrupted_and_resumes(make):
    events: list = []
    link = RecordingLink(events, reboot_after=60)
    rig = make(link=link, slicer=FakeSlicer(layers=5, per_layer=40))
    job_id = rig.submit()
    record = rig.wait_state(job_id, JobState.INTERRUPTED)
    assert record.view.error["name"] == "SERIAL_LINK"
    assert link.commands == list(END_SEQUENCE)          # made safe after the reboot
    acked, layer = rig.store.acked(job_id)
    assert layer == 2 and acked >= 42
    link.streamed.clear()
    assert rig.runner.resume(job_id).state is JobState.PRINTING
    done = rig.wait_state(job_id, JobState.COMPLETED)
    assert "error" not in done.to_map()
    tail = [f"G1 X{i} Y{n} E0.1" for n in range(1, 5) for i in range(40)] + ["M84"]
    assert link.streamed[-len(tail):] == tail and "G28 X Y" in link.streamed[:-len(tail)]


def test_resume_after_a_crash_mid_slice_slices_again(make):
    rig = make(link=FakeLink(delay=0.01), slicer=FakeSlicer(layers=5, per_layer=40))
    job_id = rig.submit()
    wait_for(lambda: len(rig.link.streamed) > 60)
    rig.runner.stop()
    gcode = rig.work_dir / job_id / "model.gcode"
    assert not gcode.exists() and gcode.with_name("model.gcode.part").is_file()
    rig.slicer.per_layer = 41                           # the model now slices differently
    again = JobRunner(rig.store, rig.work_dir, rig.keys, SliceProfile(), FakeLink,
                      rig.slicer, requests.Session())
    again.start()
    try:
        again.resume(job_id)
        wait_for(lambda: rig.state(job_id).terminal)
    finally:
        again.stop()
    record = rig.store.require(job_id)
    assert record.state is JobState.FAILED and record.view.error["name"] == "SLICE_FAILED"
