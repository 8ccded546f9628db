"""`serve(config)`: run the GotAPI server (HTTP + the Intent bus) under gunicorn."""
from __future__ import annotations

from typing import Any

from flask import Flask

from gotapi3dp.config import Config, ConfigError, check_bind_host
from gotapi3dp.serving import WORKER_CLASSES, run_gunicorn

from .app import create_app


def serve(config: Config) -> None:
    """Block serving GotAPI on config.gotapi.host:port; the bus lives in the worker."""
    gotapi = config.gotapi
    check_bind_host(gotapi.host, gotapi.allow_non_loopback, "GotAPI server")
    if gotapi.worker not in WORKER_CLASSES:
        raise ConfigError(f"gotapi.worker must be one of {', '.join(WORKER_CLASSES)}, "
                          f"not {gotapi.worker!r}")
    data_dir = config.dir_for("gotapi")
    running: dict[str, Any] = {}

    def factory() -> Flask:
        from .bus import Bus  # after fork: ZeroMQ contexts are not fork-safe

        bus = Bus(gotapi.bus_endpoint, gotapi.tap_endpoint)
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
