"""Start-up wiring of the plug-in host process: build the plug-ins, trap signals, serve."""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from gotapi3dp.buskeys import BUS_SECURITY, client_keys
from gotapi3dp.config import Config, ConfigError
from gotapi3dp.wire.busproto import HOST_ID_RE

from .host import HostAuth, PluginHost
from .idempotency import IdempotencyStore

log = logging.getLogger(__name__)



def serve(config: Config) -> None:
    """Run the plug-in host until SIGINT or SIGTERM (call from the main thread)."""
    from plugin_host.printer3d.plugin import build_plugins

    plugins = build_plugins(config)
    idempotency = IdempotencyStore(config.dir_for("plugin_host") / "idempotency.sqlite3")
    host = PluginHost(config.plugin_host, plugins, idempotency=idempotency,
                      auth=host_auth(config))
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


def host_auth(config: Config) -> HostAuth | None:
    """CURVE keys for the bus (`gotapi3dp/buskeys.py`), per `[plugin_host] bus_security`.

    Without `bus_server_key`, the server is taken to share this data dir: its public key is
    read from there, and this host's own public key is put in its allow-list."""
    settings = config.plugin_host
    if not HOST_ID_RE.fullmatch(settings.host_id):
        raise ConfigError("plugin_host.host_id must be 1-64 of A-Za-z0-9_.- (it names the "
                          "host's key file and its bus connections)")
    if settings.bus_security not in BUS_SECURITY:
        raise ConfigError(f"plugin_host.bus_security must be curve or none, "
                          f"not {settings.bus_security!r}")
    if settings.bus_security == "none":
        return None
    try:
        return client_keys(Path(config.data_dir), config.dir_for("plugin_host") / "bus",
                           settings.host_id, settings.bus_server_key)
    except ValueError as exc:
        raise ConfigError(f"plugin_host.bus_server_key: {exc}") from None
