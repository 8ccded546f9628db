"""Identifier formats checked at every hop (content ids, service ids, job ids)."""
from __future__ import annotations

import re
import secrets

from .errors import ErrorCode, P3DError

CONTENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PRINTER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def check_content_id(value: object) -> str:
    if not isinstance(value, str) or not CONTENT_ID_RE.fullmatch(value):
        raise P3DError(ErrorCode.BAD_CONTENT_ID,
                       "contentId must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")
    return value


def check_printer_id(value: object) -> str:
    if not isinstance(value, str) or not PRINTER_ID_RE.fullmatch(value):
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER,
                       "printerId must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")
    return value


def check_job_id(value: object) -> str:
    if not isinstance(value, str) or not JOB_ID_RE.fullmatch(value):
        raise P3DError(ErrorCode.INVALID_REQUEST_PARAMETER, "jobId must be 32 hex digits")
    return value


def new_id(nbytes: int = 16) -> str:
    """A random URL-safe id (128 bits by default) that never starts with "-": one in 64
    did, and a command line took it for an option (`gotapi-3dp print -Xy...`)."""
    while True:
        value = secrets.token_urlsafe(nbytes).rstrip("=")
        if not value.startswith("-"):
            return value
