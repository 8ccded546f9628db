"""Serve a Flask app factory with Gunicorn (one gthread worker) from our own CLI.

The factory runs inside the worker, after fork, so ZeroMQ contexts, SQLite connections and
threads are never created in the master (pyzmq and SQLite are not fork-safe).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from gunicorn.app.base import BaseApplication

log = logging.getLogger(__name__)


class _FactoryApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, factory: Callable[[], Any], options: dict[str, Any]) -> None:
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return self._factory()


def run_gunicorn(factory: Callable[[], Any], host: str, port: int, *, threads: int = 8,
                 name: str = "gotapi-3dp", on_exit: Callable[[], None] | None = None,
                 access_log: bool = False) -> None:
    """Block serving `factory()` on host:port until SIGINT/SIGTERM.

    `on_exit` runs in the worker when it shuts down (stop threads, close sockets).
    """
    def worker_exit(server: Any, worker: Any) -> None:
        if on_exit is not None:
            on_exit()

    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options = {
        "bind": bind,
        "workers": 1,
        "worker_class": "gthread",
        "threads": threads,
        "preload_app": False,
        "timeout": 120,
        "graceful_timeout": 5,
        "keepalive": 5,
        "proc_name": name,
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "loglevel": "warning",
        "worker_exit": worker_exit,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
    }
    _FactoryApplication(factory, options).run()
