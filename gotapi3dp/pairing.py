"""Pair a printer with the contents server and the 3D printer plug-in, by short code.

The printer asks the contents server for a code (`POST <printer>/api/pairing/start`), the
user confirms it with their account key (`POST <contents>/api/pairing/confirm`), and the
printer polls until it has pinned the server's keys (`POST <printer>/api/pairing/poll`).
`pair_printer` runs all three itself, for `gotapi-3dp up` and `gotapi-3dp pair`, where the
caller holds the account key; `gotapi-3dp printer pair` and `contents confirm` split them
between two people. Finally the plug-in host learns the printer's address and API key.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import requests

from .config import PrinterEntry
from .http_json import call
from .wire.errors import ErrorCode, P3DError



def start(http: requests.Session, printer_url: str, printer_key: str, contents_url: str,
          timeout: float = 10.0) -> dict[str, Any]:
    """The printer asks for a code; returns {userCode, fingerprint, printerId, expiresAt...}."""
    return call(http, "POST", f"{printer_url.rstrip('/')}/api/pairing/start", timeout=timeout,
                unavailable=ErrorCode.PRINTER_UNAVAILABLE, headers={"X-Api-Key": printer_key},
                json={"contentsUrl": contents_url.rstrip("/")})


def confirm(http: requests.Session, contents_url: str, contents_key: str, code: str,
            fingerprint: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """The user confirms the code (and, if given, the fingerprint) for their account."""
    body: dict[str, Any] = {"code": code}
    if fingerprint:
        body["fingerprint"] = fingerprint
    return call(http, "POST", f"{contents_url.rstrip('/')}/api/pairing/confirm", json=body,
                timeout=timeout, unavailable=ErrorCode.CONTENTS_UNAVAILABLE,
                headers={"X-Api-Key": contents_key})


def wait_approved(http: requests.Session, printer_url: str, printer_key: str,
                  expires_at: float, timeout: float = 10.0,
                  sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll through the printer until the code is confirmed (or expires)."""
    while True:
        answer = call(http, "POST", f"{printer_url.rstrip('/')}/api/pairing/poll",
                      timeout=timeout, unavailable=ErrorCode.PRINTER_UNAVAILABLE,
                      headers={"X-Api-Key": printer_key})
        if answer.get("status") == "approved":
            return answer
        if time.time() >= expires_at:
            raise P3DError(ErrorCode.PAIRING_EXPIRED, "the pairing code expired unconfirmed")
        sleep(float(answer.get("interval", 2)))


def pair_printer(printer_url: str, printer_key: str, contents_url: str, contents_key: str,
                 service_id: str, name: str | None = None, timeout: float = 10.0) -> PrinterEntry:
    """The whole code flow without a human: the caller holds the account key."""
    with requests.Session() as http:
        shown = start(http, printer_url, printer_key, contents_url, timeout)
        confirm(http, contents_url, contents_key, shown["userCode"], shown["fingerprint"],
                timeout)
        wait_approved(http, printer_url, printer_key, float(shown["expiresAt"]), timeout)
        identity = call(http, "GET", f"{printer_url.rstrip('/')}/api/identity",
                        timeout=timeout, unavailable=ErrorCode.PRINTER_UNAVAILABLE)
    return PrinterEntry(service_id=service_id, name=name or identity["name"],
                        url=printer_url.rstrip("/"), api_key=printer_key,
                        printer_id=identity["printerId"])
