"""Start-up wiring of the plug-in host process: build the plug-ins, trap signals, serve."""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from zmq.utils import z85

from gotapi3dp.buskeys import (CLIENT_NAME, SERVER_NAME, admit, clients_dir,
                               load_or_create_pair, server_dir)
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
    if settings.bus_security not in ("curve", "none"):
        raise ConfigError(f"plugin_host.bus_security must be curve or none, "
                          f"not {settings.bus_security!r}")
    if settings.bus_security == "none":
        return None
    key_dir = config.dir_for("plugin_host") / "bus"
    pair = load_or_create_pair(key_dir, CLIENT_NAME)
    if settings.bus_server_key:
        key = settings.bus_server_key.encode()
        try:
            valid = len(key) == 40 and len(z85.decode(key)) == 32
        except (ValueError, KeyError, IndexError):
            valid = False
        if not valid:
            raise ConfigError("plugin_host.bus_server_key must be a CURVE public key "
                              "(40 Z85 characters, the public-key line of server.key)")
        return HostAuth(pair, server_key=key)
    gotapi_dir = Path(config.data_dir) / "gotapi"
    admit(clients_dir(gotapi_dir), settings.host_id, key_dir / f"{CLIENT_NAME}.key")
    return HostAuth(pair, server_key_file=server_dir(gotapi_dir) / f"{SERVER_NAME}.key")
