"""The plug-in host's end of the Intent bus: one DEALER, one poll loop, handlers on a pool.

Majordomo-worker style. The loop thread owns the DEALER: it announces the plug-ins (READY),
heartbeats, reconnects afresh (new socket, back-off) when the server goes silent or says
DISCONNECT, and hands each REQUEST to a worker thread. Workers and plug-ins never send:
replies and events come back through a `Mailbox` (queue + wake-up pipe) the loop polls.

Fast path: a plug-in may define `answer_now(intent) -> Intent | None`, which must never
block (no I/O, no waiting on a lock held across I/O): it answers from memory (a cache) or
returns None. The loop thread calls it first and sends its answer at once, which saves the
two thread hops (loop -> pool -> mailbox -> loop) of a request that needs no work; None, a
request with an idempotency key, or an exception sends the request to the pool as before.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from gotapi3dp.buskeys import ClientKeys
from gotapi3dp.config import PluginHostConfig
from gotapi3dp.wire.busproto import (COMMAND_NAMES, DISCONNECT, EVENT, HEARTBEAT,
                                     HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS, MAX_FRAME_BYTES,
                                     PROTOCOL, READY, RECONNECT_MAX, RECONNECT_MIN, REPLY,
                                     REQUEST, SOCKET_HWM, Announce, connection_id,
                                     encode_announce)
from gotapi3dp.mailbox import Mailbox
from gotapi3dp.zmqio import NOBLOCK, POLLIN, poll_readable, readable, recv_frames, send_frames
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.intent import Action, Intent, IntentError, decode, encode

from .idempotency import IdempotencyStore
from .plugin import Plugin

log = logging.getLogger(__name__)

DISCOVERY_PROFILE = "networkServiceDiscovery"
DISCOVERY_ATTRIBUTE = "getNetworkServices"
SEND_TIMEOUT_MS = 100
GOODBYE_LINGER_MS = 200  # let the final DISCONNECT leave before the socket closes
WORKERS = 16
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
# What libzmq 4.3.5 reports when the two ends disagree on bus_security (CURVE vs NULL), in
# either direction: about half the time HANDSHAKE_FAILED_PROTOCOL with this value (this end
# read the peer's greeting first), else HANDSHAKE_FAILED_NO_DETAIL with EPIPE (the peer saw
# the mismatch first and closed). A wrong bus_server_key gives NO_DETAIL/EPIPE as well.
_MECHANISM_MISMATCH = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
REPEAT_AFTER = 60.0   # seconds before the same diagnosis (or dropped command) is logged again
_CHECK_SECURITY = "check bus_security in [gotapi] and [plugin_host] (they must match)"


# CURVE towards the bus: this host's pair and the server's public key, given or read from
# its file at each connect, so a host started before the server finds it once it is made.
HostAuth = ClientKeys


class PluginHost:
    """Hosts plug-ins and connects them to the GotAPI server's bus."""

    def __init__(self, config: PluginHostConfig, plugins: list[Plugin], *,
                 heartbeat: float = HEARTBEAT_INTERVAL, liveness: int = HEARTBEAT_LIVENESS,
                 reconnect_min: float = RECONNECT_MIN, reconnect_max: float = RECONNECT_MAX,
                 workers: int = WORKERS, idempotency: IdempotencyStore | None = None,
                 auth: HostAuth | None = None) -> None:
        self._config = config
        self._auth = auth
        self._idempotency = idempotency
        self._plugins = {p.info.id: p for p in plugins}
        if len(self._plugins) != len(plugins):
            raise ValueError("two plug-ins share an id")
        self._heartbeat = heartbeat
        self._expiry = heartbeat * liveness
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._workers = workers
        self._halt = threading.Event()
        self._mailbox = Mailbox()
        # Owned by the loop thread (inside run()):
        self._ctx: zmq.Context[Any] | None = None
        self._socket: zmq.Socket[Any] | None = None
        self._monitor: zmq.Socket[Any] | None = None   # the DEALER's handshake events
        self._said: dict[str, tuple[float, int]] = {}  # _say: when last logged, times held back
        self._poll_items: list[tuple[Any, int]] = []   # what the loop waits on (zmq_poll)
        self._pool: ThreadPoolExecutor | None = None
        self._last_recv = self._last_send = 0.0
        self._backoff = reconnect_min
        self._reconnect_at = 0.0

    def stop(self) -> None:
        """Ask run() to return (any thread)."""
        self._halt.set()
        self._mailbox.post(("wake",))

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set or stop() is called. Creates the ZeroMQ context here."""
        self._ctx = zmq.Context()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="plugin")
        for plugin in self._plugins.values():
            plugin.start(self._emitter(plugin))
        try:
            self._connect()
            while not (stop.is_set() or self._halt.is_set()):
                self._poll_once()
        finally:
            self._shutdown()

    # ---- loop ----

    def _poll_once(self) -> None:
        ready = poll_readable(self._poll_items, max(10, int(self._heartbeat * 250)))
        if self._socket is not None and self._socket in ready:
            self._receive_batch()
        if self._monitor is not None and self._monitor in ready:
            self._guard(self._on_handshake)
        if self._mailbox.fd in ready:
            for item in self._mailbox.drain():
                self._guard(self._outgoing, item)
        self._guard(self._timers)

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("plug-in host: %s failed; message dropped", fn.__name__)

    def _receive_batch(self) -> None:
        for _ in range(256):   # asking ZMQ_EVENTS until empty also re-arms ZMQ_FD
            if self._socket is None or not readable(self._socket):
                return
            self._guard(self._on_frames, recv_frames(self._socket, NOBLOCK))

    def _timers(self) -> None:
        now = time.monotonic()
        if self._socket is None:
            if now >= self._reconnect_at:
                self._connect()
        elif now - self._last_recv > self._expiry:
            log.warning("server silent for %.1f s; reconnecting", now - self._last_recv)
            self._reconnect_later()
        elif now - self._last_send >= self._heartbeat:
            self._send(HEARTBEAT)

    # ---- connection ----

    def _connect(self) -> None:
        assert self._ctx is not None
        if self._auth is not None:
            try:
                server_key = self._auth.server_public()
            except (OSError, ValueError) as exc:
                log.warning("no public key of the bus server yet (%s); retrying", exc)
                self._reconnect_later()
                return
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self._auth is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self._auth.pair.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self._auth.pair.secret)
        sock.setsockopt(zmq.ROUTING_ID, connection_id(self._config.host_id))
        sock.setsockopt(zmq.SNDHWM, SOCKET_HWM)
        sock.setsockopt(zmq.RCVHWM, SOCKET_HWM)
        sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        # Under either bus_security: a mismatch (CURVE against NULL) shows only here.
        self._monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        sock.connect(self._config.bus_endpoint)
        self._socket = sock
        self._reset_poll_items()
        self._last_recv = time.monotonic()
        announce = Announce(self._config.host_id, [p.info for p in self._plugins.values()])
        self._send(READY, encode_announce(announce))
        log.info("connecting to %s as %s", self._config.bus_endpoint, self._config.host_id)

    def _close(self, linger: int = 0) -> None:
        if self._monitor is not None:
            if self._socket is not None:
                self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._socket is not None:
            self._socket.close(linger=linger)
            self._socket = None
            self._reset_poll_items()

    def _on_handshake(self) -> None:
        """A failed handshake is a configuration error, not a silent server: say which (at
        most once per REPEAT_AFTER), and retry after the back-off (not libzmq's 100 ms
        retries, each refused)."""
        while self._monitor is not None and readable(self._monitor):
            message = recv_monitor_message(self._monitor, NOBLOCK)
            event, value = message["event"], message["value"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._said.clear()    # a later failure is news again
                continue
            where = self._config.bus_endpoint
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and value != 400:
                self._say(logging.ERROR, "zap-status",
                          "the bus at %s could not check this host's key (ZAP status %s); "
                          "retrying", where, value)
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._say(logging.ERROR, "not-admitted",
                          "the bus at %s refused this host's key: it is not in the server's "
                          "allow-list (copy this host's plugin_host/bus/client.key into the "
                          "server's gotapi/bus/clients/ as %s.key)", where,
                          self._config.host_id)
            else:
                self._handshake_failed(where, event, value)
            self._reconnect_later()

    def _handshake_failed(self, where: str, event: int, value: int) -> None:
        """Log the likely cause of a handshake that failed without a ZAP verdict."""
        curve = self._auth is not None
        mismatch = event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MECHANISM_MISMATCH
        closed = event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        if mismatch and curve:
            self._say(logging.ERROR, "mismatch",
                      "the bus at %s does not speak CurveZMQ but this host has bus_security "
                      "= \"curve\": the server has bus_security = \"none\"; %s; retrying",
                      where, _CHECK_SECURITY)
        elif mismatch:
            self._say(logging.ERROR, "mismatch",
                      "the bus at %s speaks CurveZMQ but this host has bus_security = "
                      "\"none\"; %s; retrying", where, _CHECK_SECURITY)
        elif closed and not curve:
            # A NULL bus never closes a NULL handshake, a CURVE one does: the same cause, so
            # the same key (libzmq reports a mismatch either way, at random).
            self._say(logging.ERROR, "mismatch",
                      "the bus at %s closed the connection during the handshake (%s): it "
                      "likely speaks CurveZMQ but this host has bus_security = \"none\"; %s; "
                      "retrying", where, _strerror(value), _CHECK_SECURITY)
        elif closed:
            # A wrong server key, or a NULL bus that saw the mismatch first: libzmq cannot tell.
            self._say(logging.ERROR, "curve-closed",
                      "the CurveZMQ handshake with %s failed (the server closed the "
                      "connection: %s): either bus_server_key is not the server's public key, "
                      "or the server has bus_security = \"none\"; %s; retrying",
                      where, _strerror(value), _CHECK_SECURITY)
        else:
            self._say(logging.ERROR, "protocol",
                      "the %shandshake with %s failed (ZMTP protocol error %#x): is the "
                      "GotAPI bus listening there%s? %s; retrying",
                      "CurveZMQ " if curve else "", where, value,
                      ", and is bus_server_key its public key" if curve else "",
                      _CHECK_SECURITY)

    def _say(self, level: int, key: str, msg: str, *args: Any) -> None:
        """Log `msg`, unless the line under `key` was logged less than REPEAT_AFTER ago (then
        at debug level only): a host retrying every back-off, or dropping a command every
        poll, must not repeat the same cause without end. The next line it does log says
        how many were held back."""
        now = time.monotonic()
        last, held = self._said.get(key, (None, 0))
        if last is not None and now - last < REPEAT_AFTER:
            self._said[key] = (last, held + 1)
            log.debug(msg, *args)
            return
        self._said[key] = (now, 0)
        if held:
            msg, args = msg + " (%d more times in the last %.0f s)", (*args, held, now - last)
        log.log(level, msg, *args)

    def _reconnect_later(self) -> None:
        """Close the socket; a fresh one connects after the back-off (doubling, capped)."""
        self._close()
        self._reconnect_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._reconnect_max)

    def _reset_poll_items(self) -> None:
        self._poll_items = [(self._mailbox.fd, POLLIN)]
        if self._socket is not None:
            self._poll_items.append((self._socket, POLLIN))
        if self._monitor is not None:
            self._poll_items.append((self._monitor, POLLIN))

    def _shutdown(self) -> None:
        if self._socket is not None:
            self._send(DISCONNECT)
            self._close(linger=GOODBYE_LINGER_MS)
        for plugin in self._plugins.values():
            self._guard(plugin.stop)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._mailbox.close()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _send(self, command: bytes, body: bytes | None = None) -> None:
        if self._socket is None:
            log.debug("not connected; %s dropped", _name(command))
            return
        frames = [PROTOCOL, command] + ([body] if body is not None else [])
        try:
            send_frames(self._socket, frames)
        except zmq.Again:
            self._say(logging.WARNING, "send:" + _name(command),
                      "send queue to the server is full; %s dropped", _name(command))
            return
        self._last_send = time.monotonic()

    # ---- server -> host ----

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) < 2 or frames[0] != PROTOCOL:
            log.warning("dropped a non-%s message (%d frames)", PROTOCOL.decode(), len(frames))
            return
        self._last_recv = time.monotonic()
        command, body = frames[1], frames[2:]
        if command == DISCONNECT:
            log.warning("server sent DISCONNECT; reconnecting")
            self._reconnect_later()
            return
        self._backoff = self._reconnect_min  # the server talks to us: the link is good
        if command == REQUEST and len(body) == 1:
            self._on_request(body[0])
        elif command != HEARTBEAT:
            log.warning("unexpected %s with %d body frames", _name(command), len(body))

    def _on_request(self, body: bytes) -> None:
        try:
            intent = decode(body)
        except IntentError as exc:
            log.warning("bad REQUEST: %s", exc)
            if exc.request_code is not None:
                self._send(REPLY, encode(Intent(Action.RESPONSE, exc.request_code, result=1,
                                                error_code=ErrorCode.BAD_INTENT,
                                                error_message=str(exc))))
            return
        assert self._pool is not None
        if not intent.action.is_request:
            targets = [self._plugins[intent.plugin_id]] if intent.plugin_id in self._plugins \
                else list(self._plugins.values()) if intent.plugin_id is None else []
            for plugin in targets:
                self._pool.submit(self._guard, plugin.notice, intent)
            return
        plugin = self._plugins.get(intent.plugin_id or "")
        if plugin is None:
            self._send(REPLY, encode(intent.error(
                ErrorCode.NOT_SUPPORT_PROFILE,
                f"plug-in {intent.plugin_id!r} is not on host {self._config.host_id}")))
            return
        payload = self._answer_now(plugin, intent)
        if payload is not None:
            self._send(REPLY, payload)
        else:
            self._pool.submit(self._work, plugin, intent)

    def _answer_now(self, plugin: Plugin, intent: Intent) -> bytes | None:
        """The encoded REPLY if the plug-in answers from memory (see the module docstring)."""
        answer_now = plugin.answer_now
        if intent.idempotency_key:
            return None
        try:
            reply = answer_now(intent)
            if reply is None:
                return None
            if not (isinstance(reply, Intent) and reply.action is Action.RESPONSE
                    and reply.request_code == intent.request_code):
                raise TypeError(f"answer_now returned {type(reply).__name__}")
            if reply.plugin_id != intent.plugin_id:
                reply = dataclasses.replace(reply, plugin_id=intent.plugin_id)
            return _checked(reply)
        except Exception:  # the pool's full path answers, and reports, properly
            log.exception("plug-in %s: answer_now failed on %s", plugin.info.id, intent.path)
            return None

    # ---- worker threads -> loop ----

    def _work(self, plugin: Plugin, intent: Intent) -> None:
        """Run on a pool thread: call the plug-in, encode, hand the REPLY to the loop."""
        if self._idempotency is not None:
            reply = self._idempotency.run(intent, lambda i: _answer(plugin, i))
        else:
            reply = _answer(plugin, intent)
        try:
            payload = _checked(reply)
        except IntentError as exc:
            log.error("plug-in %s: response to %s is not a valid Intent: %s",
                      plugin.info.id, intent.path, exc)
            payload = encode(intent.error(ErrorCode.UNKNOWN,
                                          f"the plug-in's response is not valid: {exc}"))
        self._mailbox.post((REPLY, payload))

    def _emitter(self, plugin: Plugin) -> Callable[[Intent], None]:
        def emit(intent: Intent) -> None:
            if intent.action is not Action.EVENT:
                raise ValueError(f"emit() takes EVENT intents, not {intent.action.value}")
            intent = dataclasses.replace(intent, plugin_id=plugin.info.id)
            if not self._mailbox.post((EVENT, _checked(intent))):
                log.debug("host stopped; event %s dropped", intent.path)
        return emit

    def _outgoing(self, item: tuple[Any, ...]) -> None:
        if item[0] in (REPLY, EVENT):
            self._send(item[0], item[1])


def _answer(plugin: Plugin, intent: Intent) -> Intent:
    try:
        if intent.profile == DISCOVERY_PROFILE and intent.attribute == DISCOVERY_ATTRIBUTE:
            return intent.response({"services": plugin.services()})
        reply = plugin.handle(intent)
    except P3DError as exc:
        return intent.error(exc.code, exc.message)
    except Exception as exc:
        log.exception("plug-in %s failed on %s", plugin.info.id, intent.path)
        return intent.error(ErrorCode.UNKNOWN, str(exc) or type(exc).__name__)
    if not (isinstance(reply, Intent) and reply.action is Action.RESPONSE
            and reply.request_code == intent.request_code):
        log.error("plug-in %s returned %r for %s, not its RESPONSE", plugin.info.id,
                  type(reply).__name__, intent.path)
        return intent.error(ErrorCode.UNKNOWN, "the plug-in returned an invalid response")
    if reply.plugin_id != intent.plugin_id:  # the server matches replies by (requestCode, pluginId)
        reply = dataclasses.replace(reply, plugin_id=intent.plugin_id)
    return reply


def _name(command: bytes) -> str:
    """A bus command as the logs name it (READY, HEARTBEAT...), not as bytes."""
    return COMMAND_NAMES.get(command, f"command {command[:8]!r}")


def _strerror(errno: int) -> str:
    try:
        return os.strerror(errno) if errno else "no detail"
    except (ValueError, OverflowError):
        return f"errno {errno}"


def _checked(intent: Intent) -> bytes:
    """Encode what a plug-in made; `encode` refuses what the server's `decode` would, so
    the server can always read what we send."""
    try:
        return encode(intent)
    except (TypeError, ValueError) as exc:  # IntentError (bad field, too large) is a ValueError
        raise IntentError(str(exc), intent.request_code) from None
