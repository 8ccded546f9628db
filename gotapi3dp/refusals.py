"""Requests Gunicorn refuses before the app runs, answered in our JSON instead of its HTML.

Gunicorn answers an over-long request line, header fields too large or too many, and a
malformed request with an HTML page of its own. Our clients read JSON: the GotAPI server's
apps expect a GotAPI error (`result: 1`, `errorCode`), the printer's and the contents
server's clients `{"error": {code, name, message}}` like every other error of those APIs.
`JsonRefusals` is mixed into our Gunicorn worker classes; its `refusal_style` picks the body.
"""
from __future__ import annotations

import json
from typing import Any

from gunicorn import util
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine

from gotapi3dp.wire.errors import ErrorCode, P3DError

# The longest part of Gunicorn's description of a malformed request kept in the message
# (it quotes what the client sent, up to a whole request line).
_DETAIL_MAX = 200

STYLES = ("gotapi", "http")


class JsonRefusals:
    """Mixed into a Gunicorn worker class, before it: see `handle_error`."""

    refusal_style = "gotapi"      # "gotapi" (GotAPI server) or "http" (printer, contents)
    log: Any
    cfg: Any

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer a request Gunicorn refused (or a failure outside the app) in JSON.

        Gunicorn's own `handle_error` still runs, so it still picks the status and logs
        (warning, traceback, access log line) as before; only the HTML page it writes is
        caught, and the same status line is sent with our error body instead and
        `Connection: close`. Gunicorn's `handle` closes the connection afterwards.
        """
        page = _Capture(client)
        super().handle_error(req, page, addr, exc)  # type: ignore[misc]
        status_line = page.status_line()
        if status_line is None:                 # Gunicorn chose to send nothing
            return
        try:
            data = error_response(status_line, exc, self.cfg, self.refusal_style)
        except Exception:
            self.log.exception("Failed to build a JSON error; sending Gunicorn's page")
            data = page.written()
        try:
            util.write_nonblock(client, data)
        except Exception:
            self.log.debug("Failed to send error message.")


class _Capture:
    """Stands for the client socket in Gunicorn's `handle_error`: keeps what it writes (its
    HTML error page), lends it everything else."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._data = bytearray()

    def sendall(self, data: bytes) -> None:
        self._data += data

    def send(self, data: bytes) -> int:
        self._data += data
        return len(data)

    def gettimeout(self) -> float:
        return 0.0                              # write_nonblock then writes straight away

    def setblocking(self, flag: bool) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def written(self) -> bytes:
        return bytes(self._data)

    def status_line(self) -> bytes | None:
        """`HTTP/1.1 414 URI Too Long` from what was written, or None."""
        line = self.written().split(b"\r\n", 1)[0]
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return None
        return line


def error_response(status_line: bytes, exc: BaseException, cfg: Any,
                   style: str = "gotapi") -> bytes:
    """The whole HTTP answer: Gunicorn's status line, our error body in `style`."""
    code, message = refusal_error(int(status_line.split(b" ", 2)[1]), exc, cfg)
    if style == "gotapi":
        from gotapi_server.responses import CONTENT_TYPE, error_body, json_bytes
        body, content_type = json_bytes(error_body(code, message)), CONTENT_TYPE
    else:
        body = json.dumps(P3DError(code, message).to_http()).encode()
        content_type = "application/json"
    head = (status_line + b"\r\n"
            + b"Connection: close\r\n"
            + f"Content-Type: {content_type}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode())
    return head + body


def refusal_error(status: int, exc: BaseException, cfg: Any) -> tuple[ErrorCode, str]:
    """414 and 431 (request line, header fields too large) are PAYLOAD_TOO_LARGE like a body
    over the limit; a 500 is UNKNOWN; every other refusal (400 malformed request line,
    method, version, header, chunk...; 417, 501) is INVALID_REQUEST_PARAMETER."""
    if status in (414, 431):
        return ErrorCode.PAYLOAD_TOO_LARGE, _too_large(exc, cfg)
    if status == 500:
        return ErrorCode.UNKNOWN, "Unknown error was encountered."
    detail = str(exc)
    if len(detail) > _DETAIL_MAX:
        detail = detail[:_DETAIL_MAX] + "..."
    return ErrorCode.INVALID_REQUEST_PARAMETER, f"Malformed request: {detail}"


def _too_large(exc: BaseException, cfg: Any) -> str:
    if isinstance(exc, LimitRequestLine):
        if isinstance(exc.size, int) and exc.max_size is not None:
            return f"Request line is too large ({exc.size} > {exc.max_size} bytes)."
        return f"Request line is too large (over {cfg.limit_request_line} bytes)."
    if isinstance(exc, LimitRequestHeaders):
        what = str(exc)
        if what == "limit request headers fields":
            return f"Too many request header fields (over {cfg.limit_request_fields})."
        if what == "limit request headers fields size":
            return (f"A request header field is too large "
                    f"(over {cfg.limit_request_field_size} bytes).")
        return f"Request header fields are too large ({what})."
    return "Request header fields are too large."
