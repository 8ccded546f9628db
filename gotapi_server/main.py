"""`serve(config)`: run the GotAPI server (HTTP + the Intent bus) under gunicorn."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Flask

from gotapi3dp.buskeys import (BUS_SECURITY, CLIENT_NAME, SERVER_NAME, clients_dir,
                               load_or_create_pair, move_tap_key, server_dir, taps_dir)
from gotapi3dp.config import Config, ConfigError, check_bind_host
from gotapi3dp.serving import WORKER_CLASSES, run_gunicorn

from .app import create_app

log = logging.getLogger(__name__)


def serve(config: Config) -> None:
    """Block serving GotAPI on config.gotapi.host:port; the bus lives in the worker."""
    gotapi = config.gotapi
    check_bind_host(gotapi.host, gotapi.allow_non_loopback, "GotAPI server")
    if gotapi.worker not in WORKER_CLASSES:
        raise ConfigError(f"gotapi.worker must be one of {', '.join(WORKER_CLASSES)}, "
                          f"not {gotapi.worker!r}")
    data_dir = config.dir_for("gotapi")
    auth_dirs = bus_auth_dirs(gotapi.bus_security, data_dir)
    tap_key = config.dir_for("tap") / "bus" / f"{CLIENT_NAME}.key"
    if auth_dirs is not None and move_tap_key(data_dir, tap_key):
        log.warning("bus: moved tap.key from the hosts' allow-list to the taps' (%s)",
                    auth_dirs[2])
    running: dict[str, Any] = {}

    def factory() -> Flask:
        from .bus import Bus, BusAuth  # after fork: ZeroMQ contexts are not fork-safe

        auth = None
        if auth_dirs is not None:
            pair = load_or_create_pair(auth_dirs[0], SERVER_NAME)
            auth = BusAuth(pair, auth_dirs[1], auth_dirs[2])
        bus = Bus(gotapi.bus_endpoint, gotapi.tap_endpoint, auth=auth)
        bus.start()
        running["bus"] = bus
        return create_app(gotapi, data_dir, bus)

    def on_exit() -> None:
        bus = running.pop("bus", None)
        if bus is not None:
            bus.stop()

    run_gunicorn(factory, gotapi.host, gotapi.port, threads=gotapi.threads,
                 worker=gotapi.worker, connections=gotapi.connections,
                 name="gotapi-3dp-gotapi", on_exit=on_exit)


def bus_auth_dirs(security: str, data_dir: Path) -> tuple[Path, Path, Path] | None:
    """(key pair directory, hosts' allow-list, taps' allow-list) for `bus_security`, or None
    for "none"."""
    if security not in BUS_SECURITY:
        raise ConfigError(f"gotapi.bus_security must be one of {', '.join(BUS_SECURITY)}, "
                          f"not {security!r}")
    if security == "none":
        return None
    return server_dir(data_dir), clients_dir(data_dir), taps_dir(data_dir)
