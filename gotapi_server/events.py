"""GotAPI-5 event routing: which app (origin) listens to what, and its one open WebSocket.

Registrations are keyed like Device Connect's EventBroker: (origin, public serviceId,
profile, interface, attribute). A plug-in's EVENT Intent (on the bus thread) is turned into
the event JSON and queued, in arrival order, to the socket of every origin registered for
it; the socket's own thread sends it. One socket per origin (GotAPI); closing it drops the
origin's registrations and tells every plug-in (EVENT_TRANSMIT_DISCONNECT with `origin`).
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from gotapi3dp.wire.intent import Action, Intent

from .services import public_id

log = logging.getLogger(__name__)

SESSION_QUEUE = 10_000  # events waiting for one slow socket before it is dropped

Key = tuple[str, str, str, str, str]  # origin, serviceId, profile, interface, attribute


@dataclass(eq=False)
class Session:
    """One open WebSocket; its thread takes event texts from `outbox` (None = close)."""

    origin: str
    outbox: "queue.Queue[str | None]" = field(
        default_factory=lambda: queue.Queue(SESSION_QUEUE))

    def stop(self) -> None:
        """Make the socket's thread return at once: what is still queued is dropped."""
        while True:
            try:
                while True:
                    self.outbox.get_nowait()
            except queue.Empty:
                pass
            try:
                self.outbox.put_nowait(None)
                return
            except queue.Full:  # the bus thread refilled it meanwhile
                continue


def _key(origin: str, service_id: str, profile: str, interface: str | None,
         attribute: str | None) -> Key:
    return (origin, service_id, profile.lower(), (interface or "").lower(),
            (attribute or "").lower())


def event_json(intent: Intent, service_id: str) -> str:
    """The GotAPI-5 message of an EVENT Intent: serviceId, profile, attribute + payload."""
    body: dict[str, Any] = dict(intent.params)
    body.update(serviceId=service_id, profile=intent.profile)
    if intent.interface:
        body["interface"] = intent.interface
    if intent.attribute:
        body["attribute"] = intent.attribute
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class EventHub:
    """Registrations and sessions; thread-safe. `dispatch` is the bus's EVENT callback."""

    def __init__(self, bus: Any) -> None:
        self._bus = bus
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._keys: set[Key] = set()

    def open(self, origin: str) -> Session | None:
        """A session for `origin`, or None if it already has one (WebSocket error 4)."""
        with self._lock:
            if origin in self._sessions:
                return None
            session = self._sessions[origin] = Session(origin)
            return session

    def close(self, session: Session) -> None:
        with self._lock:
            if self._sessions.get(session.origin) is not session:
                return
            del self._sessions[session.origin]
            self._keys = {k for k in self._keys if k[0] != session.origin}
        self._bus.notify(Intent(Action.EVENT_TRANSMIT_DISCONNECT, origin=session.origin))

    def register(self, origin: str, service_id: str, profile: str, interface: str | None,
                 attribute: str | None) -> None:
        with self._lock:
            self._keys.add(_key(origin, service_id, profile, interface, attribute))

    def unregister(self, origin: str, service_id: str, profile: str, interface: str | None,
                   attribute: str | None) -> None:
        with self._lock:
            self._keys.discard(_key(origin, service_id, profile, interface, attribute))

    def registered(self, origin: str) -> list[Key]:
        with self._lock:
            return sorted(k for k in self._keys if k[0] == origin)

    def dispatch(self, plugin_id: str, intent: Intent) -> None:
        """Queue an EVENT to every listening socket (runs on the bus thread: no waiting)."""
        service_id = public_id(intent.service_id or "", plugin_id)
        wanted = _key("", service_id, intent.profile, intent.interface, intent.attribute)[1:]
        text = event_json(intent, service_id)
        with self._lock:
            targets = [self._sessions[k[0]] for k in self._keys
                       if k[1:] == wanted and k[0] in self._sessions]
        for session in targets:
            try:
                session.outbox.put_nowait(text)
            except queue.Full:
                log.warning("events: socket of %s is not reading; closing it", session.origin)
                session.stop()
