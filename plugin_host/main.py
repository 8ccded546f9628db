"""Start-up wiring of the plug-in host process: build the plug-ins, trap signals, serve."""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from gotapi3dp.config import Config

from .host import PluginHost
from .idempotency import IdempotencyStore

log = logging.getLogger(__name__)


def serve(config: Config) -> None:
    """Run the plug-in host until SIGINT or SIGTERM (call from the main thread)."""
    from plugin_host.printer3d.plugin import build_plugins

    plugins = build_plugins(config)
    idempotency = IdempotencyStore(config.dir_for("plugin_host") / "idempotency.sqlite3")
    host = PluginHost(config.plugin_host, plugins, idempotency=idempotency)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        host.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
