"""JSON over HTTP between our processes: one call, errors mapped to `P3DError`."""
from __future__ import annotations

from typing import Any

import requests

from .wire.errors import ErrorCode, P3DError


def call(session: requests.Session, method: str, url: str, *, unavailable: int,
         timeout: float = 20.0, json: Any = None, headers: dict[str, str] | None = None,
         files: Any = None, data: Any = None) -> dict[str, Any]:
    """Make one request; return the JSON body of a 2xx answer.

    `unavailable` is the code raised when the peer cannot be reached or answers garbage
    (e.g. CONTENTS_UNAVAILABLE); error bodies of ours are re-raised with their own code.
    """
    try:
        resp = session.request(method, url, json=json, headers=headers, files=files,
                               data=data, timeout=timeout)
    except requests.RequestException as exc:
        raise P3DError(unavailable, f"{url.split('/api/')[0]} is unreachable ({type(exc).__name__})") from None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code >= 400:
        raise P3DError.from_http(body, unavailable if resp.status_code >= 500 else ErrorCode.UNKNOWN)
    if not isinstance(body, dict):
        raise P3DError(unavailable, f"{url} answered something that is not a JSON object")
    return body
