"""The plug-in base class every plug-in subclasses; the plug-in host calls nothing else.

A plug-in announces `info`, lists its services, and answers request Intents in `handle`
(called on a worker thread; blocking is fine). Events go out through the `emit` callable
the host passes to `start`; it is thread-safe and never touches a socket itself.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from gotapi3dp.wire.busproto import PluginInfo
from gotapi3dp.wire.errors import ErrorCode
from gotapi3dp.wire.intent import Action, Intent

log = logging.getLogger(__name__)

Emit = Callable[[Intent], None]


class Plugin:
    """Subclass, set `info`, override `services` and `handle` (and `start`/`stop` if needed)."""

    info: PluginInfo
    _emit: Emit | None = None  # set by start(); no __init__ to forget calling

    def start(self, emit: Emit) -> None:
        """Called once by the host before any request; keep `emit` for events."""
        self._emit = emit

    def stop(self) -> None:
        """Called once when the host shuts down."""
        self._emit = None

    def services(self) -> list[dict[str, Any]]:
        """[{"id": local id (no dots), "name", "online": bool, "type": str}]"""
        return []

    def handle(self, intent: Intent) -> Intent:
        """Answer one request: `intent.response({...})` or `intent.error(code, message)`.

        Raising `P3DError` is the same as returning `intent.error(exc.code, exc.message)`.
        """
        return intent.error(ErrorCode.NOT_SUPPORT_PROFILE,
                            f"{self.info.id} does not support {intent.path}")

    def answer_now(self, intent: Intent) -> Intent | None:
        """Optional fast path, called on the host's socket thread: answer from memory or
        return None (then `handle` runs on a worker). Must never block or do I/O."""
        return None

    def notice(self, intent: Intent) -> None:
        """A lifecycle notice (e.g. EVENT_TRANSMIT_DISCONNECT with `origin`); nothing to answer."""

    def emit(self, intent: Intent) -> None:
        """Send an EVENT Intent to the server (any thread); dropped when not started."""
        if self._emit is None:
            log.debug("%s not started; event %s dropped", self.info.id, intent.path)
            return
        self._emit(intent)

    def event(self, profile: str, attribute: str | None = None, *, service_id: str | None = None,
              interface: str | None = None, params: dict[str, Any] | None = None) -> Intent:
        """Build an EVENT Intent from this plug-in (send it with `emit`)."""
        return Intent(Action.EVENT, profile=profile, interface=interface, attribute=attribute,
                      service_id=service_id, plugin_id=self.info.id, params=params or {})
