"""The GotAPI server's end of the Intent bus: one ROUTER, shared by Flask threads under a lock.

Majordomo-style broker side. Plug-in hosts connect DEALERs (routing id = host id), announce
their plug-ins with READY and heartbeat. ZeroMQ sockets are not thread-safe, so one lock owns
the sockets and the bus state: whoever holds it may touch them. A Flask request thread calling
`Bus.request()` takes the lock and sends the Intent itself, then waits on a one-shot latch;
the bus thread sleeps in `select.poll` on the ROUTER's ZMQ_FD (never calling into the socket
unlocked), takes the lock to read replies, and opens the waiting thread's latch. One thread
hand-over per request instead of three (request thread -> bus thread -> request thread),
which is what a request costs under the GIL. ZMQ_FD is edge-triggered, so every lock holder
that sends also checks ZMQ_EVENTS and reads what has arrived before it lets go.

Under gevent (the GotAPI server's default worker) request greenlets do not send: they queue
the Intent and park, and one hub callback sends everything queued since it was scheduled,
then reads what has arrived, all in one turn of the loop. Notices are queued the same way,
so one never overtakes a request made before it. Greenlets never run in parallel,
so sending at once bought no latency; what it cost was a wake-up of ZeroMQ's I/O thread and
a ZMQ_EVENTS check for every request, and on a virtual machine those cross-thread wake-ups
are the dearest part of a send. Batched, a burst of requests pays for them once.

The tap is an XPUB: the bus thread reads its subscriptions and copies frames to it only
while some `bus tap` subscribes, so an unwatched bus pays nothing for it.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import zmq

from gotapi3dp.wire.busproto import (COMMAND_NAMES, DISCONNECT, EVENT, HEARTBEAT,
                                     HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS, MAX_FRAME_BYTES,
                                     PROTOCOL, READY, REPLY, REQUEST, SOCKET_HWM, decode_announce,
                                     host_id_of)
from gotapi3dp.buskeys import KeyPair, allowed_keys, z85_of
from gotapi3dp.mailbox import Mailbox
from gotapi3dp.zmqio import (NOBLOCK, discard_frames, more_frames, readable, recv_frames,
                             recv_frames_and_user, send_frames)
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.intent import Action, Intent, IntentError, decode, encode

from .apispec import check_document
from .fdwait import FdWaiter, fd_waiter, gevent_patched
from .latch import Latch, latch_factory
from .redaction import redact_body
from .tap import tap_topic

log = logging.getLogger(__name__)

SEND_TIMEOUT_MS = 100    # ROUTER_MANDATORY + full HWM blocks at most this long
TAP_HWM = 10_000         # the tap PUB drops beyond this, never blocks the bus
RECV_BATCH = 256         # messages read per poll before timers and the mailbox get a turn
RECV_BATCH_BYTES = 4 << 20  # ... or this many bytes, so big frames cannot hold the loop
MAX_MESSAGE_FRAMES = 8   # ours have 4 (routing id, protocol, command, body); more: junk
DISCARD_SLICE = 2000     # frames of a junk message thrown away per turn of the loop
PLUGIN_HOLD = 300.0      # s a plug-in stays its host's while offline (`_held_for_another`)
ZAP_ENDPOINT = "inproc://zeromq.zap.01"   # where libzmq asks who may connect (RFC 27)
ZAP_DOMAIN = b"gotapi-bus"
TAP_ZAP_DOMAIN = b"gotapi-tap"
ZMTP_HEARTBEAT_MS = 1000   # libzmq's own pings: a link silent for 3 of them is closed
WARN_BURST, WARN_TOTAL, WARN_WINDOW = 5, 50, 10.0   # per peer, in all, per window (s)
PENDING_GRACE = 1.0      # a pending request outlives its caller's timeout by this, then is purged
START_TIMEOUT = 10.0
BATCH_RETRY = 0.001      # s; a send batch that found the lock taken (gevent) tries again

_INTENT_COMMANDS = frozenset({REQUEST, REPLY, EVENT})   # their body is one Intent
# Body frames each host -> server command must carry.
_BODY_FRAMES = {READY: 1, REPLY: 1, EVENT: 1, HEARTBEAT: 0, DISCONNECT: 0}


@dataclass
class PluginRecord:
    id: str
    name: str
    version: str
    profiles: list[str]
    host_id: str
    online: bool
    last_seen: float  # wall clock (time.time()) of the last frame from its host
    apis: dict[str, Any] = dataclasses.field(default_factory=dict)  # profile -> Swagger doc


@dataclass
class _Host:
    peer: bytes
    plugin_ids: list[str]
    last_recv: float  # monotonic
    last_send: float


@dataclass
class _Pending:
    latch: Latch
    peer: bytes
    plugin_id: str
    deadline: float  # monotonic


@dataclass(slots=True)
class _Outgoing:
    """A request (`key`, `latch`, `deadline`) or a notice (`key` None; `plugin_id` None:
    every host) waiting for the next send batch (gevent)."""

    payload: bytes
    key: tuple[bytes, str] | None = None
    latch: Latch | None = None
    deadline: float = 0.0
    plugin_id: str | None = None


@dataclass(frozen=True)
class BusAuth:
    """CURVE on the bus: the server's key pair and the allow-list directories of host keys
    and of tap keys (`gotapi3dp/buskeys.py`). Without it the bus takes any peer (tests,
    `bus_security = "none"`)."""

    pair: KeyPair
    clients_dir: Path
    taps_dir: Path | None = None     # None: the tap endpoint admits nobody under CURVE


class _WarnQuota:
    """At most WARN_BURST warnings per peer and WARN_TOTAL in all per WARN_WINDOW: a peer
    sending junk as fast as it can must not fill the disk with log lines (one run wrote
    110 MB in 6 s), nor many peers, each under its own limit."""

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, tuple[float, int]] = OrderedDict()
        self._total: tuple[float, int] = (0.0, 0)

    def allow(self, peer: bytes) -> bool:
        """Whether to log a warning about `peer`. Only lines that would be logged count
        against the overall budget: one flooding peer, silenced after its burst, must not
        use it up and hide what other peers do meanwhile."""
        now = time.monotonic()
        start, count = self._seen.pop(peer, (now, 0))
        if now - start > WARN_WINDOW:
            start, count = now, 0
        self._seen[peer] = (start, count + 1)      # most recent last
        while len(self._seen) > 1024:
            self._seen.popitem(last=False)
        if count > WARN_BURST:
            return False
        since, total = self._total
        if now - since > WARN_WINDOW:
            since, total = now, 0
        self._total = (since, total + 1)
        if total >= WARN_TOTAL:          # many ids, each within its burst, cannot beat it
            if total == WARN_TOTAL:
                log.warning("bus: over %d warnings in %.0f s; no more are logged for %.0f s",
                            WARN_TOTAL, WARN_WINDOW, WARN_WINDOW - (now - since))
            return False
        if count == WARN_BURST:          # this call's line, from the same budget
            log.warning("bus: further warnings about %r in the next %.0f s are not logged",
                        peer[:64], WARN_WINDOW - (now - start))
        return count < WARN_BURST


class Bus:
    """Server end of the bus. `start()` after fork; `request()` from any thread."""

    def __init__(self, endpoint: str, tap_endpoint: str | None = None, *,
                 heartbeat: float = HEARTBEAT_INTERVAL,
                 liveness: int = HEARTBEAT_LIVENESS, auth: BusAuth | None = None) -> None:
        self.endpoint = endpoint          # replaced by the bound address (port 0 / * resolved)
        self.tap_endpoint = tap_endpoint
        self._auth = auth
        self._warn = _WarnQuota()
        self._heartbeat = heartbeat
        self._expiry = heartbeat * liveness
        self._ctx: zmq.Context[Any] | None = None
        self._thread: threading.Thread | None = None
        self._mailbox: Mailbox | None = None
        self._snapshot: tuple[PluginRecord, ...] = ()   # replaced whole by the bus thread
        self._callbacks: tuple[Callable[[str, Intent], None], ...] = ()
        # Owned by whoever holds `_lock` (the bus thread, or a request thread sending):
        self._lock = threading.Lock()
        self._router: zmq.Socket[Any] | None = None
        self._tap: zmq.Socket[Any] | None = None
        self._zap: zmq.Socket[Any] | None = None
        self._tap_topics: set[bytes] = set()   # topics some tap subscriber holds
        self._hosts: dict[bytes, _Host] = {}   # by routing id (one per connection)
        self._peers: dict[str, bytes] = {}     # host id -> routing id of its live connection
        self._records: dict[str, PluginRecord] = {}
        self._discarding = False               # a junk message is being thrown away
        self._tap_seq = 0                      # messages copied to the tap
        self._told: OrderedDict[bytes, float] = OrderedDict()  # unknown peer -> DISCONNECT sent
        self._live_replaced: dict[str, float] = {}   # host id -> last replacement of a live link
        self._offline_since: dict[str, float] = {}   # plug-in id -> when its host went (monotonic)
        # Keyed by (requestCode, pluginId): one Intent may be fanned out to several plug-ins.
        self._pending: dict[tuple[bytes, str], _Pending] = {}
        self._events: list[Intent] = []    # read, not yet delivered to the callbacks
        self._stopping = False
        self._next_refresh = 0.0
        self._new_latch: Callable[[], Latch] = latch_factory()
        # Under gevent: requests and notices queued for the next send batch, in call order,
        # and the hub's loop whose callback sends it.
        self._outbox: list[_Outgoing] = []
        self._hub_loop: Any = None

    # ---- public API (any thread) ----

    def start(self) -> None:
        if self._thread is not None:
            return
        self._ctx = zmq.Context()
        self._mailbox = Mailbox()
        self._new_latch = latch_factory()   # gevent patches after the app is built, if at all
        self._hub_loop = _hub_loop()
        self._stopping = False
        started: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(started,), name="gotapi-bus",
                                        daemon=True)
        self._thread.start()
        try:
            started.result(timeout=START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        assert self._mailbox is not None and self._ctx is not None
        self._mailbox.post("stop")
        thread.join(timeout=5.0)
        if thread.is_alive():
            log.error("bus thread did not stop; leaving its context open")
            return
        self._ctx.term()
        self._ctx = None

    def request(self, intent: Intent, plugin_id: str, timeout: float) -> Intent:
        """Send a request Intent to a plug-in and block for its RESPONSE (same requestCode)."""
        if not intent.action.is_request:
            raise P3DError(ErrorCode.BAD_INTENT, f"{intent.action.value} is not a request action")
        if intent.plugin_id != plugin_id:
            intent = dataclasses.replace(intent, plugin_id=plugin_id)
        payload = _encode(intent)
        latch = self._new_latch()
        deadline = time.monotonic() + timeout
        key = (intent.request_code, plugin_id)
        with self._lock:
            if self._router is None or self._stopping:
                raise P3DError(ErrorCode.ILLEGAL_SERVER_STATE, "the bus is not running")
            if self._hub_loop is not None:
                self._queue(_Outgoing(payload, key, latch, deadline))
            else:
                try:
                    self._start_request(key, payload, latch, deadline)
                finally:
                    self._read_if_pending()    # also when the send failed: it may have used ZMQ_FD
        if not latch.wait(deadline - time.monotonic()):
            with self._lock:
                self._pending.pop(key, None)
            if not latch.done():
                raise P3DError(ErrorCode.TIMEOUT,
                               f"plug-in {plugin_id} did not answer within {timeout:g} s")
            latch.wait(0)  # settled just now: take its result
        if latch.error is not None:
            raise latch.error
        assert latch.result is not None
        return latch.result

    def _queue(self, item: "_Outgoing") -> None:
        """(Lock held, gevent.) Add to the next batch; the first item schedules it."""
        self._outbox.append(item)
        if len(self._outbox) == 1:
            self._hub_loop.run_callback(self._send_batch)

    def _send_batch(self) -> None:
        """Hub callback (gevent): send what was queued, in order, then read what has arrived.

        It runs in the hub, which must never block: greenlets never switch while holding
        the lock, so it is free here; if it ever is not, the batch tries again on a timer
        (another callback would come round in the same pass, and spin).
        """
        if not self._lock.acquire(blocking=False):
            timer = self._hub_loop.timer(BATCH_RETRY)

            def retry() -> None:
                timer.close()
                self._send_batch()
            timer.start(retry)
            return
        try:
            batch, self._outbox = self._outbox, []
            for item in batch:
                self._send_queued(item)
            if self._router is not None:
                self._read_if_pending()
        finally:
            self._lock.release()

    def _send_queued(self, item: "_Outgoing") -> None:
        """(Lock held.) Send one queued notice or request; a request that cannot go fails
        at once, through its latch."""
        running = self._router is not None and not self._stopping
        if item.key is None:
            if running:
                self._guard(self._notify, item.payload, item.plugin_id)
            return
        assert item.latch is not None
        try:
            if not running:
                raise P3DError(ErrorCode.ILLEGAL_SERVER_STATE, "the bus stopped")
            self._start_request(item.key, item.payload, item.latch, item.deadline)
        except Exception as exc:
            if not isinstance(exc, P3DError):
                log.exception("bus: sending a request failed")
                exc = P3DError(ErrorCode.UNKNOWN, f"the bus could not send: {exc}")
            item.latch.set(error=exc)

    def notify(self, intent: Intent, plugin_id: str | None = None) -> None:
        """Fire-and-forget (lifecycle notices); plugin_id None = every connected host."""
        if plugin_id is not None and intent.plugin_id != plugin_id:
            intent = dataclasses.replace(intent, plugin_id=plugin_id)
        payload = _encode(intent)
        with self._lock:
            if self._router is None or self._stopping:
                log.debug("bus not running; notice %s dropped", intent.action.value)
                return
            if self._hub_loop is not None:   # behind the requests queued before it
                self._queue(_Outgoing(payload, plugin_id=plugin_id))
                return
            try:
                self._notify(payload, plugin_id)
            finally:
                self._read_if_pending()

    def plugins(self) -> list[PluginRecord]:
        """The plug-ins as last published: shared snapshot records, read them, never write."""
        return list(self._snapshot)

    def on_event(self, callback: Callable[[str, Intent], None]) -> None:
        """Register callback(plugin_id, EVENT intent). Callbacks run on the bus thread, in the
        order the events arrived, without the bus lock held; keep them short, and never wait
        on `request()` there (its reply would be read by the very thread that waits)."""
        self._callbacks = (*self._callbacks, callback)

    # ---- the bus thread ----

    def _run(self, started: "Future[None]") -> None:
        try:
            with self._lock:
                self._open_sockets()
        except zmq.ZMQError as exc:
            self._close_sockets()
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            self._loop()
        finally:
            stopped = P3DError(ErrorCode.ILLEGAL_SERVER_STATE, "the bus stopped")
            with self._lock:
                self._stopping = True
                for key in list(self._pending):
                    self._settle(key, error=stopped)
                assert self._mailbox is not None
                self._mailbox.close()
                self._close_sockets()

    def _open_sockets(self) -> None:
        assert self._ctx is not None
        self._discarding = False     # what was being thrown away went with the old socket
        if self._auth is not None:   # the handler must exist before the first handshake
            zap = self._zap = self._ctx.socket(zmq.REP)
            zap.setsockopt(zmq.LINGER, 0)
            zap.bind(ZAP_ENDPOINT)
        router = self._router = self._ctx.socket(zmq.ROUTER)
        if self._auth is not None:
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_SECRETKEY, self._auth.pair.secret)
            router.setsockopt(zmq.CURVE_PUBLICKEY, self._auth.pair.public)
            router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)   # unroutable -> EHOSTUNREACH, not silence
        # With CURVE, a routing id belongs to the connection that holds it: handing it over
        # would let any allow-listed key take another host's id (and its apps' requests).
        # Our hosts tag each connection (busproto.connection_id), so none waits for an old
        # id; ZMTP heartbeats close a dead host's link within seconds all the same.
        router.setsockopt(zmq.ROUTER_HANDOVER, 0 if self._auth is not None else 1)
        router.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_MS)
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_MS * HEARTBEAT_LIVENESS)
        # A host whose queue is full holds a blocking send up to SNDTIMEO. In a thread that
        # stalls the bus; under gevent (a real, not green, socket) it would stall every
        # connection of the server, so there a full queue fails the send at once.
        router.setsockopt(zmq.SNDTIMEO, 0 if gevent_patched() else SEND_TIMEOUT_MS)
        router.setsockopt(zmq.SNDHWM, SOCKET_HWM)
        router.setsockopt(zmq.RCVHWM, SOCKET_HWM)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        router.bind(_bindable(self.endpoint))
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.tap_endpoint:
            tap = self._tap = self._ctx.socket(zmq.XPUB)
            if self._auth is not None:   # taps are admitted from the taps' allow-list
                tap.setsockopt(zmq.CURVE_SERVER, 1)
                tap.setsockopt(zmq.CURVE_SECRETKEY, self._auth.pair.secret)
                tap.setsockopt(zmq.CURVE_PUBLICKEY, self._auth.pair.public)
                tap.setsockopt(zmq.ZAP_DOMAIN, TAP_ZAP_DOMAIN)
            tap.setsockopt(zmq.LINGER, 0)
            tap.setsockopt(zmq.SNDHWM, TAP_HWM)
            tap.bind(_bindable(self.tap_endpoint))
            self.tap_endpoint = tap.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("bus listening on %s (%s; tap %s)", self.endpoint,
                 "CURVE, hosts allow-listed in %s" % self._auth.clients_dir if self._auth
                 else "no authentication", self.tap_endpoint or "off")

    def _close_sockets(self) -> None:
        for sock in (self._router, self._tap, self._zap):
            if sock is not None:
                sock.close(linger=0)
        self._router = self._tap = self._zap = None

    def _loop(self) -> None:
        """Sleep on the sockets' file descriptors, then do everything under the lock.

        Timers (heartbeats, expiries, the plug-in snapshot) and the tap's subscriptions are
        looked at on their own tick, not on every wake-up: under load the loop wakes once
        per reply and must do no more than read it.
        """
        assert self._router is not None and self._mailbox is not None
        mailbox_fd = self._mailbox.fd
        tap_fd = self._tap.getsockopt(zmq.FD) if self._tap is not None else -1
        zap_fd = self._zap.getsockopt(zmq.FD) if self._zap is not None else -1
        fds = [self._router.getsockopt(zmq.FD), mailbox_fd] + [
            fd for fd in (tap_fd, zap_fd) if fd >= 0]
        waiter = fd_waiter(fds)
        try:
            self._serve(waiter, mailbox_fd, tap_fd, zap_fd)
        finally:
            waiter.close()

    def _serve(self, waiter: FdWaiter, mailbox_fd: int, tap_fd: int, zap_fd: int) -> None:
        assert self._router is not None and self._mailbox is not None
        poll_ms = max(10, int(self._heartbeat * 250))
        tick, next_tick = poll_ms / 1000.0, 0.0
        while not self._stopping:
            ready = waiter.wait(poll_ms)
            with self._lock:
                if mailbox_fd in ready and "stop" in self._mailbox.drain():
                    self._stopping = True
                    return
                now = time.monotonic()
                due = now >= next_tick
                if tap_fd >= 0 and (due or tap_fd in ready):
                    self._guard(self._on_subscriptions)
                if zap_fd >= 0 and (due or zap_fd in ready):
                    self._guard(self._on_zap)
                if due:
                    next_tick = now + tick
                    self._guard(self._timers)      # may send heartbeats: read after it
                self._receive_batch()
            if self._events:
                self._deliver_events()

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        """Run one handler; a bug or a hostile frame must never end the bus thread."""
        try:
            fn(*args)
        except Exception:
            log.exception("bus: handler %s failed; message dropped", fn.__name__)

    def _read_if_pending(self) -> None:
        """After a send (lock held): read what has arrived. ZMQ_FD is edge-triggered and a
        send may consume its signal, so the bus thread's poll would not wake for it."""
        self._receive_batch()

    def _receive_batch(self) -> None:
        """Read what has arrived (lock held), at most RECV_BATCH messages. Asking ZMQ_EVENTS
        until it says empty also re-arms ZMQ_FD, so the poll wakes for the next arrival."""
        router = self._router
        assert router is not None
        size = 0
        authenticated = self._auth is not None
        for _ in range(RECV_BATCH):
            if self._discarding:
                self._discarding = discard_frames(router, DISCARD_SLICE)
                break
            if not readable(router):
                return
            user = None
            if authenticated:
                frames, user = recv_frames_and_user(router, NOBLOCK, MAX_MESSAGE_FRAMES)
            else:
                frames = recv_frames(router, NOBLOCK, MAX_MESSAGE_FRAMES)
            size += sum(len(f) for f in frames)
            if len(frames) == MAX_MESSAGE_FRAMES and more_frames(router):
                # libzmq holds a message until its last frame, however many; MAXMSGSIZE
                # bounds each frame, nothing bounds their number. Thrown away in slices.
                if self._warn.allow(frames[0]):
                    log.warning("bus: dropped a message of more than %d frames from %r",
                                MAX_MESSAGE_FRAMES, frames[0][:64])
                self._discarding = True
                break
            if authenticated and (user is None or user.encode() != host_id_of(frames[0])):
                self._wrong_key(frames[0], user)
            else:
                self._guard(self._on_frames, frames)
            if size > RECV_BATCH_BYTES:
                break
        # More may be waiting: make sure the bus thread's poll wakes again for it.
        assert self._mailbox is not None
        self._mailbox.post("more")

    def _wrong_key(self, peer: bytes, user: str | None) -> None:
        """A message whose routing id is not the name its key is allow-listed under (the
        file `<host_id>.key`): dropped, so one host's key cannot speak as another host."""
        if self._warn.allow(peer):
            log.warning("bus: dropped a message from %r: its key is allow-listed as %r; a host "
                        "must connect with the id its key file is named after", peer[:64], user)

    # ---- host -> server ----

    def _on_frames(self, frames: list[bytes]) -> None:
        self._tap_copy(b"in", frames)
        if len(frames) < 3 or frames[1] != PROTOCOL:
            if self._warn.allow(frames[0]):
                log.warning("bus: dropped a non-%s message (%d frames) from %r",
                            PROTOCOL.decode(), len(frames), frames[0][:64])
            return
        peer, command, body = frames[0], frames[2], frames[3:]
        host = self._hosts.get(peer)
        if host is not None:
            host.last_recv = time.monotonic()
        expected = _BODY_FRAMES.get(command)
        if expected is None or (host is None and command != READY):
            if self._warn.allow(peer):
                log.warning("bus: unexpected %s from %s %r", _name(command),
                            "host" if host else "unknown peer", peer[:64])
            if host is None and command != DISCONNECT and self._may_tell(peer):
                self._send(peer, DISCONNECT)
            return
        if len(body) != expected:
            if self._warn.allow(peer):
                log.warning("bus: %s from %r has %d body frames, expected %d",
                            _name(command), peer[:64], len(body), expected)
            return
        handler = {READY: self._on_ready, REPLY: self._on_reply, EVENT: self._on_event,
                   HEARTBEAT: self._on_heartbeat, DISCONNECT: self._on_disconnect}[command]
        handler(peer, *body)

    def _may_tell(self, peer: bytes) -> bool:
        """Whether to send DISCONNECT to an unknown peer now: once a second at most, so a
        peer flooding junk does not get a reply per frame (318 000 in 5 s)."""
        now, last = time.monotonic(), self._told.get(peer)
        if last is not None and now - last < 1.0:
            return False
        self._told[peer] = now
        self._told.move_to_end(peer)
        while len(self._told) > 1024:
            self._told.popitem(last=False)
        return True

    def _on_ready(self, peer: bytes, body: bytes) -> None:
        if peer in self._hosts:     # the same connection announces again: start afresh
            self._drop_host(peer, "announced itself again")
        try:
            announce = decode_announce(body)
            for plugin in announce.plugins:
                for profile, doc in (plugin.apis or {}).items():
                    try:
                        check_document(doc)
                    except ValueError as exc:
                        raise IntentError(f"plug-in {plugin.id}, profile {profile}: {exc}")
        except IntentError as exc:
            if self._warn.allow(peer):
                log.error("bus: refused READY from %r: %s", peer[:64], exc)
            self._send(peer, DISCONNECT)
            return
        old = self._peers.get(announce.host_id)
        if old is not None and announce.host_id.encode() == host_id_of(peer):
            # The host is back on a new connection before its old link closed (a vanished
            # machine's link lives until heartbeats end it). Under CURVE only its own key
            # can speak for its id, so the new connection is taken at its word.
            self._note_live_replacement(announce.host_id, self._hosts.get(old))
            self._drop_host(old, "reconnected")
        taken = [p.id for p in announce.plugins if p.id in self._records
                 and self._records[p.id].online]
        owned = {p.id: self._records[p.id].host_id for p in announce.plugins
                 if self._held_for_another(p.id, announce.host_id)}
        if announce.host_id.encode() != host_id_of(peer) or taken or owned:
            if self._warn.allow(peer):
                log.error("bus: refused READY from %r (host id %r%s%s)", peer[:64],
                          announce.host_id, f"; plug-ins already online: {taken}" if taken else "",
                          f"; plug-ins of other hosts: {owned}" if owned else "")
            self._send(peer, DISCONNECT)
            return
        now = time.monotonic()
        self._hosts[peer] = _Host(peer, [p.id for p in announce.plugins], now, now)
        self._peers[announce.host_id] = peer
        self._forget_plugins(announce.host_id, {p.id for p in announce.plugins})
        for p in announce.plugins:
            self._records[p.id] = PluginRecord(p.id, p.name, p.version, list(p.profiles),
                                               announce.host_id, True, time.time(), p.apis)
            self._offline_since.pop(p.id, None)
        self._publish()
        if self._warn.allow(b"ready:" + announce.host_id.encode()):
            log.info("bus: host %s ready with plug-ins %s", announce.host_id,
                     [p.id for p in announce.plugins])

    def _held_for_another(self, plugin_id: str, host_id: str) -> bool:
        """Whether `plugin_id` belongs to another host than `host_id`.

        A plug-in id belongs to the host that registered it, online or offline for up to
        PLUGIN_HOLD: another host, even an allow-listed one, cannot take it over while its
        host is stalled or restarting (apps' requests carry contents keys). After that it
        may move (a host renamed, replaced or moved to another machine); its own host coming
        back without it releases it at once."""
        record = self._records.get(plugin_id)
        if record is None or record.host_id == host_id:
            return False
        since = self._offline_since.get(plugin_id)      # monotonic: a clock step moves nothing
        return record.online or since is None or time.monotonic() - since < PLUGIN_HOLD

    def _note_live_replacement(self, host_id: str, previous: "_Host | None") -> None:
        """A host's new connection replaces one still heard from within a heartbeat. Once is
        a host recovering from a stall of the server (its old link's heartbeats were read
        late); again within WARN_WINDOW is two live hosts under one id and key (a copied data
        dir), which take turns for ever: say so."""
        now = time.monotonic()
        if previous is None or now - previous.last_recv >= self._heartbeat:
            return
        last, self._live_replaced[host_id] = self._live_replaced.get(host_id), now
        if last is not None and now - last < WARN_WINDOW and self._warn.allow(
                b"clone:" + host_id.encode()):
            log.error("bus: host %s keeps connecting again while its other connection is "
                      "alive: two plug-in hosts share that host id and key (a copied data "
                      "dir?); give each its own", host_id)

    def _forget_plugins(self, host_id: str, keep: set[str]) -> None:
        """Drop the records of `host_id`'s plug-ins that its new READY no longer offers (see
        `_held_for_another`)."""
        for plugin_id in [i for i, r in self._records.items()
                          if r.host_id == host_id and i not in keep]:
            del self._records[plugin_id]
            self._offline_since.pop(plugin_id, None)

    def _on_reply(self, peer: bytes, body: bytes) -> None:
        try:
            intent = decode(body)
        except IntentError as exc:
            if self._warn.allow(peer):
                log.warning("bus: bad REPLY from %r: %s", peer[:64], exc)
            key = self._match(peer, exc.request_code, None)
            if key is not None:
                self._settle(key, error=P3DError(
                    ErrorCode.BAD_INTENT, f"the plug-in sent an invalid response: {exc}"))
            return
        key = self._match(peer, intent.request_code, intent.plugin_id)
        if key is None:
            log.debug("bus: late or unknown REPLY %s from %r dropped",
                      intent.request_code.hex()[:8], peer[:64])
            return
        if intent.action is not Action.RESPONSE:
            self._settle(key, error=P3DError(
                ErrorCode.BAD_INTENT, f"the plug-in replied with {intent.action.value}"))
            return
        self._settle(key, result=intent)

    def _on_event(self, peer: bytes, body: bytes) -> None:
        mine = self._hosts[peer].plugin_ids
        try:
            intent = decode(body) if mine else None
        except IntentError as exc:
            if self._warn.allow(peer):
                log.warning("bus: bad EVENT from %r: %s", peer[:64], exc)
            return
        if intent is None or intent.action is not Action.EVENT or intent.plugin_id not in mine:
            if self._warn.allow(peer):
                log.warning("bus: dropped %s from %r for plug-in %r",
                            intent.action.value if intent else "an EVENT", peer[:64],
                            intent.plugin_id if intent else None)
            return
        # Any lock holder may read this event; only the bus thread delivers, outside the lock
        # (a callback may call notify()), and in arrival order.
        self._events.append(intent)
        if threading.current_thread() is not self._thread:
            assert self._mailbox is not None
            self._mailbox.post("events")

    def _deliver_events(self) -> None:
        """Run the callbacks for the events read so far (bus thread, lock not held)."""
        with self._lock:
            events, self._events = self._events, []
        for intent in events:
            for callback in self._callbacks:
                self._guard(callback, intent.plugin_id, intent)

    def _on_heartbeat(self, peer: bytes) -> None:
        pass  # last_recv was refreshed in _on_frames

    def _on_disconnect(self, peer: bytes) -> None:
        self._drop_host(peer, "disconnected")

    # ---- request threads (lock held) ----

    def _start_request(self, key: tuple[bytes, str], payload: bytes, latch: Latch,
                       deadline: float) -> None:
        rc, plugin_id = key
        host = self._host_of(plugin_id)
        if key in self._pending:
            raise P3DError(ErrorCode.ILLEGAL_SERVER_STATE,
                           f"requestCode {rc.hex()} is already in flight to {plugin_id}")
        if host is None or not self._send(host.peer, REQUEST, payload):
            raise P3DError(ErrorCode.ILLEGAL_SERVER_STATE, f"Plug-in {plugin_id} is not connected.")
        self._pending[key] = _Pending(latch, host.peer, plugin_id, deadline)

    def _notify(self, payload: bytes, plugin_id: str | None) -> None:
        if plugin_id is None:
            hosts = list(self._hosts.values())
        else:
            host = self._host_of(plugin_id)
            hosts = [host] if host is not None else []
        for host in hosts:
            self._send(host.peer, REQUEST, payload)

    # ---- timers ----

    def _timers(self) -> None:
        now = time.monotonic()
        for peer, host in list(self._hosts.items()):
            if now - host.last_recv > self._expiry:
                self._drop_host(peer, "stopped answering (heartbeat expiry)")
            elif now - host.last_send >= self._heartbeat:
                self._send(peer, HEARTBEAT)
        for key, pending in list(self._pending.items()):
            if now > pending.deadline + PENDING_GRACE:
                self._settle(key, error=P3DError(ErrorCode.TIMEOUT))
        if now >= self._next_refresh:
            self._next_refresh = now + self._heartbeat
            self._publish()

    # ---- state helpers ----

    def _host_of(self, plugin_id: str) -> _Host | None:
        record = self._records.get(plugin_id)
        if record is None or not record.online:
            return None
        peer = self._peers.get(record.host_id)
        return self._hosts.get(peer) if peer is not None else None

    def _match(self, peer: bytes, rc: bytes | None,
               plugin_id: str | None) -> tuple[bytes, str] | None:
        """The pending request a reply from `peer` answers; without a pluginId, the only one."""
        if rc is None:
            return None
        if plugin_id is not None:
            pending = self._pending.get((rc, plugin_id))
            return (rc, plugin_id) if pending is not None and pending.peer == peer else None
        keys = [k for k, p in self._pending.items() if k[0] == rc and p.peer == peer]
        return keys[0] if len(keys) == 1 else None

    def _settle(self, key: tuple[bytes, str], result: Intent | None = None,
                error: Exception | None = None) -> None:
        pending = self._pending.pop(key, None)
        if pending is None or pending.latch.done():
            return
        pending.latch.set(result, error)

    def _drop_host(self, peer: bytes, why: str) -> None:
        host = self._hosts.pop(peer, None)
        if host is None:
            return
        name = host_id_of(peer).decode(errors="replace")
        if self._warn.allow(b"drop:" + host_id_of(peer)):
            log.warning("bus: plug-in host %s %s; plug-ins %s offline",
                        peer.decode(errors="replace"), why, host.plugin_ids)
        if self._peers.get(name) == peer:
            del self._peers[name]
        for plugin_id in host.plugin_ids:
            record = self._records.get(plugin_id)
            if record is not None and record.host_id == name:
                record.online = False
                self._offline_since[plugin_id] = time.monotonic()
        error = P3DError(ErrorCode.TIMEOUT, f"plug-in host {name} {why}")
        for key in [k for k, p in self._pending.items() if p.peer == peer]:
            self._settle(key, error=error)
        self._publish()

    def _publish(self) -> None:
        """Replace the read-only snapshot other threads see (no lock: one reference swap)."""
        wall, now = time.time(), time.monotonic()
        for host in self._hosts.values():
            for plugin_id in host.plugin_ids:
                self._records[plugin_id].last_seen = wall - (now - host.last_recv)
        self._snapshot = tuple(dataclasses.replace(r, profiles=list(r.profiles))
                               for r in self._records.values())

    # ---- server -> host ----

    def _send(self, peer: bytes, command: bytes, body: bytes | None = None) -> bool:
        assert self._router is not None
        frames = [peer, PROTOCOL, command] + ([body] if body is not None else [])
        try:
            send_frames(self._router, frames)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: gone; EAGAIN: its queue stayed full
            if self._warn.allow(peer):
                log.warning("bus: %s to %r failed: %s", _name(command), peer[:64], exc)
            if exc.errno == zmq.EHOSTUNREACH:
                self._drop_host(peer, "is unreachable")
            return False
        host = self._hosts.get(peer)
        if host is not None:
            host.last_send = time.monotonic()
        self._tap_copy(b"out", frames)
        return True

    def _on_subscriptions(self) -> None:
        """XPUB subscription frames (non-verbose: a topic's first subscribe, b"\\x01" +
        topic, and its last unsubscribe or disconnect, b"\\x00" + topic)."""
        assert self._tap is not None
        for _ in range(RECV_BATCH):
            try:
                frame = self._tap.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] == b"\x01":
                self._tap_topics.add(frame[1:])
            elif frame[:1] == b"\x00":
                self._tap_topics.discard(frame[1:])

    def _on_zap(self) -> None:
        """Answer libzmq's ZAP requests (RFC 27): a CURVE client is admitted when its public
        key is in the allow-list; the handshake of any other peer fails, so it never gets
        to send a frame, let alone claim a host's routing id."""
        zap = self._zap
        assert zap is not None
        for _ in range(RECV_BATCH):
            if not readable(zap):
                return
            request = recv_frames(zap, NOBLOCK)
            try:
                answer = self._zap_answer(request)
            except Exception:   # a REP that never answers would stall every later handshake
                if self._warn.allow(b"zap-handler"):
                    log.exception("bus: the ZAP handler failed; refusing that connection")
                answer = [b"1.0", request[1] if len(request) > 1 else b"", b"500",
                          b"internal error", b"", b""]
            send_frames(zap, answer, NOBLOCK)

    def _zap_answer(self, frames: list[bytes]) -> list[bytes]:
        request_id = frames[1] if len(frames) > 1 else b""
        if len(frames) < 6 or frames[0] != b"1.0":
            return [b"1.0", request_id, b"400", b"malformed ZAP request", b"", b""]
        domain, address, mechanism, credentials = frames[2], frames[3], frames[5], frames[6:]
        key = z85_of(credentials[0]) if mechanism == b"CURVE" and credentials else None
        directory = self._allow_list(domain)
        name = allowed_keys(directory).get(key) if key and directory else None
        if name is not None:
            return [b"1.0", request_id, b"200", b"OK", name.encode(), b""]
        if self._warn.allow(b"zap:" + address):
            log.warning("bus: refused a %s connection to the %s from %s%s",
                        mechanism.decode(errors="replace"),
                        "tap" if domain == TAP_ZAP_DOMAIN else "bus",
                        address.decode(errors="replace"),
                        f": key {key.decode()} is not in {directory}" if key and directory else "")
        return [b"1.0", request_id, b"400", b"not allowed", b"", b""]

    def _allow_list(self, domain: bytes) -> Path | None:
        """The allow-list of a ZAP domain: hosts on the bus, taps on the tap endpoint. It is
        read afresh at every handshake (a few small files, once per connection): a key copied
        in is admitted and a key removed is refused from the next connection on, without a
        restart. A link already open stays until it closes."""
        assert self._auth is not None
        if domain == ZAP_DOMAIN:
            return self._auth.clients_dir
        return self._auth.taps_dir if domain == TAP_ZAP_DOMAIN else None

    def _tap_copy(self, direction: bytes, frames: list[bytes]) -> None:
        if self._tap is None or not self._tap_topics:
            return
        self._tap_seq += 1               # a tap that misses some sees the gap
        try:
            send_frames(self._tap, [tap_topic(direction, self._tap_seq), *_tap_frames(frames)],
                        NOBLOCK)
        except zmq.ZMQError:
            pass  # a tap is best effort


def _tap_frames(frames: list[bytes]) -> list[bytes]:
    """A bus message as the tap may see it: Intent bodies redacted, READY announces as they
    are, every other body blanked (the tap endpoint has no authentication; redaction.py)."""
    if len(frames) < 2:
        return frames
    if frames[1] != PROTOCOL:
        return [frames[0], *(b"" for _ in frames[1:])]
    if len(frames) == 4 and frames[2] in _INTENT_COMMANDS:
        return [*frames[:3], redact_body(frames[3])]
    if len(frames) == 4 and frames[2] == READY:
        return frames
    return [*frames[:3], *(b"" for _ in frames[3:])]


def _hub_loop() -> Any:
    """Under gevent, the hub's loop (requests are sent in batches from its callbacks); in
    threads, None (each request thread sends its own)."""
    if not gevent_patched():
        return None
    from gevent import get_hub

    return get_hub().loop


def _encode(intent: Intent) -> bytes:
    try:
        return encode(intent)
    except IntentError as exc:
        raise P3DError(ErrorCode.PAYLOAD_TOO_LARGE, str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise P3DError(ErrorCode.BAD_INTENT, f"intent cannot be encoded: {exc}") from None


def _bindable(endpoint: str) -> str:
    """Accept port 0 as 'any free port' (libzmq spells it '*')."""
    return endpoint[:-2] + ":*" if endpoint.endswith(":0") else endpoint


def _name(command: bytes) -> str:
    return COMMAND_NAMES.get(command, f"command {command[:8]!r}")
