"""Serve a Flask app factory with Gunicorn (one worker) from our own CLI.

The factory runs inside the worker, after fork, so ZeroMQ contexts, SQLite connections and
threads are never created in the master (pyzmq and SQLite are not fork-safe). The worker is
"gthread" (request threads) or "gevent" (greenlets, `gevent_worker.FairGeventWorker`; the
process is monkey-patched before the factory runs).
"""
from __future__ import annotations

import gc
import logging
import signal
from typing import Any, Callable

from gunicorn.app.base import BaseApplication

from gotapi3dp.refusals import STYLES

log = logging.getLogger(__name__)

WORKER_CLASSES = {"gthread": "gotapi3dp.thread_worker.JsonThreadWorker",
                  "gevent": "gotapi3dp.gevent_worker.FairGeventWorker"}


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
                 on_stopping: Callable[[], None] | None = None,
                 access_log: bool = False, worker: str = "gthread",
                 connections: int = 1000, refusals: str = "gotapi") -> None:
    """Block serving `factory()` on host:port until SIGINT/SIGTERM.

    `threads` sizes a gthread worker, `connections` a gevent one. `on_stopping` runs in the
    worker (gthread) as soon as it is told to stop (SIGTERM), before Gunicorn waits for the
    requests in flight: end long-lived responses there. `on_exit` runs in the worker once
    it has stopped serving (stop threads, close sockets). `refusals` is the JSON style of
    the answers to requests Gunicorn refuses before the app runs (`refusals.STYLES`).
    """
    if worker not in WORKER_CLASSES:
        raise ValueError(f"unknown worker {worker!r} (choose from {', '.join(WORKER_CLASSES)})")
    if refusals not in STYLES:
        raise ValueError(f"unknown refusal style {refusals!r} (choose from {', '.join(STYLES)})")

    def post_worker_init(_worker: Any) -> None:
        # The app is built: move what it allocated out of the collector's sight, so a full
        # collection no longer walks it (one took 16-26 ms under load, the whole p99 budget).
        # Collect first, so garbage left from building it is freed, not pinned.
        gc.collect()
        gc.freeze()
        _worker.refusal_style = refusals
        if on_stopping is not None:
            _on_sigterm(_worker, on_stopping)

    def worker_exit(server: Any, worker: Any) -> None:
        if on_exit is not None:
            on_exit()

    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options = {
        "bind": bind,
        "workers": 1,
        "worker_class": WORKER_CLASSES[worker],
        "threads": threads,
        "worker_connections": connections,
        "post_worker_init": post_worker_init,
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


def _on_sigterm(worker: Any, on_stopping: Callable[[], None]) -> None:
    """Call `on_stopping` after Gunicorn's own SIGTERM handling (it only clears `alive`,
    then waits up to graceful_timeout for the requests in flight: an endless event stream
    held every stop for those 5 s). Gunicorn has no hook for this signal."""
    handle_exit = worker.handle_exit

    def stopping(sig: int, frame: Any) -> None:
        handle_exit(sig, frame)
        try:
            on_stopping()
        except Exception:
            log.exception("on_stopping failed")
    signal.signal(signal.SIGTERM, stopping)

