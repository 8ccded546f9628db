"""Requests Gunicorn refuses before the Flask app runs still get GotAPI JSON errors (D7).

Sent over a raw socket: `requests` (http.client) refuses to send some of these."""
from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from .conftest import Stack

pytestmark = pytest.mark.e2e


def raw_request(stack: Stack, data: bytes,
                server: str = "gotapi") -> tuple[int, dict[str, str], dict[str, Any]]:
    """Send `data` to `server`, read until it closes: (status, headers, JSON body)."""
    url = urlsplit(stack.info[server])
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):       # ends only if the server closes the connection
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert int(headers["content-length"]) == len(body), "one answer, then the connection closes"
    return status, headers, json.loads(body)


def host(stack: Stack) -> bytes:
    return f"Host: {urlsplit(stack.info['gotapi']).netloc}\r\n".encode()


def assert_gotapi_error(headers: dict[str, str], body: dict[str, Any], code: int) -> None:
    assert headers["content-type"] == "application/json; charset=UTF-8"
    assert headers["connection"] == "close"
    assert body["result"] == 1
    assert body["product"] == "gotapi-3dp" and body["version"]
    assert body["errorCode"] == code
    assert isinstance(body["errorMessage"], str) and body["errorMessage"]


def test_an_over_long_url_gets_414_in_json(stack: Stack) -> None:
    status, headers, body = raw_request(
        stack, b"GET /gotapi/availability?x=" + b"a" * 9000 + b" HTTP/1.1\r\n" + host(stack) + b"\r\n")
    assert status == 414
    assert_gotapi_error(headers, body, 1003)
    assert "Request line is too large" in body["errorMessage"]


def test_an_oversized_header_gets_431_in_json(stack: Stack) -> None:
    status, headers, body = raw_request(
        stack, b"GET /gotapi/availability HTTP/1.1\r\n" + host(stack)
        + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n")
    assert status == 431
    assert_gotapi_error(headers, body, 1003)
    assert "header field is too large" in body["errorMessage"]


def test_too_many_headers_get_431_in_json(stack: Stack) -> None:
    fields = b"".join(b"X-H%d: 1\r\n" % i for i in range(120))
    status, headers, body = raw_request(
        stack, b"GET /gotapi/availability HTTP/1.1\r\n" + host(stack) + fields + b"\r\n")
    assert status == 431
    assert_gotapi_error(headers, body, 1003)
    assert "Too many request header fields" in body["errorMessage"]


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /gotapi/availability HTTP/1.1\r\nBad Name: 1\r\n\r\n",
], ids=["request-line", "header-name"])
def test_a_malformed_request_gets_400_in_json(stack: Stack, request_bytes: bytes) -> None:
    status, headers, body = raw_request(stack, request_bytes)
    assert status == 400
    assert_gotapi_error(headers, body, 10)
    assert body["errorMessage"].startswith("Malformed request: ")


def test_the_server_still_serves_after_refusals(stack: Stack) -> None:
    raw_request(stack, b"GARBAGE\r\n\r\n")
    resp = requests.get(stack.info["gotapi"] + "/gotapi/availability",
                        headers={"Origin": "http://localhost"}, timeout=30)
    assert resp.status_code == 200 and resp.json()["result"] == 0


@pytest.mark.parametrize("server", ["printer", "contents"])
def test_the_printer_and_contents_server_refuse_in_their_own_json(stack: Stack,
                                                                 server: str) -> None:
    """They answered these with Gunicorn's HTML page (noted in sessions 6-8)."""
    netloc = urlsplit(stack.info[server]).netloc.encode()
    status, headers, body = raw_request(
        stack, b"GET /api/status?x=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: " + netloc
        + b"\r\n\r\n", server)
    assert status == 414 and headers["content-type"] == "application/json"
    assert body["error"]["code"] == 1003 and "Request line is too large" in body["error"]["message"]
    status, headers, body = raw_request(stack, b"GARBAGE\r\n\r\n", server)
    assert status == 400 and body["error"]["name"] == "INVALID_REQUEST_PARAMETER"
