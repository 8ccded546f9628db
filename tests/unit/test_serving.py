"""Gunicorn settings: the worker kinds, and the fair gevent worker's turn-taking."""
from __future__ import annotations

from typing import Any

import pytest

from gotapi3dp import gevent_worker
from gotapi3dp.config import Config, ConfigError, GotapiConfig
from gotapi3dp.serving import run_gunicorn
from gotapi_server.main import serve


def test_unknown_worker_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown worker 'eventlet'"):
        run_gunicorn(lambda: None, "127.0.0.1", 0, worker="eventlet")
    with pytest.raises(ConfigError, match="gotapi.worker must be one of gthread, gevent"):
        serve(Config(gotapi=GotapiConfig(worker="tornado")))


def test_the_fair_worker_yields_after_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def handled(self: Any, *args: Any) -> bool:
        calls.append("request")
        if args == ("fails",):
            raise OSError("peer went away")
        return True

    monkeypatch.setattr(gevent_worker.GeventWorker, "handle_request", handled)
    monkeypatch.setattr(gevent_worker.gevent, "sleep", lambda seconds: calls.append(f"yield {seconds}"))
    worker = object.__new__(gevent_worker.FairGeventWorker)
    assert worker.handle_request("ok") is True
    with pytest.raises(OSError):
        worker.handle_request("fails")
    assert calls == ["request", "yield 0", "request", "yield 0"]


def test_on_stopping_runs_on_sigterm_after_gunicorns_own_handler() -> None:
    """Gunicorn has no hook for SIGTERM: `_on_sigterm` chains one after its handler."""
    import os
    import signal

    from gotapi3dp.serving import _on_sigterm
    calls: list[str] = []

    class Worker:
        def handle_exit(self, sig: int, frame: Any) -> None:
            calls.append("gunicorn")

    previous = signal.getsignal(signal.SIGTERM)
    try:
        _on_sigterm(Worker(), lambda: calls.append("stopping"))
        os.kill(os.getpid(), signal.SIGTERM)
        assert calls == ["gunicorn", "stopping"]
    finally:
        signal.signal(signal.SIGTERM, previous)
