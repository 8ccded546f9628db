"""The 3D printer plug-in: Service Connecting and Printing Command of the Printer Authentication API.

Connect asks the contents server for a secure token sealed to the chosen printer and keeps
it as an opaque string; print hands that token to the printer, which redeems it itself. The
app only ever sees a connectionId, the content's metadata and a jobId.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from gotapi3dp import __version__
from gotapi3dp.config import Config, PrinterEntry
from gotapi3dp.wire.busproto import PluginInfo
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.token import CLOCK_SKEW, job_id_for
from gotapi3dp.wire.ids import CONTENT_ID_RE
from gotapi3dp.wire.intent import Action, Intent
from plugin_host.plugin import Plugin

from .clients import ContentsClient, PrinterClient
from .connections import ConnectionStore
from .feed import JobStream
from .printers import load_printers

log = logging.getLogger(__name__)

PLUGIN_ID = "printer3d"
PROFILE = "printer3d"
SPEC_PATH = Path(__file__).with_name("printer3d.json")
IDENTITY_TIMEOUT = 1.5
EVENT_ATTRIBUTE = "onJobChange"
STATUS_TTL = 1.0  # s a status we asked for is served while the stream is live
STATUS_STALE_MAX = 3.0  # while one refresh is in flight, others get the cache up to this old
# A pushed status is served until this old. The printer re-sends it after 2 s of silence
# (api_events.KEEPALIVE), so only a printer that stopped talking lets it age past this.
PUSHED_MAX_AGE = 5.0
STATUS_TIMEOUT = 3.0  # s to wait for a printer's status: a cheap query, a hung printer is 16
JOB_TIMEOUT = 3.0     # s for `GET job`: one row read, as cheap as status, so the same bound
# s for pause/resume: the printer commits the new state and answers (no waiting on the worker);
# a little more than a read for the write. (Cancel and print keep the configured HTTP timeout:
# the printer answers cancel once its worker has stopped the job, print once it redeemed.)
CONTROL_TIMEOUT = 5.0
# Calls in flight to one printer. The host answers on WORKERS (16) threads; a hung printer
# holds at most this many of them for a timeout, so other printers and calls keep the rest.
PRINTER_CALLS = 4
# s a call waits for one of those slots: a healthy printer answers in milliseconds, so a
# dashboard's burst of parallel polls drains through 4 slots well within it; a hung one holds
# its slots for a timeout (3 s or more), so a call that cannot get one gives up (16) at once
# instead of holding yet another host thread.
SLOT_WAIT = 0.5
_JOB_KEYS = ("id", "state", "progress", "layer", "layers", "sliced", "error", "contentId",
             "createdAt", "updatedAt")

Handler = Callable[[PrinterEntry, Intent], dict[str, Any]]


# A key travels in an HTTP header: printable ASCII without spaces, or the header cannot
# carry it (a non-Latin-1 key was an UNKNOWN error, a CR/LF one "contents unreachable").
CONTENTS_KEY_RE = re.compile(r"[!-~]{1,256}")


def _param(intent: Intent, name: str, pattern: Any = None) -> str:
    """A required string parameter; error 10 names it."""
    value = intent.params.get(name)
    if not isinstance(value, str) or not value:
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, f"{name} is required")
    if pattern is not None and not pattern.fullmatch(value):
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, f"{name} has an invalid format")
    return value


class Printer3DPlugin(Plugin):
    def __init__(self, printers: list[PrinterEntry], contents: ContentsClient,
                 connections: ConnectionStore, http_timeout: float,
                 follow_jobs: bool = True) -> None:
        self._spec = json.loads(SPEC_PATH.read_text())
        self.info = PluginInfo(PLUGIN_ID, "3D Printer (Printer Authentication)", __version__,
                               [PROFILE, "serviceInformation"], {PROFILE: self._spec})
        self._printers = {p.service_id: p for p in printers}
        self._clients = {p.service_id: PrinterClient(p.url, p.api_key, http_timeout) for p in printers}
        self._slots = {p.service_id: threading.BoundedSemaphore(PRINTER_CALLS) for p in printers}
        self._contents = contents
        self._connections = connections
        self._lock = threading.Lock()  # guards the seven collections below
        self._status: dict[str, _Cached] = {}                         # service -> its status
        self._generation: dict[str, int] = {}                        # service -> cache changes
        self._refreshing: set[str] = set()                            # status asked right now
        self._live: dict[str, bool] = {}                               # service -> stream up
        self._last_job: dict[tuple[str, str], tuple[Any, ...]] = {}   # (service, job) -> seen
        self._listeners: dict[tuple[str, str], int] = {}              # (origin, service)
        self._streams = [JobStream(p.service_id, p.url, p.api_key, self._on_job, self._on_live,
                                   self._on_status) for p in printers] if follow_jobs else []
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "connect"): self.connect,
            ("POST", "print"): self.print_,
            ("GET", "job"): self.job,
            ("DELETE", "job"): self.cancel,
            ("PUT", "pause"): self.pause,
            ("PUT", "resume"): self.resume,
            ("GET", "status"): self.status,
            ("PUT", EVENT_ATTRIBUTE.lower()): self.add_listener,
            ("DELETE", EVENT_ATTRIBUTE.lower()): self.remove_listener,
        }

    # -- Plugin interface ---------------------------------------------------------------
    def start(self, emit: Callable[[Intent], None]) -> None:
        self._emit = emit
        for stream in self._streams:
            stream.start()

    def stop(self) -> None:
        for stream in self._streams:
            stream.stop()
        self._connections.close()

    def notice(self, intent: Intent) -> None:
        """EVENT_TRANSMIT_DISCONNECT: the app's WebSocket closed; forget its listeners."""
        if intent.action is Action.EVENT_TRANSMIT_DISCONNECT and intent.origin:
            with self._lock:
                for key in [k for k in self._listeners if k[0] == intent.origin]:
                    del self._listeners[key]

    def services(self) -> list[dict[str, Any]]:
        """Each printer is a service; online if its job API answers now."""
        entries = list(self._printers.values())
        if not entries:
            return []
        with ThreadPoolExecutor(max_workers=min(8, len(entries))) as pool:
            online = list(pool.map(self._is_online, entries))
        return [{"id": p.service_id, "name": p.name, "online": up, "type": "WiFi"}
                for p, up in zip(entries, online)]

    def handle(self, intent: Intent) -> Intent:
        printer = self._printer(intent.service_id)
        if intent.profile.lower() == "serviceinformation":
            return intent.response(self._information())
        handler = self._route(intent)
        try:
            return intent.response(handler(printer, intent))
        except P3DError as exc:
            if exc.code != ErrorCode.PRINTER_UNAVAILABLE:
                raise
            raise P3DError(ErrorCode.ILLEGAL_DEVICE_STATE,
                           f"printer {printer.service_id} is offline: {exc.message}") from None

    # -- printer3d API ------------------------------------------------------------------
    def connect(self, printer: PrinterEntry, intent: Intent) -> dict[str, Any]:
        """Service Connecting (spec steps 2-5): get a secure token for printer + content."""
        content_id = _param(intent, "contentId", CONTENT_ID_RE)
        contents_key = _param(intent, "contentsKey", CONTENTS_KEY_RE)
        issued = self._contents.issue_token(contents_key, self._printer_id(printer), content_id)
        conn = self._connections.add(printer.service_id, intent.origin or "", issued["token"],
                                     issued["content"], float(issued["expiresAt"]))
        return {"connectionId": conn.id, "content": conn.content, "expiresAt": conn.expires_at}

    def print_(self, printer: PrinterEntry, intent: Intent) -> dict[str, Any]:
        """Printing Command (steps 7-12): hand the sealed token to the printer."""
        conn = self._connections.get(_param(intent, "connectionId"), printer.service_id,
                                     intent.origin or "")
        with self._calling(printer) as client:
            if conn.job_id is None and conn.expires_at + CLOCK_SKEW <= time.time():
                # (past the printer's own clock-skew allowance too, so the two never disagree)
                if not _printer_knows(client, conn.token):
                    raise P3DError(ErrorCode.CONNECTION_EXPIRED,
                                   "the connection's secure token has expired; connect again")
            job = client.submit(conn.token)
        self._connections.set_job(conn.id, job["id"])
        return {"jobId": job["id"]}

    def job(self, printer: PrinterEntry, intent: Intent) -> dict[str, Any]:
        """A read: a printer that has not answered within JOB_TIMEOUT is 16, as for status."""
        job_id = _param(intent, "jobId")
        with self._calling(printer) as client:
            return {"job": _app_job(client.job(job_id, timeout=JOB_TIMEOUT))}

    def cancel(self, printer: PrinterEntry, intent: Intent) -> dict[str, Any]:
        job_id = _param(intent, "jobId")
        with self._calling(printer) as client:
            client.cancel(job_id)
        return {}

    def pause(self, printer: PrinterEntry, intent: Intent) -> dict[str, Any]:
        job_id = _param(intent, "jobId")
        with self._calling(printer) as client:
            client.pause(job_id, timeout=CONTROL_TIMEOUT)
        return {}

    def resume(self, printer: PrinterEntry, intent: Intent) -> dict[str, Any]:
        job_id = _param(intent, "jobId")
        with self._calling(printer) as client:
            client.resume(job_id, timeout=CONTROL_TIMEOUT)
        return {}

    def answer_now(self, intent: Intent) -> Intent | None:
        """The host's fast path (never blocks): `GET status` answered from the cache, or
        None (anything else, or no usable cache entry) for `handle` on a worker thread."""
        if (intent.action is not Action.GET or intent.profile.lower() != PROFILE
                or intent.interface or (intent.attribute or "").lower() != "status"):
            return None
        printer = self._printers.get(intent.service_id or "")
        cached = self._cached_status(printer.service_id, False) if printer else None
        return intent.response(cached) if cached is not None else None

    def status(self, printer: PrinterEntry, intent: Intent) -> dict[str, Any]:
        """From the cache while the printer's stream is live (see `_cached_status`); else
        asked from the printer, once at a time. An answer that a job change or a pushed
        status overtook while it was on its way is returned but not cached."""
        sid = printer.service_id
        cached = self._cached_status(sid, True)
        if cached is not None:
            return cached
        with self._lock:
            generation = self._generation.get(sid, 0)
        try:
            with self._calling(printer) as client:
                answer = _status_answer(client.status(timeout=STATUS_TIMEOUT))
        finally:
            with self._lock:
                self._refreshing.discard(sid)
        with self._lock:
            if self._live.get(sid) and self._generation.get(sid, 0) == generation:
                self._status[sid] = _Cached(time.monotonic(), answer, pushed=False)
        return dict(answer)

    def _cached_status(self, sid: str, refresh: bool) -> dict[str, Any] | None:
        """A copy of the usable cache entry, or None; `refresh`: a None makes the caller
        the one refreshing it (the others get the stale entry meanwhile).

        Usable only while the stream is live. A status the printer pushed, for
        PUSHED_MAX_AGE (it pushes every change within a second, and re-sends it after 2 s of
        silence); one this plug-in asked for (a printer that does not push), for STATUS_TTL,
        or STATUS_STALE_MAX while a refresh runs."""
        with self._lock:
            entry = self._status.get(sid) if self._live.get(sid) else None
            age = time.monotonic() - entry.at if entry is not None else 0.0
            if entry is not None and (age < (PUSHED_MAX_AGE if entry.pushed else STATUS_TTL) or (
                    sid in self._refreshing and age < STATUS_STALE_MAX)):
                return dict(entry.answer)
            if refresh:
                self._refreshing.add(sid)
            return None

    def _forget_status(self, sid: str) -> None:
        """Drop the cached status (lock held); an answer asked before this is not cached."""
        self._status.pop(sid, None)
        self._generation[sid] = self._generation.get(sid, 0) + 1

    def add_listener(self, printer: PrinterEntry, intent: Intent) -> dict[str, Any]:
        """PUT onJobChange: the server routes this printer's job events to the app's socket."""
        with self._lock:
            self._listeners[(intent.origin or "", printer.service_id)] = 1
        return {}

    def remove_listener(self, printer: PrinterEntry, intent: Intent) -> dict[str, Any]:
        with self._lock:
            self._listeners.pop((intent.origin or "", printer.service_id), None)
        return {}

    def listeners(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._listeners)

    # -- job stream ----------------------------------------------------------------------
    def _on_live(self, service_id: str, live: bool) -> None:
        with self._lock:
            self._live[service_id] = live
            self._forget_status(service_id)

    def _on_status(self, service_id: str, status: dict[str, Any]) -> None:
        """The printer pushed its status (it changed, the stream just opened, or 2 s passed)."""
        try:
            answer = _status_answer(status)
        except (KeyError, TypeError):
            log.warning("printer %s pushed a status without state/temperatures", service_id)
            return
        with self._lock:
            self._forget_status(service_id)
            if self._live.get(service_id):
                self._status[service_id] = _Cached(time.monotonic(), answer, pushed=True)

    def _on_job(self, service_id: str, job: dict[str, Any]) -> None:
        """A change from the printer's stream: drop the cached status, emit onJobChange once
        per distinct view of the job (a replay after reconnecting repeats nothing)."""
        view = _app_job(job)
        key = (service_id, str(view.get("id")))
        signature = tuple(json.dumps(view.get(k), sort_keys=True) for k in _JOB_KEYS)
        stamp = view.get("updatedAt") if isinstance(view.get("updatedAt"), (int, float)) else 0
        with self._lock:
            self._forget_status(service_id)
            last = self._last_job.get(key)
            if last is not None and (last[0] == signature or stamp < last[1]):
                return  # seen already, or older than what the app has
            self._last_job[key] = (signature, stamp)
        self.emit(self.event(PROFILE, EVENT_ATTRIBUTE, service_id=service_id,
                             params={"job": view}))

    # -- helpers -----------------------------------------------------------------------
    @contextmanager
    def _calling(self, printer: PrinterEntry) -> Iterator[PrinterClient]:
        """The printer's client, holding one of its PRINTER_CALLS slots for the call.

        Without the bound, calls to one hung printer each held a host worker thread until
        their timeout, so every other printer and call waited behind them. A call that gets
        no slot within SLOT_WAIT answers 16 at once: the ones holding them are still waiting."""
        sid = printer.service_id
        slots = self._slots[sid]
        if not slots.acquire(timeout=SLOT_WAIT):
            raise _NoSlot(ErrorCode.ILLEGAL_DEVICE_STATE,
                          f"printer {sid} is not answering: {PRINTER_CALLS} calls to it are "
                          "already waiting; try again later")
        try:
            yield self._clients[sid]
        finally:
            slots.release()

    def _printer(self, service_id: str | None) -> PrinterEntry:
        if not service_id:
            raise P3DError(ErrorCode.EMPTY_SERVICE_ID)
        printer = self._printers.get(service_id)
        if printer is None:
            raise P3DError(ErrorCode.NOT_FOUND_SERVICE, f"no printer with service id {service_id}")
        return printer

    def _route(self, intent: Intent) -> Handler:
        if intent.profile.lower() != PROFILE or intent.interface:
            raise P3DError(ErrorCode.NOT_SUPPORT_PROFILE)
        attribute = (intent.attribute or "").lower()
        handler = self._routes.get((intent.action.value, attribute))
        if handler is not None:
            return handler
        if any(attr == attribute for _, attr in self._routes):
            raise P3DError(ErrorCode.NOT_SUPPORT_ACTION,
                           f"{intent.action.value} is not supported on {attribute}")
        raise P3DError(ErrorCode.NOT_SUPPORT_ATTRIBUTE, f"unknown attribute {attribute!r}")

    def _printer_id(self, printer: PrinterEntry) -> str:
        if not printer.printer_id:
            with self._calling(printer) as client:
                printer.printer_id = client.identity(IDENTITY_TIMEOUT)["printerId"]
        return printer.printer_id

    def _is_online(self, printer: PrinterEntry) -> bool:
        """For discovery. A printer whose call slots are all taken may be busy (cancels and
        submissions hold one for seconds), not hung: its job stream says which."""
        try:
            with self._calling(printer) as client:
                client.identity(IDENTITY_TIMEOUT)
            return True
        except _NoSlot:
            with self._lock:
                return bool(self._live.get(printer.service_id))
        except P3DError:
            return False

    def _information(self) -> dict[str, Any]:
        return {"supports": [PROFILE], "supportApis": {PROFILE: self._spec},
                "connect": {"wifi": True}}


@dataclass(frozen=True)
class _Cached:
    at: float                 # time.monotonic() when it arrived
    answer: dict[str, Any]    # what GET status answers
    pushed: bool              # pushed by the printer (kept up to date), or asked by us


class _NoSlot(P3DError):
    """All of a printer's call slots are taken (`Printer3DPlugin._calling`)."""


def _printer_knows(client: PrinterClient, token: str) -> bool:
    """Whether the printer made a job from `token` (it names each job after its token) that
    a retry would not start again. A Printing Command whose answer was lost, retried once
    the token expired, then hears what any retry hears (the job, or its error) instead of
    1111 while the job runs. A job that failed before its token was redeemed
    (CONTENTS_UNAVAILABLE) would be tried again with the expired token: that is 1111."""
    try:
        job = client.job(job_id_for(token), timeout=JOB_TIMEOUT)
    except P3DError as exc:
        if exc.code == ErrorCode.JOB_NOT_FOUND:
            return False
        raise
    error = job.get("error") if isinstance(job.get("error"), dict) else {}
    return not (job.get("state") == "failed"
                and error.get("code") == ErrorCode.CONTENTS_UNAVAILABLE)


def _status_answer(status: dict[str, Any]) -> dict[str, Any]:
    """The printer's `/api/status` (or pushed status) as `GET printer3d/status` answers it."""
    answer = {"state": status["state"], "temperatures": status["temperatures"]}
    if status.get("jobId"):
        answer["jobId"] = status["jobId"]
    return answer


def _app_job(job: dict[str, Any]) -> dict[str, Any]:
    """The job as the printer3d profile shows it (printer-internal stats stay out)."""
    return {k: job[k] for k in _JOB_KEYS if k in job}


def build_plugins(config: Config) -> list[Plugin]:
    host = config.plugin_host
    store = ConnectionStore(config.dir_for("plugin_host") / "connections.sqlite3")
    contents = ContentsClient(host.contents_url, host.http_timeout)
    return [Printer3DPlugin(load_printers(config), contents, store, host.http_timeout)]
