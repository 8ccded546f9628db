"""Error codes: the GotAPI standard set (1-22) and ours (1000+), defined once.

Every process raises `P3DError` with one of these codes; the GotAPI server turns it into
`{result: 1, errorCode, errorMessage}`, the contents server and the printer into
`{"error": {"code", "name", "message"}}` with the HTTP status below.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    # GotAPI 1.1 standard codes (Device Connect names, CONTRACT.md numbering).
    UNKNOWN = 1
    NOT_SUPPORT_PROFILE = 2
    NOT_SUPPORT_ACTION = 3
    NOT_SUPPORT_ATTRIBUTE = 4
    EMPTY_SERVICE_ID = 5
    NOT_FOUND_SERVICE = 6
    TIMEOUT = 7
    UNKNOWN_ATTRIBUTE = 8
    INVALID_REQUEST_PARAMETER = 10
    AUTHORIZATION = 11
    EXPIRED_ACCESS_TOKEN = 12
    EMPTY_ACCESS_TOKEN = 13
    SCOPE = 14
    NOT_FOUND_CLIENT_ID = 15
    ILLEGAL_DEVICE_STATE = 16
    ILLEGAL_SERVER_STATE = 17
    INVALID_ORIGIN = 18
    INVALID_URL = 19

    # Ours: request and transport (1000-1099).
    HOST_NOT_ALLOWED = 1000
    BAD_INTENT = 1001
    PAYLOAD_TOO_LARGE = 1003

    # Contents server (1100-1199).
    CONTENTS_UNAVAILABLE = 1100
    CONTENTS_AUTH = 1101
    CONTENT_NOT_FOUND = 1102
    CONTENT_INVALID = 1103
    BAD_CONTENT_ID = 1104
    PRINTER_NOT_REGISTERED = 1105
    PRINTER_CONFLICT = 1106
    CONNECTION_NOT_FOUND = 1110
    CONNECTION_EXPIRED = 1111

    # Secure token, redemption, download (1200-1299).
    TOKEN_UNREADABLE = 1200
    TOKEN_KID = 1201
    TOKEN_SIGNATURE = 1202
    TOKEN_MALFORMED = 1203
    TOKEN_TYPE = 1204
    TOKEN_AUDIENCE = 1205
    TOKEN_EXPIRED = 1206
    TOKEN_REPLAYED = 1207
    POP_INVALID = 1208
    POP_NONCE = 1209
    DOWNLOAD_DENIED = 1210
    DOWNLOAD_FAILED = 1211
    CONTENT_HASH = 1212
    TOKEN_NOT_YET_VALID = 1213
    LICENCE_EXHAUSTED = 1214
    PAIRING_CODE = 1220
    PAIRING_RATE_LIMITED = 1221
    PAIRING_EXPIRED = 1222

    # Printer (1300-1399).
    PRINTER_UNAVAILABLE = 1300
    PRINTER_AUTH = 1301
    PRINTER_BUSY = 1302
    JOB_NOT_FOUND = 1303
    JOB_STATE = 1304
    MODEL_INVALID = 1305
    SLICE_FAILED = 1306
    SERIAL_LINK = 1307
    PRINTER_NOT_TRUSTED = 1308


_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.UNKNOWN: "Unknown error was encountered.",
    ErrorCode.NOT_SUPPORT_PROFILE: "Non-supported Profile was accessed.",
    ErrorCode.NOT_SUPPORT_ACTION: "Non-supported HTTP method was used.",
    ErrorCode.NOT_SUPPORT_ATTRIBUTE: "Non-supported attribute was used.",
    ErrorCode.EMPTY_SERVICE_ID: "Service ID is required.",
    ErrorCode.NOT_FOUND_SERVICE: "Service was not found.",
    ErrorCode.TIMEOUT: "Response timeout.",
    ErrorCode.UNKNOWN_ATTRIBUTE: "Illegal or nonexistent attribute or interface was accessed.",
    ErrorCode.INVALID_REQUEST_PARAMETER: "Request parameters are invalid.",
    ErrorCode.AUTHORIZATION: "Authorization error.",
    ErrorCode.EXPIRED_ACCESS_TOKEN: "Access token expired.",
    ErrorCode.EMPTY_ACCESS_TOKEN: "Access token was required.",
    ErrorCode.SCOPE: "Request is out of scope.",
    ErrorCode.NOT_FOUND_CLIENT_ID: "clientId was not found.",
    ErrorCode.ILLEGAL_DEVICE_STATE: "State of device is illegality.",
    ErrorCode.ILLEGAL_SERVER_STATE: "State of server is illegality.",
    ErrorCode.INVALID_ORIGIN: "Origin of request is invalid.",
    ErrorCode.INVALID_URL: "Request url is invalid.",
}

# HTTP status used by the contents server and the printer (the GotAPI server answers 200).
_HTTP_STATUS: dict[int, int] = {
    ErrorCode.INVALID_REQUEST_PARAMETER: 400,
    ErrorCode.BAD_CONTENT_ID: 400,
    ErrorCode.BAD_INTENT: 400,
    ErrorCode.CONTENTS_AUTH: 401,
    ErrorCode.PRINTER_AUTH: 401,
    ErrorCode.TOKEN_UNREADABLE: 401,
    ErrorCode.TOKEN_KID: 401,
    ErrorCode.TOKEN_SIGNATURE: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.TOKEN_NOT_YET_VALID: 401,
    ErrorCode.PAIRING_CODE: 400,
    ErrorCode.PAIRING_RATE_LIMITED: 429,
    ErrorCode.PAIRING_EXPIRED: 410,
    ErrorCode.LICENCE_EXHAUSTED: 403,
    ErrorCode.POP_INVALID: 401,
    ErrorCode.POP_NONCE: 401,
    ErrorCode.TOKEN_AUDIENCE: 403,
    ErrorCode.DOWNLOAD_DENIED: 403,
    ErrorCode.HOST_NOT_ALLOWED: 421,
    ErrorCode.PRINTER_NOT_REGISTERED: 403,
    ErrorCode.PRINTER_CONFLICT: 409,
    ErrorCode.PRINTER_NOT_TRUSTED: 403,
    ErrorCode.CONTENT_NOT_FOUND: 404,
    ErrorCode.JOB_NOT_FOUND: 404,
    ErrorCode.CONNECTION_NOT_FOUND: 404,
    ErrorCode.TOKEN_REPLAYED: 409,
    ErrorCode.JOB_STATE: 409,
    ErrorCode.PRINTER_BUSY: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.CONTENT_INVALID: 422,
    ErrorCode.MODEL_INVALID: 422,
    ErrorCode.TOKEN_MALFORMED: 422,
    ErrorCode.TOKEN_TYPE: 422,
    ErrorCode.CONTENT_HASH: 422,
    ErrorCode.CONNECTION_EXPIRED: 410,
    ErrorCode.CONTENTS_UNAVAILABLE: 503,
    ErrorCode.PRINTER_UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}


def default_message(code: int) -> str:
    try:
        known = ErrorCode(code)
    except ValueError:
        return "Unknown error was encountered."
    return _MESSAGES.get(known, known.name.replace("_", " ").capitalize() + ".")


def http_status(code: int) -> int:
    return _HTTP_STATUS.get(code, 500)


def code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return "UNKNOWN"


@dataclass
class P3DError(Exception):
    """The one exception type every process raises for an expected, reportable failure."""

    code: int
    message: str = ""

    def __post_init__(self) -> None:
        if not self.message:
            self.message = default_message(self.code)
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{code_name(self.code)} ({self.code}): {self.message}"

    def to_http(self) -> dict[str, Any]:
        """Body used by the contents server and the printer HTTP APIs."""
        return {"error": {"code": int(self.code), "name": code_name(self.code), "message": self.message}}

    @classmethod
    def from_http(cls, body: Any, fallback: int) -> "P3DError":
        """Rebuild the error from an HTTP error body; tolerate bodies that are not ours."""
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            code = err.get("code")
            message = err.get("message")
            if isinstance(code, int) and isinstance(message, str):
                return cls(code, message)
        return cls(fallback)
