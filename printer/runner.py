"""The job runner: one worker thread taking accepted jobs through download, slice and print.

Jobs arrive already authenticated and redeemed (see `printer/main.py`). The worker moves each
one downloading -> slicing -> printing -> completed through `JobStore.transition`, so the state
machine of `gotapi3dp.wire.jobs` is enforced in one place. Slicing and printing overlap: the
job is `slicing` while the slicer loads and sections the model (`stream_gcode`), `printing`
from the first line on, while the slicer still plans later layers; `sliced` counts the
layers it has produced, `layer` the one the firmware is at.

Only one job holds the printer at a time: `reserve` fails with PRINTER_BUSY while another
job is active (a redeemed download capability lives only minutes, so the printer does not
queue work behind a long print).

Threads: the worker (this module), plus the HTTP threads calling `cancel`, `pause`, `resume`
and `status`; `_lock` serialises every state change of the current job between them. Only the
worker touches the serial link; between jobs it reads the firmware's temperature reports.

Crash safety: every chunk of G-code is appended to the job's `model.gcode.part` and fsync'd
before its lines go to the link (renamed `model.gcode` once whole); the journal
(`JobStore.record_acked`) holds how many commands the firmware acknowledged, written at every
layer change. A job the previous process left active, or whose firmware rebooted mid-print,
is `interrupted`; `resume` restarts it from the layer in progress (re-heat, home X/Y, restore
Z, E, feed rate; `recovery.resume_prelude`), every later line sent exactly once. A job
interrupted before its slice was whole is sliced again first (the same commands up to the
journal, or it fails).
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import requests

from gotapi3dp.config import SliceProfile
from gotapi3dp.fsutil import fsync_dir
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.jobs import JobState

from .download import DownloadCancelled, download
from .gcode import strip_comment
from .jobs import JobRecord, JobStore
from .keys import PrinterKeys
from .recovery import (
    LayerMarks,
    MachineState,
    load_lines,
    park,
    resume_prelude,
    scan_layers,
    state_before,
    unpark,
)

if TYPE_CHECKING:
    from .serial_link import SerialLink, StreamStats
    from .slicer import GcodeChunk, SliceResult, SliceStream

log = logging.getLogger(__name__)

END_SEQUENCE = ("M104 S0", "M140 S0", "M107", "M84")   # heaters off, fan off, motors off
MODEL_FORMATS = ("stl", "obj", "3mf")
CANCEL_WAIT = 15.0          # s DELETE waits for the worker to stop the job: under the plug-in's
                            # http_timeout (20 s), so its answer comes before the plug-in gives up
RECONNECT_EVERY = 5.0       # seconds between attempts to open the serial link when idle
GCODE_NAME = "model.gcode"
PART_SUFFIX = ".part"       # the G-code while it is still being sliced
REBOOT_MARK = "sent `start`"  # in the serial link's error when the firmware restarted

SliceFn = Callable[..., "SliceResult"]          # slice_file's signature
StreamFn = Callable[[Path, SliceProfile], "SliceStream"]   # stream_gcode's
DownloadFn = Callable[..., Path]


class Cancelled(Exception):
    """The job's cancel event was set while a step ran."""


@dataclass(frozen=True)
class Work:
    """What the worker needs for one redeemed job."""

    job_id: str
    download_url: str = ""
    sha256: str = ""           # from the SIGNED claims, never from the server's answer
    size: int | None = None    # from the server's content record: a cap, not a proof
    format: str = "stl"        # stl, obj or 3mf: the model file's suffix
    resume: bool = False       # an interrupted job, continued from its journal


class JobRunner:
    """One worker thread; one job at a time."""

    def __init__(self, store: JobStore, work_dir: Path, keys: PrinterKeys, profile: SliceProfile,
                 link_factory: Callable[[], SerialLink], slicer: StreamFn,
                 http: requests.Session, download_fn: DownloadFn = download,
                 safe_state_first: bool = False) -> None:
        self._store, self._keys, self._profile = store, keys, profile
        self._work_dir = Path(work_dir)
        self._link_factory, self._slicer, self._http = link_factory, slicer, http
        self._download_fn = download_fn
        self._safe_state_first = safe_state_first
        self._queue: queue.Queue[Work] = queue.Queue()
        self._lock = threading.RLock()          # current-job state changes
        self._link_lock = threading.Lock()      # opening/closing the serial link
        self._link: SerialLink | None = None
        self._reserved: str | None = None       # job holding the printer (from accept to end)
        self._running: str | None = None        # job the worker is executing
        self._cancel = threading.Event()
        self._pause = threading.Event()
        self._shutdown = threading.Event()
        self._stats: dict[str, Any] = {}
        self._printing = False                  # the current job sent its first line
        self._link_retry = 0.0                  # monotonic time of the next idle open attempt
        self._thread = threading.Thread(target=self._loop, name="printer:runner", daemon=True)

    # ----- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the worker; a job in progress becomes `interrupted` (heaters off)."""
        self._shutdown.set()
        self._cancel.set()
        self._pause.clear()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._close_link()

    # ----- intake (HTTP threads) -------------------------------------------------------

    @property
    def current(self) -> str | None:
        """The job holding the printer, if any."""
        with self._lock:
            return self._reserved

    def reserve(self, job_id: str) -> None:
        """Claim the printer for `job_id` before it is redeemed; PRINTER_BUSY if taken."""
        with self._lock:
            if self._reserved is not None and self._reserved != job_id:
                raise P3DError(ErrorCode.PRINTER_BUSY,
                               f"the printer is busy with job {self._reserved}")
            self._reserved = job_id

    def release(self, job_id: str) -> None:
        """Give the printer back (the job never reached the worker)."""
        with self._lock:
            if self._reserved == job_id:
                self._reserved = None

    def submit(self, work: Work) -> None:
        self._queue.put(work)

    # ----- control (HTTP threads) ------------------------------------------------------

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job; for the running job, wait until the worker has stopped it."""
        with self._lock:
            record = self._store.require(job_id)
            if record.state.terminal:
                raise P3DError(ErrorCode.JOB_STATE, f"job {job_id} is already {record.state.value}")
            if self._running != job_id:          # not started (or from a past run)
                record = self._store.transition(job_id, JobState.CANCELLED)
                self._cleanup(job_id)
                self._store.drop_journal(job_id)
                if self._reserved == job_id:
                    self._reserved = None
                return record
            self._cancel.set()
            self._pause.clear()
        deadline = time.monotonic() + CANCEL_WAIT
        while time.monotonic() < deadline:
            record = self._store.require(job_id)
            if record.state.terminal:
                break
            time.sleep(0.05)
        return record

    def pause(self, job_id: str) -> JobRecord:
        with self._lock:
            self._own(job_id, JobState.PRINTING, "pause")
            record = self._store.transition(job_id, JobState.PAUSED)
            self._pause.set()
            return record

    def resume(self, job_id: str) -> JobRecord:
        with self._lock:
            record = self._store.require(job_id)
            if record.state is JobState.INTERRUPTED:
                return self._resume_interrupted(job_id)
            self._own(job_id, JobState.PAUSED, "resume")
            record = self._store.transition(job_id, JobState.PRINTING)
            self._pause.clear()
            return record

    def _resume_interrupted(self, job_id: str) -> JobRecord:
        """Continue a crashed job from its journal; the worker sends the recovery prelude."""
        job_dir = self._work_dir / job_id
        gcode = job_dir / GCODE_NAME
        if not (gcode.is_file() or (_part(gcode).is_file() and _model_in(job_dir))):
            raise P3DError(ErrorCode.JOB_STATE, f"job {job_id} was interrupted before it "
                           "was sliced; cancel it and print again")
        self.reserve(job_id)
        try:
            record = self._store.transition(job_id, JobState.PRINTING, error=None)
        except P3DError:
            self.release(job_id)
            raise
        self.submit(Work(job_id, resume=True))
        return record

    def _own(self, job_id: str, state: JobState, what: str) -> None:
        record = self._store.require(job_id)
        if self._running != job_id or record.state is not state:
            raise P3DError(ErrorCode.JOB_STATE, f"cannot {what} job {job_id} "
                           f"in state {record.state.value}")

    def temperatures(self) -> dict[str, Any] | None:
        """The firmware's temperatures as last reported, or None while no link is open."""
        link = self._link
        return link.temperatures() if link is not None else None

    # ----- worker ----------------------------------------------------------------------

    def _loop(self) -> None:
        if self._safe_state_first:
            self._end_sequence()
        while not self._shutdown.is_set():
            try:
                work = self._queue.get(timeout=0.05)
            except queue.Empty:
                self._idle()
                continue
            try:
                self._execute(work)
            finally:
                with self._lock:
                    self._running = None
                    if self._reserved == work.job_id:
                        self._reserved = None

    def _idle(self) -> None:
        """Between jobs: keep the link open and the temperatures live (M155 / M105)."""
        if self._link is None and time.monotonic() < self._link_retry:
            return
        try:
            self._ensure_link().idle()
        except (P3DError, OSError) as exc:
            log.warning("serial link idle: %s", exc)
            self._link_retry = time.monotonic() + RECONNECT_EVERY
            self._close_link()

    def _execute(self, work: Work) -> None:
        """Run one job to its end; a job that printed and did not complete is made safe
        (heaters and motors off) before its final state is written."""
        job_dir = self._work_dir / work.job_id
        self._stats, self._printing = {}, False
        try:
            if work.resume:
                if self._begin_resume(work.job_id):
                    self._printing = True
                    self._print_from_journal(work.job_id, job_dir)
                    self._complete(work.job_id)
                return
            if not self._begin(work.job_id):
                return
            job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            model = self._download(work, job_dir)
            self._step(work.job_id, JobState.SLICING)
            with self._open_stream(work.job_id, model) as stream:
                self._print_streamed(work.job_id, stream, job_dir / GCODE_NAME)
            self._complete(work.job_id)
            return
        except (Cancelled, DownloadCancelled):
            state = JobState.INTERRUPTED if self._shutdown.is_set() else JobState.CANCELLED
            fields: dict[str, Any] = {}
        except P3DError as exc:
            rebooted = self._printing and REBOOT_MARK in exc.message
            state = JobState.INTERRUPTED if rebooted else JobState.FAILED
            fields = {"error": exc.to_http()["error"]}
        except Exception as exc:  # a bug must not leave the job active forever
            log.exception("job %s failed", work.job_id)
            error = P3DError(ErrorCode.UNKNOWN, f"internal error ({type(exc).__name__})")
            state, fields = JobState.FAILED, {"error": error.to_http()["error"]}
        if self._printing:
            self._end_sequence()
        self._finish(work.job_id, state, **fields)

    def _begin(self, job_id: str) -> bool:
        """Take the job and start its download; False if it ended while it waited."""
        with self._lock:
            if not self._begin_resume(job_id):
                return False
            self._store.transition(job_id, JobState.DOWNLOADING)
            return True

    def _begin_resume(self, job_id: str) -> bool:
        """Take the job; False if it ended (was cancelled) while it waited."""
        with self._lock:
            if self._shutdown.is_set() or self._store.require(job_id).state.terminal:
                return False
            self._cancel.clear()
            self._pause.clear()
            self._running = job_id
            return True

    def _print_from_journal(self, job_id: str, job_dir: Path) -> None:
        """Marlin power-loss recovery from the journal: the layer in progress again."""
        gcode = job_dir / GCODE_NAME
        acked, _ = self._store.acked(job_id) or (0, 0)
        if not gcode.is_file():
            self._reslice(job_id, job_dir, acked)
        lines = load_lines(gcode)
        layers = scan_layers(lines)
        layer = layers.layer_at(acked)
        start = layers.start_of(layer)
        prelude = resume_prelude(state_before(lines, start), state_before(lines, acked).pos["Z"])
        log.info("job %s resumes at layer %d (command %d of %d; %d acknowledged)",
                 job_id, layer, start, layers.total, acked)
        link = self._ensure_link()
        try:
            link.stream(prelude, cancel=self._cancel)
        except P3DError:
            self._close_link()
            raise
        if self._cancel.is_set():
            raise Cancelled()
        marks = LayerMarks.of_file(layers, self._store.require(job_id).view.layers)
        tracker = _PrintTracker(_ProgressWriter(self._store, job_id), marks, start,
                                state_before(lines, start))
        self._send(tracker, lines)

    def _reslice(self, job_id: str, job_dir: Path, acked: int) -> None:
        """Slice a job again whose G-code was cut short by a crash, into a whole
        `model.gcode`; its first `acked` commands must be those the firmware already ran."""
        gcode, model = job_dir / GCODE_NAME, _model_in(job_dir)
        if model is None:
            raise P3DError(ErrorCode.JOB_STATE, f"job {job_id} has no model left to slice")
        before = [c for c in map(strip_comment, load_lines(_part(gcode))) if c][:acked]
        writer = _ProgressWriter(self._store, job_id)
        with self._open_stream(job_id, model) as stream, \
                _GcodeTee(gcode, gcode.with_name(GCODE_NAME + ".new")) as tee:
            for chunk in _checked(stream):
                if self._cancel.is_set():
                    raise Cancelled()
                tee.write(chunk.lines)
                if chunk.kind == "layer":
                    writer.write(sliced=chunk.index + 1)
            tee.finish()
        again = [c for c in map(strip_comment, load_lines(gcode)) if c][:len(before)]
        if again != before:
            gcode.unlink()
            raise P3DError(ErrorCode.SLICE_FAILED, "the model no longer slices to the G-code "
                           "this print began with; cancel it and print again")
        _part(gcode).unlink(missing_ok=True)

    def _step(self, job_id: str, state: JobState, **fields: Any) -> None:
        with self._lock:
            if self._cancel.is_set():
                raise Cancelled()
            self._store.transition(job_id, state, **fields)

    def _download(self, work: Work, job_dir: Path) -> Path:
        fmt = work.format if work.format in MODEL_FORMATS else "stl"
        return self._download_fn(work.download_url, job_dir / f"model.{fmt}", work.sha256,
                                 work.size, self._keys, self._keys.printer_id,
                                 http=self._http, cancel=self._cancel)

    def _open_stream(self, job_id: str, model: Path) -> SliceStream:
        """Load, check and section the model (`slicing`); the layer count is known then."""
        try:
            stream = self._slicer(model, self._profile)
        except (P3DError, Cancelled):
            raise
        except Exception as exc:
            log.exception("slicer failed on job %s", job_id)
            raise P3DError(ErrorCode.SLICE_FAILED,
                           f"slicer failed ({type(exc).__name__})") from None
        if self._cancel.is_set():
            stream.close()
            raise Cancelled()
        self._store.update_progress(job_id, layers=int(stream.layers), sliced=0)
        return stream

    def _print_streamed(self, job_id: str, stream: SliceStream, gcode: Path) -> None:
        """Print the G-code as the slicer yields it, each chunk on disk before it is sent."""
        writer = _ProgressWriter(self._store, job_id)
        tracker = _PrintTracker(writer, LayerMarks(int(stream.layers)))
        with _GcodeTee(gcode, _part(gcode)) as tee:
            lines = self._feed(job_id, stream, tee, tracker, writer)
            try:
                self._send(tracker, lines)
            finally:
                lines.close()

    def _feed(self, job_id: str, chunks: Iterable[GcodeChunk], tee: _GcodeTee,
              tracker: _PrintTracker, writer: _ProgressWriter) -> Iterator[str]:
        """The lines for the link, chunk by chunk: each first written and fsync'd, its layer
        marked and counted as sliced; the job turns `printing` with the first line."""
        for chunk in _checked(chunks):
            if self._cancel.is_set() or not (self._printing or self._start_printing(job_id)):
                return
            tee.write(chunk.lines)
            tracker.add(chunk)
            if chunk.kind == "layer":
                writer.write(sliced=chunk.index + 1)
            yield from chunk.lines
        tee.finish()

    def _start_printing(self, job_id: str) -> bool:
        with self._lock:
            if self._cancel.is_set():
                return False
            self._store.transition(job_id, JobState.PRINTING, progress=0.0, layer=0)
            self._printing = True
            return True

    def _send(self, tracker: _PrintTracker, lines: Iterable[str]) -> None:
        """Stream `lines` from the tracker's start on, journaling what the firmware acked."""
        tracker.journal()
        link = self._ensure_link()
        try:
            stats = link.stream(tracker.pull(lines), on_sent=tracker.sent, cancel=self._cancel,
                                pause=self._pause, park=tracker.park)
        except Exception:
            self._stats = tracker.stats()
            self._close_link()
            raise
        self._stats = _stats_map(stats)
        tracker.flush(stats=self._stats)
        if self._cancel.is_set():
            raise Cancelled()

    def _complete(self, job_id: str) -> None:
        with self._lock:
            if self._cancel.is_set():
                raise Cancelled()
            if self._store.require(job_id).state is JobState.PAUSED:
                self._store.transition(job_id, JobState.PRINTING)   # finished while pausing
            self._finish(job_id, JobState.COMPLETED, progress=100.0)

    def _finish(self, job_id: str, state: JobState, **fields: Any) -> None:
        """Write the job's final state (files go first) and free the printer."""
        with self._lock:
            if state.terminal:
                self._cleanup(job_id)
                self._store.drop_journal(job_id)
            try:
                self._store.transition(job_id, state, stats=self._stats, **fields)
            except P3DError as exc:      # already ended elsewhere (e.g. cancelled before start)
                log.info("job %s not moved to %s: %s", job_id, state.value, exc)
            self._running = None
            if self._reserved == job_id:
                self._reserved = None

    def _cleanup(self, job_id: str) -> None:
        """A finished job keeps no model or G-code on disk."""
        shutil.rmtree(self._work_dir / job_id, ignore_errors=True)

    # ----- serial link -----------------------------------------------------------------

    def _ensure_link(self) -> SerialLink:
        with self._link_lock:
            if self._link is None:
                link = self._link_factory()
                link.open()
                self._link = link
            return self._link

    def _close_link(self) -> None:
        with self._link_lock:
            link, self._link = self._link, None
        if link is not None:
            try:
                link.close()
            except (P3DError, OSError) as exc:
                log.warning("closing the serial link: %s", exc)

    def _end_sequence(self) -> None:
        """Heaters, fan and motors off; best effort (the link may be what failed)."""
        try:
            link = self._ensure_link()
            for cmd in END_SEQUENCE:
                link.command(cmd, timeout=5.0)
        except (P3DError, OSError) as exc:
            log.error("safe end sequence failed: %s", exc)
            self._close_link()


class _GcodeTee:
    """The job's G-code as it streams: appended to `part` chunk by chunk, each fsync'd
    before its lines go to the link, so a resume always finds what the firmware ran;
    `finish` renames it to `path` once whole."""

    def __init__(self, path: Path, part: Path) -> None:
        self._path, self._part = path, part
        self._fh = open(part, "w", encoding="utf-8", newline="\n")

    def __enter__(self) -> _GcodeTee:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def write(self, lines: list[str]) -> None:
        if lines:
            self._fh.write("\n".join(lines) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def finish(self) -> None:
        self._fh.close()
        os.replace(self._part, self._path)
        fsync_dir(self._path.parent)


class _ProgressWriter:
    """Writes job progress to the store whenever the whole percent, the layer printing or
    the layers sliced change, and only then (each write is an fsync'd commit and an event)."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self._store, self._job_id = store, job_id
        self._last: dict[str, int] = {}

    def write(self, force: bool = False, **fields: Any) -> None:
        if "progress" in fields:
            fields["progress"] = round(min(100.0, max(0.0, fields["progress"])), 2)
        keys = {k: int(fields[k]) for k in ("progress", "layer", "sliced") if k in fields}
        if force or any(self._last.get(k) != v for k, v in keys.items()):
            self._store.update_progress(self._job_id, **fields)
            self._last.update(keys)

    def journal(self, acked: int, layer: int) -> None:
        self._store.record_acked(self._job_id, acked, layer)


class _PrintTracker:
    """Layer, progress and journal from the commands the firmware acknowledged; the machine
    state at the last acknowledged command (to park a paused print and come back)."""

    def __init__(self, writer: _ProgressWriter, marks: LayerMarks, start: int = 0,
                 state: MachineState | None = None) -> None:
        self._writer, self.marks = writer, marks
        self._start = start
        self._unapplied: list[str] = []
        self._seen = 0                      # commands of the streamed chunks so far
        self.state = state or MachineState()
        self.acked = start                  # commands of the file acknowledged
        self.layer = marks.layer_at(start)

    def add(self, chunk: GcodeChunk) -> None:
        """Mark a streamed chunk's commands (before its lines are pulled)."""
        count = sum(1 for line in chunk.lines if strip_comment(line))
        if chunk.kind == "layer":
            self.marks.add(self._seen, self._seen + count)
        self._seen += count

    def pull(self, lines: Iterable[str]) -> Iterator[str]:
        """The file's lines from command `start` on (comments pass through; `commands`
        drops them), remembering commands until they are acknowledged."""
        count = 0
        for raw in lines:
            command = strip_comment(raw)
            if command:
                count += 1
                if count <= self._start:
                    continue
                self._unapplied.append(command)
            yield raw

    def sent(self, count: int) -> None:
        done = self._start + count
        for command in self._unapplied[:done - self.acked]:
            self.state.apply(command)
        del self._unapplied[:done - self.acked]
        self.acked = done
        layer = self.marks.layer_at(done)
        if layer != self.layer:
            self.layer = layer
            self.journal()
        self._writer.write(progress=self.marks.progress(done), layer=self.layer)

    def journal(self) -> None:
        self._writer.journal(self.acked, self.layer)

    def park(self) -> tuple[list[str], list[str]]:
        return park(self.state), unpark(self.state)

    def stats(self) -> dict[str, Any]:
        return {"linesSent": self.acked - self._start, "resends": 0, "checksumErrors": 0,
                "printSeconds": 0.0}

    def flush(self, **fields: Any) -> None:
        self.journal()
        self._writer.write(force=True, progress=self.marks.progress(self.acked),
                           layer=self.layer, **fields)


def _checked(chunks: Iterable[GcodeChunk]) -> Iterator[GcodeChunk]:
    """The slicer's chunks, an unexpected slicing error turned into SLICE_FAILED."""
    try:
        yield from chunks
    except (P3DError, Cancelled):
        raise
    except Exception as exc:
        log.exception("slicer failed mid-stream")
        raise P3DError(ErrorCode.SLICE_FAILED,
                       f"slicer failed ({type(exc).__name__})") from None


def _part(gcode: Path) -> Path:
    return gcode.with_name(gcode.name + PART_SUFFIX)


def _model_in(job_dir: Path) -> Path | None:
    """The job's downloaded model file, if it is still there."""
    return next((p for f in MODEL_FORMATS if (p := job_dir / f"model.{f}").is_file()), None)


def whole_file_stream(slice_fn: SliceFn) -> StreamFn:
    """A `StreamFn` over a slicer with `slice_file`'s signature (another slicer, a test's
    fake): it slices the whole file first, then yields it by layer, as `stream_gcode` does."""
    def open_stream(model: Path, profile: SliceProfile) -> SliceStream:
        out = model.with_name("whole.gcode")
        result = slice_fn(model, out, profile)
        lines = load_lines(out)
        out.unlink()
        return _FileStream(int(result.layers), lines)  # type: ignore[return-value]
    return open_stream


@dataclass(frozen=True)
class _Chunk:
    kind: str
    index: int
    lines: list[str]


class _FileStream:
    """Whole G-code cut into chunks at its `;LAYER:n` lines (the last layer keeps the end)."""

    def __init__(self, layers: int, lines: list[str]) -> None:
        self.layers, self._lines = layers, lines

    def __enter__(self) -> _FileStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._lines = []

    def __iter__(self) -> Iterator[_Chunk]:
        kind, index, lines = "start", -1, []
        for line in self._lines:
            if line.startswith(";LAYER:"):
                yield _Chunk(kind, index, lines)
                kind, index, lines = "layer", index + 1, []
            lines.append(line)
        yield _Chunk(kind, index, lines)
        yield _Chunk("end", self.layers, [])


def _stats_map(stats: StreamStats) -> dict[str, Any]:
    return {"linesSent": int(stats.lines_sent), "resends": int(stats.resends),
            "checksumErrors": int(stats.checksum_errors),
            "printSeconds": round(float(stats.seconds), 3)}
