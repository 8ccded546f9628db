"""The job runner: one worker thread taking accepted jobs through download, slice and print.

Jobs arrive already authenticated and redeemed (see `printer/main.py`). The worker moves each
one downloading -> slicing -> printing -> completed through `JobStore.transition`, so the state
machine of `gotapi3dp.wire.jobs` is enforced in one place. Only one job holds the printer at a
time: `reserve` fails with PRINTER_BUSY while another job is active (a redeemed download
capability lives only minutes, so the printer does not queue work behind a long print).

Threads: the worker (this module), plus the HTTP threads calling `cancel`, `pause`, `resume`
and `status`; `_lock` serialises every state change of the current job between them. Only the
worker touches the serial link; between jobs it reads the firmware's temperature reports.

Crash safety: while printing, the journal (`JobStore.record_acked`) holds how many commands
the firmware acknowledged, written at every layer change. A job the previous process left
active is `interrupted`; `resume` restarts it from the layer in progress (re-heat, home X/Y,
restore Z, E, feed rate; `recovery.resume_prelude`), every later line sent exactly once.
"""
from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import requests

from gotapi3dp.config import SliceProfile
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.jobs import JobState

from .download import DownloadCancelled, download
from .jobs import JobRecord, JobStore
from .keys import PrinterKeys
from .recovery import (Layers, MachineState, load_lines, park, resume_prelude, scan_layers,
                       state_before, unpark)

if TYPE_CHECKING:
    from .serial_link import SerialLink, StreamStats
    from .slicer import SliceResult

log = logging.getLogger(__name__)

END_SEQUENCE = ("M104 S0", "M140 S0", "M107", "M84")   # heaters off, fan off, motors off
MODEL_FORMATS = ("stl", "obj", "3mf")
CANCEL_WAIT = 20.0          # seconds DELETE waits for the worker to stop the job
PROGRESS_INTERVAL = 0.5     # seconds between progress writes (each is an fsync'd commit)
RECONNECT_EVERY = 5.0       # seconds between attempts to open the serial link when idle
GCODE_NAME = "model.gcode"

SliceFn = Callable[..., "SliceResult"]
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
                 link_factory: Callable[[], "SerialLink"], slice_fn: SliceFn,
                 http: requests.Session, download_fn: DownloadFn = download,
                 safe_state_first: bool = False) -> None:
        self._store, self._keys, self._profile = store, keys, profile
        self._work_dir = Path(work_dir)
        self._link_factory, self._slice_fn, self._http = link_factory, slice_fn, http
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
        if not (self._work_dir / job_id / GCODE_NAME).is_file():
            raise P3DError(ErrorCode.JOB_STATE, f"job {job_id} was interrupted before it "
                           "was sliced; cancel it and print again")
        self.reserve(job_id)
        try:
            record = self._store.transition(job_id, JobState.PRINTING)
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
        printing = False
        self._stats = {}
        try:
            if work.resume:
                printing = self._begin_resume(work.job_id)
                if printing:
                    self._print_from_journal(work.job_id, job_dir / GCODE_NAME)
                    self._complete(work.job_id)
                return
            if not self._begin(work.job_id):
                return
            job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            model = self._download(work, job_dir)
            self._step(work.job_id, JobState.SLICING)
            gcode, layers = self._slice(work.job_id, model, job_dir)
            self._step(work.job_id, JobState.PRINTING, progress=0.0, layer=0, layers=layers)
            printing = True
            self._print(work.job_id, gcode, layers)
            self._complete(work.job_id)
            return
        except (Cancelled, DownloadCancelled):
            state = JobState.INTERRUPTED if self._shutdown.is_set() else JobState.CANCELLED
            fields: dict[str, Any] = {}
        except P3DError as exc:
            state, fields = JobState.FAILED, {"error": exc.to_http()["error"]}
        except Exception as exc:  # a bug must not leave the job active forever
            log.exception("job %s failed", work.job_id)
            error = P3DError(ErrorCode.UNKNOWN, f"internal error ({type(exc).__name__})")
            state, fields = JobState.FAILED, {"error": error.to_http()["error"]}
        if printing:
            self._end_sequence()
        self._finish(work.job_id, state, **fields)

    def _begin(self, job_id: str) -> bool:
        """Take the job; False if it ended (was cancelled) while it waited."""
        with self._lock:
            if self._shutdown.is_set() or self._store.require(job_id).state.terminal:
                return False
            self._cancel.clear()
            self._pause.clear()
            self._running = job_id
            self._store.transition(job_id, JobState.DOWNLOADING)
            return True

    def _begin_resume(self, job_id: str) -> bool:
        with self._lock:
            if self._shutdown.is_set() or self._store.require(job_id).state.terminal:
                return False
            self._cancel.clear()
            self._pause.clear()
            self._running = job_id
            return True

    def _print_from_journal(self, job_id: str, gcode: Path) -> None:
        """Marlin power-loss recovery from the journal: the layer in progress again."""
        lines = load_lines(gcode)
        layers = scan_layers(lines)
        acked, _ = self._store.acked(job_id) or (0, 0)
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
        record = self._store.require(job_id)
        self._print(job_id, gcode, record.view.layers, start=start, lines=lines)

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

    def _slice(self, job_id: str, model: Path, job_dir: Path) -> tuple[Path, int]:
        writer = _ProgressWriter(self._store, job_id, per_layer=False)

        def progress(done: int, total: int) -> None:
            if self._cancel.is_set():
                raise Cancelled()
            writer.write(progress=100.0 * done / max(total, 1), layer=done, layers=total)

        gcode = job_dir / "model.gcode"
        try:
            result = self._slice_fn(model, gcode, self._profile, progress=progress)
        except Exception as exc:
            if self._cancel.is_set():     # the slicer may wrap our Cancelled as SLICE_FAILED
                raise Cancelled() from None
            if isinstance(exc, (P3DError, Cancelled)):
                raise
            log.exception("slicer failed on job %s", job_id)
            raise P3DError(ErrorCode.SLICE_FAILED,
                           f"slicer failed ({type(exc).__name__})") from None
        return gcode, int(result.layers)

    def _print(self, job_id: str, gcode: Path, layers: int, start: int = 0,
               lines: list[str] | None = None) -> None:
        """Stream the G-code from command `start` on, journaling what the firmware acked."""
        lines = load_lines(gcode) if lines is None else lines
        marks = scan_layers(lines)
        tracker = _PrintTracker(_ProgressWriter(self._store, job_id), marks, layers,
                                start, state_before(lines, start))
        tracker.journal()
        link = self._ensure_link()
        try:
            stats = link.stream(tracker.pull(lines), on_sent=tracker.sent, cancel=self._cancel,
                                pause=self._pause, park=tracker.park)
        except P3DError:
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

    def _ensure_link(self) -> "SerialLink":
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


class _ProgressWriter:
    """Writes job progress to the store at most every PROGRESS_INTERVAL.

    With `per_layer`, a new layer number is always written at once (printing); slicing
    reports many layers a second and is only throttled.
    """

    def __init__(self, store: JobStore, job_id: str, per_layer: bool = True) -> None:
        self._store, self._job_id, self._per_layer = store, job_id, per_layer
        self._last = 0.0
        self._layer = -1

    def write(self, force: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        layer = fields.get("layer", self._layer)
        new_layer = self._per_layer and layer != self._layer
        if force or new_layer or now - self._last >= PROGRESS_INTERVAL:
            if "progress" in fields:
                fields["progress"] = round(min(100.0, max(0.0, fields["progress"])), 2)
            self._store.update_progress(self._job_id, **fields)
            self._last, self._layer = now, layer

    def journal(self, acked: int, layer: int) -> None:
        self._store.record_acked(self._job_id, acked, layer)


class _PrintTracker:
    """Layer, progress and journal from the commands the firmware acknowledged; the machine
    state at the last acknowledged command (to park a paused print and come back)."""

    def __init__(self, writer: _ProgressWriter, marks: Layers, layers: int, start: int = 0,
                 state: MachineState | None = None) -> None:
        self._writer, self._marks, self._layers = writer, marks, layers
        self._total = max(marks.total, 1)
        self._start = start
        self._unapplied: list[str] = []
        self.state = state or MachineState()
        self.acked = start                  # commands of the file acknowledged
        self.layer = self._layer_of(start)

    def pull(self, lines: Iterable[str]) -> Iterator[str]:
        """The file's lines from command `start` on (comments pass through; `commands`
        drops them), remembering commands until they are acknowledged."""
        count = 0
        for raw in lines:
            command = raw.split(";", 1)[0].strip()
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
        layer = self._layer_of(done)
        if layer != self.layer:
            self.layer = layer
            self.journal()
        self._writer.write(progress=self.progress(), layer=self.layer)

    def journal(self) -> None:
        self._writer.journal(self.acked, self.layer)

    def park(self) -> tuple[list[str], list[str]]:
        return park(self.state), unpark(self.state)

    def _layer_of(self, acked: int) -> int:
        """Layer in progress once `acked` commands ran (that of the next command)."""
        layer = self._marks.layer_at(acked)
        return min(layer, self._layers) if self._layers else layer

    def progress(self) -> float:
        return 100.0 * self.acked / self._total

    def stats(self) -> dict[str, Any]:
        return {"linesSent": self.acked - self._start, "resends": 0, "checksumErrors": 0,
                "printSeconds": 0.0}

    def flush(self, **fields: Any) -> None:
        self.journal()
        self._writer.write(force=True, progress=self.progress(), layer=self.layer, **fields)


def count_commands(gcode: Path) -> int:
    """Lines that carry a command once comments are stripped (what the link will send)."""
    with open(gcode, encoding="utf-8", errors="replace") as fh:
        return sum(1 for line in fh if line.split(";", 1)[0].strip())


def _stats_map(stats: "StreamStats") -> dict[str, Any]:
    return {"linesSent": int(stats.lines_sent), "resends": int(stats.resends),
            "checksumErrors": int(stats.checksum_errors),
            "printSeconds": round(float(stats.seconds), 3)}
