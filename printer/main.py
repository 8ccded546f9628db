"""Start-up wiring of the printer process: `build(config)` in a fixed order, then `serve`.

Order: keys -> trust -> job store -> firmware (virtual, on a pty, unless a serial port is
configured) -> serial link factory -> runner. Nothing starts at import: `serve` builds inside
the Gunicorn worker, after fork. `Printer` is the assembled process the HTTP API talks to.
"""
from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import requests

from gotapi3dp.config import Config, FirmwareConfig, PrinterConfig, check_bind_host, load_config
from gotapi3dp.serving import run_gunicorn
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.ids import check_printer_id
from gotapi3dp.wire.jobs import JobState
from gotapi3dp.wire.token import job_id_for

from .authenticate import authenticate
from .jobs import JobRecord, JobStore
from .keys import PrinterKeys, load_or_create
from .pairing import KeyFollower
from .runner import MODEL_FORMATS, JobRunner, StreamFn, Work, whole_file_stream
from .trust import TrustStore

if TYPE_CHECKING:
    from .firmware import PtyFirmware
    from .serial_link import SerialLink
    from .slicer import SliceResult

log = logging.getLogger(__name__)

_NO_TEMPERATURES = {"hotend": {"actual": None, "target": None},
                    "bed": {"actual": None, "target": None}}


@dataclass
class Printer:
    """The printer process: its identity, trust, jobs and the runner that prints them."""

    config: PrinterConfig
    data_dir: Path
    keys: PrinterKeys
    trust: TrustStore
    jobs: JobStore
    runner: JobRunner
    http: requests.Session
    serial_port: str
    firmware: "PtyFirmware | None" = None
    _accept_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def identity(self) -> dict[str, Any]:
        bed = self.config.slicer
        return {**self.keys.identity(), "bed": {"x": bed.bed_x, "y": bed.bed_y, "z": bed.bed_z},
                "trusted": self.trust.get() is not None}

    def accept(self, token: str, now: float | None = None) -> tuple[JobRecord, bool]:
        """Steps 9-10: check and redeem `token`, then hand the job to the runner.

        Returns (job, started). The same token returns its existing job (a failed one raises
        its error again, so a retried Printing Command never hears "started" for a job that
        failed), except one that
        failed before the contents server could be reached (CONTENTS_UNAVAILABLE): that job
        id is reused, the job goes back to `queued` and is tried again (one token, one job;
        the server's single ISSUED -> REDEEMED keeps it to one print). A busy printer answers
        PRINTER_BUSY before the token is touched (it stays redeemable); a token that fails
        leaves a `failed` job carrying the error, which is re-raised.
        """
        job_id = job_id_for(token)
        with self._accept_lock:
            existing = self.jobs.get(job_id)
            if existing is not None and not _retryable(existing):
                if existing.state is JobState.FAILED:
                    raise _stored_error(existing)   # a retry hears what the first one heard
                return existing, False
            self.runner.reserve(job_id)
            try:
                if existing is None:
                    self.jobs.create(job_id)
                else:
                    self.jobs.reopen(job_id)   # failed -> queued, error cleared
                work = self._authenticate(job_id, token, now)
            except Exception as exc:
                self.runner.release(job_id)
                raise self._failed(job_id, exc) from None
            self.runner.submit(work)
            return self.jobs.require(job_id), True

    def _authenticate(self, job_id: str, token: str, now: float | None) -> Work:
        self.jobs.transition(job_id, JobState.AUTHENTICATING)
        pins = KeyFollower(self.trust, self.http, self.config.http_timeout)
        claims, redemption = authenticate(token, self.keys, pins, self.jobs, self.http,
                                          timeout=self.config.http_timeout, now=now)
        self.jobs.update_progress(job_id, content_id=claims.cid)
        fmt = redemption.content.get("format")
        if fmt not in MODEL_FORMATS:
            raise P3DError(ErrorCode.CONTENT_INVALID, f"unknown model format {fmt!r}")
        size = redemption.content.get("bytes")
        return Work(job_id, redemption.download_url, claims.chash,
                    size if isinstance(size, int) and not isinstance(size, bool) else None, fmt)

    def _failed(self, job_id: str, exc: Exception) -> P3DError:
        if not isinstance(exc, P3DError):
            log.exception("accepting job %s", job_id, exc_info=exc)
            exc = P3DError(ErrorCode.UNKNOWN, f"internal error ({type(exc).__name__})")
        try:
            self.jobs.transition(job_id, JobState.FAILED, error=exc.to_http()["error"])
        except P3DError as again:
            log.warning("job %s not marked failed: %s", job_id, again)
        return exc

    def status(self) -> dict[str, Any]:
        current = self.runner.current
        record = self.jobs.get(current) if current else None
        out: dict[str, Any] = {"state": record.state.value if record else "idle",
                               "temperatures": self.runner.temperatures() or _NO_TEMPERATURES}
        if record is not None:
            out["jobId"] = record.id
        return out

    def close(self) -> None:
        """Stop the runner (an active job becomes interrupted), the firmware, the store."""
        self.runner.stop()
        if self.firmware is not None:
            self.firmware.stop()
        self.http.close()
        self.jobs.close()


def _stored_error(job: JobRecord) -> P3DError:
    """The error a failed job carries, to raise again."""
    error = job.view.error or {}
    try:
        code = ErrorCode(error.get("code"))
    except ValueError:
        code = ErrorCode.UNKNOWN
    return P3DError(code, str(error.get("message") or "the job failed"))


def _retryable(job: JobRecord) -> bool:
    """A job that failed before its token was redeemed, for a reason that may pass."""
    error = job.view.error or {}
    return job.state is JobState.FAILED and error.get("code") == ErrorCode.CONTENTS_UNAVAILABLE


def build(config: Config) -> Printer:
    """Assemble the printer process in a fixed order; starts the firmware and the runner."""
    pc = config.printer
    check_printer_id(pc.printer_id)
    data_dir = config.dir_for("printer")
    keys = load_or_create(data_dir, pc.printer_id, pc.name)
    trust = TrustStore(data_dir / "trust.json")
    jobs = JobStore(data_dir / "jobs.sqlite3")
    if jobs.interrupted_at_start:
        log.warning("jobs interrupted by the last shutdown: %s",
                    ", ".join(jobs.interrupted_at_start))
    firmware, port = _start_firmware(pc, data_dir)
    http = requests.Session()
    try:
        runner = JobRunner(jobs, data_dir / "jobs", keys, pc.slicer,
                           lambda: _make_link(pc, port), _slicer(), http,
                           safe_state_first=bool(jobs.interrupted_at_start))
        runner.start()
    except BaseException:
        if firmware is not None:
            firmware.stop()
        raise
    log.info("printer %s (%s) ready; API key in %s", pc.printer_id, keys.fingerprint,
             data_dir / "api.key")
    return Printer(pc, data_dir, keys, trust, jobs, runner, http, port, firmware)


def _start_firmware(pc: PrinterConfig, data_dir: Path) -> tuple["PtyFirmware | None", str]:
    if pc.serial_port:
        return None, pc.serial_port
    firmware = _make_firmware(pc.firmware, data_dir / "firmware.log")
    return firmware, firmware.start()


# The three collaborators are imported when the printer is built, not when this module is
# imported (trimesh and the pty are heavy); tests replace these functions.
def _make_firmware(config: FirmwareConfig, log_path: Path) -> "PtyFirmware":
    from .firmware import PtyFirmware
    return PtyFirmware(config, log_path)


def _make_link(pc: PrinterConfig, port: str) -> "SerialLink":
    from .serial_link import SerialLink
    return SerialLink(port, pc.baud, ok_timeout=pc.ok_timeout, max_resends=pc.max_resends)


def _slice_fn() -> Callable[..., "SliceResult"]:
    from .slicer import slice_file
    return slice_file


def _slicer() -> StreamFn:
    """The runner's streaming slicer; a replaced `_slice_fn` is run whole, then streamed."""
    from .slicer import slice_file, stream_gcode
    fn = _slice_fn()
    return stream_gcode if fn is slice_file else whole_file_stream(fn)


def serve(config: Config) -> None:
    """Serve the printer HTTP API with Gunicorn until SIGINT/SIGTERM."""
    pc = config.printer
    check_bind_host(pc.host, pc.allow_non_loopback, "printer")
    built: list[Printer] = []
    apps: list[Any] = []

    def factory() -> Any:
        from .app import create_app
        built.append(build(config))
        apps.append(create_app(built[0]))
        return apps[0]

    def on_stopping() -> None:
        from . import api_events
        for app in apps:
            api_events.close(app)       # followers' event streams end now, not in 5 s

    def on_exit() -> None:
        for printer in built:
            printer.close()

    run_gunicorn(factory, pc.host, pc.port, threads=8, name="gotapi-3dp-printer",
                 on_exit=on_exit, on_stopping=on_stopping, refusals="http")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="gotapi-3dp printer process")
    parser.add_argument("--config", help="TOML configuration file")
    parser.add_argument("--data-dir", help="data directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    serve(load_config(args.config, args.data_dir))


if __name__ == "__main__":
    main()
