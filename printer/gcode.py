"""G-code line framing and firmware reply parsing, shared by the host and the virtual firmware.

Framing is Marlin's: `N<n> <command>*<cs>\\n`, where `cs` is the XOR of every byte before `*`
(the `N<n> ` prefix included), written as a decimal integer. Nothing here does I/O, and no parser
raises on garbage: a line that cannot be read is reported as such.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Union

_NUMBERED = re.compile(rb"N(\d{1,10}) ?")
_CHECKSUM = re.compile(rb"\d{1,3}")


def strip_comment(line: str) -> str:
    """The command part of a G-code line: `;` comments and surrounding whitespace removed."""
    return line.split(";", 1)[0].strip()


def checksum(data: bytes) -> int:
    """XOR of every byte of `data` (the line up to, not including, `*`)."""
    cs = 0
    for byte in data:
        cs ^= byte
    return cs


def format_line(n: int, command: str) -> bytes:
    """One framed line, `N<n> <command>*<cs>\\n`, ready for the wire."""
    body = f"N{n} {command}".encode("ascii", "replace")
    return body + b"*%d\n" % checksum(body)


@dataclass(frozen=True)
class ParsedLine:
    """A received line: its number and checksum verdict are None when the line has none."""

    number: int | None
    command: str
    checksum_ok: bool | None


def parse_line(raw: bytes) -> ParsedLine:
    """Split a received line into number, command and checksum verdict; never raises.

    A `*` suffix that is not 1-3 digits, or a value that differs from the computed checksum,
    gives `checksum_ok=False`. A leading `N` without digits is not a line number.
    """
    line = raw.rstrip(b"\r\n").lstrip(b" ")
    number = None
    body_start = 0
    match = _NUMBERED.match(line)
    if match:
        number = int(match.group(1))
        body_start = match.end()
    star = line.rfind(b"*")
    checksum_ok: bool | None = None
    end = len(line)
    if star >= 0:
        end = star
        digits = line[star + 1:].strip()
        checksum_ok = bool(_CHECKSUM.fullmatch(digits)) and int(digits) == checksum(line[:star])
    command = line[body_start:end].decode("ascii", "replace").strip()
    return ParsedLine(number, command, checksum_ok)


# ---------------------------------------------------------------- firmware replies

@dataclass(frozen=True)
class Temperatures:
    """Heater readings; `None` where the report did not mention the heater or its target."""

    hotend: float | None = None
    hotend_target: float | None = None
    bed: float | None = None
    bed_target: float | None = None

    def as_dict(self) -> dict[str, dict[str, float | None]]:
        return {"hotend": {"actual": self.hotend, "target": self.hotend_target},
                "bed": {"actual": self.bed, "target": self.bed_target}}


class ErrorKind(str, Enum):
    CHECKSUM = "checksum"                # checksum mismatch: a Resend follows
    LINE_NUMBER = "line_number"          # not Last Line Number+1: a Resend follows
    NO_CHECKSUM = "no_checksum"          # numbered line without checksum: a Resend follows
    NO_LINE_NUMBER = "no_line_number"    # checksum without number (Prusa): no Resend, no ok
    FATAL = "fatal"                      # halted, kill(), thermal faults, and `!!`
    OTHER = "other"                      # unknown (e.g. garbled by line noise): not fatal


@dataclass(frozen=True)
class Ok:
    """`ok`, optionally `ok N<line> P<planner free> B<buffer free>` (ADVANCED_OK) or `ok T:..`."""

    line: int | None = None
    planner: int | None = None
    buffer: int | None = None
    temperatures: Temperatures | None = None


@dataclass(frozen=True)
class Resend:
    line: int


@dataclass(frozen=True)
class FirmwareError:
    kind: ErrorKind
    message: str
    last_line: int | None = None


@dataclass(frozen=True)
class Busy:
    reason: str


@dataclass(frozen=True)
class TemperatureReport:
    temperatures: Temperatures


@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class Other:
    text: str


Reply = Union[Ok, Resend, FirmwareError, Busy, TemperatureReport, Start, Other]

_OK_FIELDS = re.compile(r"\b([NPB])(\d+)\b")
_TEMP = re.compile(r"(?<![\w@])([TB])\d?:\s*(-?\d+(?:\.\d+)?)(?:\s*/\s*(-?\d+(?:\.\d+)?))?")
_RESEND = re.compile(r"^(?:resend|rs)\b[:\s]*(?:N:?)?\s*(\d+)\s*$", re.IGNORECASE)
_LAST_LINE = re.compile(r"Last Line:\s*(\d+)", re.IGNORECASE)
_ERROR_KINDS = (
    ("checksum mismatch", ErrorKind.CHECKSUM),
    ("line number is not last line number", ErrorKind.LINE_NUMBER),
    ("no checksum with line number", ErrorKind.NO_CHECKSUM),
    ("missing checksum", ErrorKind.NO_CHECKSUM),
    ("no line number with checksum", ErrorKind.NO_LINE_NUMBER),
    ("missing linenumber", ErrorKind.NO_LINE_NUMBER),
)
_FATAL_WORDS = ("halted", "kill", "thermal", "mintemp", "maxtemp", "heating failed",
                "stopped", "runaway")


def parse_temperatures(text: str) -> Temperatures | None:
    """`T:210.0 /210.0 B:60.0 /60.0 @:0 B@:0` -> Temperatures; the first T (or T0) wins."""
    found: dict[str, tuple[float, float | None]] = {}
    for name, actual, target in _TEMP.findall(text):
        if name not in found:
            found[name] = (float(actual), float(target) if target else None)
    if not found:
        return None
    hotend, hotend_target = found.get("T", (None, None))
    bed, bed_target = found.get("B", (None, None))
    return Temperatures(hotend, hotend_target, bed, bed_target)


def parse_reply(line: str) -> Reply:
    """Classify one line the firmware sent; unknown lines come back as `Other`."""
    text = line.strip()
    lower = text.lower()
    if lower == "ok" or lower.startswith("ok "):
        return _parse_ok(text[2:])
    if lower.startswith("error:") or lower.startswith("!!"):
        return _parse_error(text)
    match = _RESEND.match(text)
    if match:
        return Resend(int(match.group(1)))
    if lower.startswith("echo:"):
        lower, text = lower[5:].lstrip(), text[5:].lstrip()
    if lower.startswith("busy:"):
        return Busy(text[5:].strip())
    if lower == "start":
        return Start()
    temps = parse_temperatures(text) if "T:" in text or "B:" in text else None
    if temps is not None and not lower.startswith("x:"):
        return TemperatureReport(temps)
    return Other(line.strip())


def _parse_ok(rest: str) -> Ok:
    temps = parse_temperatures(rest)
    fields = {k: int(v) for k, v in _OK_FIELDS.findall(rest.split("T:", 1)[0])}
    return Ok(fields.get("N"), fields.get("P"), fields.get("B"), temps)


def _parse_error(text: str) -> FirmwareError:
    message = text[6:].strip() if text.lower().startswith("error:") else text[2:].strip()
    lower = message.lower()
    kind = next((k for phrase, k in _ERROR_KINDS if phrase in lower), None)
    if kind is None:
        fatal = any(word in lower for word in _FATAL_WORDS)
        kind = ErrorKind.FATAL if fatal else ErrorKind.OTHER
    if text.startswith("!!"):
        kind = ErrorKind.FATAL
    match = _LAST_LINE.search(message)
    return FirmwareError(kind, message, int(match.group(1)) if match else None)
