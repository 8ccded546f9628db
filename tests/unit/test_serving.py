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
    with pytest.raises(ValueError, match="unknown refusal style 'html'"):
        run_gunicorn(lambda: None, "127.0.0.1", 0, refusals="html")
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


def _gunicorn_handle_error(exc: BaseException, worker_class: type | None = None,
                           style: str = "gotapi") -> tuple[bytes, list[str]]:
    """What a worker's handle_error writes to the client (the fair gevent worker unless
    told), and what it logs."""
    import socket

    from gunicorn.config import Config as GunicornConfig

    logged: list[str] = []

    class Log:
        def warning(self, msg: str, *args: Any) -> None:
            logged.append(msg % args if args else msg)

        def exception(self, msg: str, *args: Any) -> None:
            logged.append(msg % args if args else msg)

        def debug(self, msg: str, *args: Any) -> None:
            logged.append("debug: " + msg)

    worker = object.__new__(worker_class or gevent_worker.FairGeventWorker)
    worker.refusal_style = style
    worker.log = Log()
    worker.cfg = GunicornConfig()
    server, client = socket.socketpair()
    with server, client:
        worker.handle_error(None, server, ("127.0.0.1", 5), exc)
        server.close()
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer, logged


def _parse(answer: bytes) -> tuple[str, dict[str, str], dict[str, Any]]:
    import json
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return lines[0], headers, json.loads(body)


@pytest.mark.parametrize("exc, status_line, code, message", [
    (lambda e: e.LimitRequestLine(9036, 8190), "HTTP/1.1 414 URI Too Long", 1003,
     "Request line is too large (9036 > 8190 bytes)."),
    (lambda e: e.LimitRequestHeaders("limit request headers fields size"),
     "HTTP/1.1 431 Request Header Fields Too Large", 1003,
     "A request header field is too large (over 8190 bytes)."),
    (lambda e: e.LimitRequestHeaders("limit request headers fields"),
     "HTTP/1.1 431 Request Header Fields Too Large", 1003,
     "Too many request header fields (over 100)."),
    (lambda e: e.InvalidRequestLine("GARBAGE"), "HTTP/1.1 400 Bad Request", 10,
     "Malformed request: Invalid HTTP request line: 'GARBAGE'"),
    (lambda e: e.InvalidHeaderName("Bad Name"), "HTTP/1.1 400 Bad Request", 10,
     "Malformed request: Invalid HTTP header name: 'Bad Name'"),
    (lambda e: RuntimeError("secret detail"), "HTTP/1.1 500 Internal Server Error", 1,
     "Unknown error was encountered."),
])
def test_gunicorn_refusals_are_answered_in_gotapi_json(exc: Any, status_line: str, code: int,
                                                       message: str) -> None:
    from gunicorn.http import errors
    answer, logged = _gunicorn_handle_error(exc(errors))
    line, headers, body = _parse(answer)
    assert line == status_line                                # Gunicorn's own status line
    assert headers["content-type"] == "application/json; charset=UTF-8"
    assert headers["connection"] == "close"
    assert body == {"result": 1, "product": "gotapi-3dp", "version": body["version"],
                    "errorCode": code, "errorMessage": message}
    assert b"<html" not in answer
    assert logged and not logged[0].startswith("debug")      # Gunicorn still logs it


def test_a_long_malformed_request_line_is_not_echoed_whole() -> None:
    from gunicorn.http.errors import InvalidRequestLine
    answer, _ = _gunicorn_handle_error(InvalidRequestLine("x" * 5000))
    message = _parse(answer)[2]["errorMessage"]
    assert len(message) < 300 and message.endswith("...")


@pytest.mark.parametrize("exc, status_line, code, name", [
    (lambda e: e.LimitRequestLine(9036, 8190), "HTTP/1.1 414 URI Too Long", 1003,
     "PAYLOAD_TOO_LARGE"),
    (lambda e: e.InvalidRequestLine("GARBAGE"), "HTTP/1.1 400 Bad Request", 10,
     "INVALID_REQUEST_PARAMETER"),
    (lambda e: RuntimeError("secret detail"), "HTTP/1.1 500 Internal Server Error", 1,
     "UNKNOWN"),
])
def test_the_thread_worker_answers_refusals_in_the_printer_and_contents_json(
        exc: Any, status_line: str, code: int, name: str) -> None:
    """The printer and the contents server (gthread) answered these with Gunicorn's HTML."""
    from gunicorn.http import errors

    from gotapi3dp.thread_worker import JsonThreadWorker
    answer, logged = _gunicorn_handle_error(exc(errors), JsonThreadWorker, "http")
    line, headers, body = _parse(answer)
    assert line == status_line
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["name"] == name and body["error"]["message"]
    assert "secret" not in body["error"]["message"]
    assert b"<html" not in answer and logged


def test_the_thread_worker_answers_in_gotapi_json_for_the_gotapi_server() -> None:
    from gunicorn.http import errors

    from gotapi3dp.thread_worker import JsonThreadWorker
    answer, _ = _gunicorn_handle_error(errors.InvalidRequestLine("GARBAGE"), JsonThreadWorker)
    body = _parse(answer)[2]
    assert body["result"] == 1 and body["errorCode"] == 10
