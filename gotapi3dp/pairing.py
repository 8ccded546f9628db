"""Pair a printer with the contents server and the 3D printer plug-in.

The printer's public keys are registered at the contents server (so tokens can be sealed to
it and its proofs checked), the printer pins the contents server's signing keys, and the
plug-in host learns the printer's address and API key.
"""
from __future__ import annotations

import requests

from .config import PrinterEntry
from .http_json import call
from .wire.errors import ErrorCode


def pair_printer(printer_url: str, printer_key: str, contents_url: str, contents_key: str,
                 service_id: str, name: str | None = None, timeout: float = 10.0) -> PrinterEntry:
    http = requests.Session()
    printer_url = printer_url.rstrip("/")
    contents_url = contents_url.rstrip("/")
    identity = call(http, "GET", f"{printer_url}/api/identity", timeout=timeout,
                    unavailable=ErrorCode.PRINTER_UNAVAILABLE)
    registered = call(http, "POST", f"{contents_url}/api/printers", timeout=timeout,
                      unavailable=ErrorCode.CONTENTS_UNAVAILABLE,
                      headers={"X-Api-Key": contents_key},
                      json={"printerId": identity["printerId"], "name": name or identity["name"],
                            "signKey": identity["signKey"], "boxKey": identity["boxKey"]})
    call(http, "POST", f"{printer_url}/api/trust", timeout=timeout,
         unavailable=ErrorCode.PRINTER_UNAVAILABLE, headers={"X-Api-Key": printer_key},
         json={"issuer": registered["issuer"], "contentsUrl": contents_url,
               "keys": registered["keys"]})
    return PrinterEntry(service_id=service_id, name=name or identity["name"], url=printer_url,
                        api_key=printer_key, printer_id=identity["printerId"])
