"""HTTP clients of the 3D printer plug-in: the contents server (tokens) and printers (jobs)."""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from gotapi3dp.http_json import call
from gotapi3dp.wire.errors import ErrorCode


class ContentsClient:
    """Asks the contents server for secure tokens on behalf of the app's user."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._http = requests.Session()

    def issue_token(self, contents_key: str, printer_id: str, content_id: str) -> dict[str, Any]:
        """-> {token, expiresAt, content}. The token is sealed to the printer; we cannot open it."""
        return call(self._http, "POST", f"{self._base}/api/tokens",
                    unavailable=ErrorCode.CONTENTS_UNAVAILABLE, timeout=self._timeout,
                    headers={"X-Api-Key": contents_key},
                    json={"printerId": printer_id, "contentId": content_id})


class PrinterClient:
    """The printer's job API, authenticated with the key from pairing."""

    def __init__(self, base_url: str, api_key: str, timeout: float) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"X-Api-Key": api_key}
        self._timeout = timeout
        self._http = requests.Session()

    def _call(self, method: str, path: str, json: Any = None, timeout: float | None = None) -> dict[str, Any]:
        """One call; `timeout` (a call the printer answers at once) may shorten the configured
        HTTP timeout, never lengthen it."""
        limit = min(timeout, self._timeout) if timeout else self._timeout
        return call(self._http, method, f"{self._base}{path}", json=json, headers=self._headers,
                    unavailable=ErrorCode.PRINTER_UNAVAILABLE, timeout=limit)

    def identity(self, timeout: float) -> dict[str, Any]:
        return self._call("GET", "/api/identity", timeout=timeout)

    def submit(self, token: str) -> dict[str, Any]:
        return self._call("POST", "/api/jobs", json={"token": token})["job"]

    def job(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        return self._call("GET", f"/api/jobs/{quote(job_id, safe='')}",
                          timeout=timeout)["job"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Keeps the configured timeout: for the running job the printer answers only once its
        worker has stopped it (up to its CANCEL_WAIT, 15 s)."""
        return self._call("DELETE", f"/api/jobs/{quote(job_id, safe='')}")["job"]

    def pause(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        return self._call("PUT", f"/api/jobs/{quote(job_id, safe='')}/pause",
                          timeout=timeout)["job"]

    def resume(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        return self._call("PUT", f"/api/jobs/{quote(job_id, safe='')}/resume",
                          timeout=timeout)["job"]

    def status(self, timeout: float | None = None) -> dict[str, Any]:
        return self._call("GET", "/api/status", timeout=timeout)
