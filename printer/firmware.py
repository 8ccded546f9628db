"""A virtual Marlin-like firmware: a pure protocol core and its pseudo-terminal runner.

`VirtualFirmware` answers bytes with bytes, as Marlin 2 does: numbered lines need checksums and
consecutive numbers, errors ask for a resend, a repeat of the last line is dropped silently
(current Marlin; `duplicate_ok` answers it with `ok` as older ones did), heaters move toward
their targets in the simulated time given to it. A command holds its slot of the BUFSIZE
command buffer while it runs, `command_time` seconds (or its motion time), and is answered
with `ok` when it is done, as Marlin's `process_parsed_command` does. Faults come from
configuration: corrupted lines, corrupted or dropped bytes in both directions, lost `ok`s, a
reboot. It logs every line it accepts and executes, raw, so a test can compare what ran with
what was sent.
`PtyFirmware` runs one on a pseudo-terminal that pyserial opens like any serial port;
`TcpFirmware` serves one on a TCP port (pyserial `socket://host:port`). Both put a simulated
UART between the port and the core: at `baud` each byte takes 10 bits' time, both ways.
"""
from __future__ import annotations

import fcntl
import math
import os
import random
import re
import select
import socket
import struct
import termios
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gotapi3dp.config import FirmwareConfig

from .gcode import parse_line

AMBIENT = 25.0
TEMP_WINDOW = 1.0           # degrees: a heater within this of its target has reached it
PLANNER_FREE = 16           # P of ADVANCED_OK: this firmware has no planner queue to fill
WAIT_REPORT = 1.0           # seconds between temperature lines while M109/M190 wait
SKIP_OK = object()          # a handler that printed its own `ok` (M105)
_WORD = re.compile(r"([A-Z])\s*([-+]?(?:\d+\.?\d*|\.\d+))?")


@dataclass
class Heater:
    actual: float = AMBIENT
    target: float = 0.0

    def step(self, dt: float, rate: float) -> None:
        goal = self.target if self.target > 0 else AMBIENT
        delta = max(-rate * dt, min(rate * dt, goal - self.actual))
        self.actual += delta


@dataclass
class _Queued:
    raw: str                 # the line as received, for the log
    command: str
    number: int | None
    noop: bool = False       # a dropped repeat: answer `ok`, execute nothing


@dataclass
class _Wait:
    done: Callable[[], bool]
    number: int | None
    heating: bool = False
    end: float | None = None     # a timed wait (command or motion time) ends then


@dataclass
class _Motion:
    pos: dict[str, float] = field(default_factory=lambda: dict.fromkeys("XYZE", 0.0))
    relative: bool = False
    relative_e: bool = False
    feedrate: float = 3000.0     # mm/min


class VirtualFirmware:
    """Marlin 2's serial protocol and a few G-codes, in simulated time; no I/O."""

    def __init__(self, config: FirmwareConfig, on_execute: Callable[[str], None] | None = None,
                 keepalive: float = 2.0) -> None:
        self.config = config
        self.keepalive = keepalive
        self.executed = 0
        self.last_n = 0
        self.halted = False
        self.overflows = 0                       # bytes dropped because the RX buffer was full
        self.heaters = {"T": Heater(), "B": Heater()}
        self._on_execute = on_execute
        self._rng = random.Random(config.seed)
        self._rx = bytearray()
        self._skip_partial = False
        self._ring: deque[_Queued] = deque()
        self._wait: _Wait | None = None
        self._motion = _Motion()
        self._now: float | None = None
        self._report_every = 0.0
        self._next_report = 0.0
        self._next_busy = 0.0
        self._next_wait_report = 0.0
        self._rebooted = False

    def reset(self) -> None:
        """A board reset: line number, buffers, waits, heaters and auto-report forgotten."""
        self.last_n = 0
        self.halted = False
        self._rx.clear()
        self._skip_partial = False
        self._ring.clear()
        self._wait = None
        self._report_every = 0.0
        self._motion = _Motion()
        for heater in self.heaters.values():
            heater.target = 0.0

    # ------------------------------------------------------------ bytes in, bytes out
    def feed(self, data: bytes, now: float) -> bytes:
        """Receive bytes from the host; returns the reply bytes."""
        out: list[str] = []
        self._advance(now)
        if self.halted:
            return b""
        self._receive(self._garble(data, self.config.byte_error_rate))
        self._service(out)
        if len(self._rx) > self.config.rx_buffer:
            self.overflows += len(self._rx) - self.config.rx_buffer
            del self._rx[self.config.rx_buffer:]
        return self._send(out)

    def tick(self, now: float) -> bytes:
        """Let simulated time pass: heaters, waits, keep-alive and M155 auto-reports."""
        out: list[str] = []
        self._advance(now)
        if self.halted:
            return b""
        if self._report_every and now >= self._next_report:
            self._next_report = now + self._report_every
            out.append(self._temperature_line())
        if self._wait is not None:
            self._tick_wait(now, out)
        return self._send(out)

    def greet(self) -> bytes:
        """What the board prints after a reset."""
        return b"start\n"

    def wake_at(self) -> float | None:
        """When the running command's time is up (call `tick` then), if it is timed."""
        return self._wait.end if self._wait is not None else None

    def _send(self, out: list[str]) -> bytes:
        return self._garble(_encode(out), self.config.reply_error_rate)

    def _garble(self, data: bytes, rate: float) -> bytes:
        """Line noise: a byte, at `rate`, dropped or one bit flipped (newlines are spared).

        At most one fault per line: Marlin's XOR checksum cannot see every double error (two
        flips of the same bit cancel), so a real printer would run such a line as garbage.
        """
        if rate <= 0 or not data:
            return data
        out = bytearray()
        rng = self._rng
        clean = False                                   # the rest of this line stays intact
        for byte in data:
            if clean or byte == 0x0A or rng.random() >= rate:
                out.append(byte)
            elif rng.random() < 0.5:                    # else dropped
                flipped = byte ^ (1 << rng.randrange(7))
                out.append(flipped if flipped != 0x0A else byte ^ 0x80)   # never a newline
                clean = True
            else:
                clean = True
            if byte == 0x0A:
                clean = False
        return bytes(out)

    def _advance(self, now: float) -> None:
        dt = 0.0 if self._now is None else max(0.0, now - self._now)
        self._now = now
        for heater in self.heaters.values():
            heater.step(dt, self.config.heat_rate)

    def _receive(self, data: bytes) -> None:
        if self._skip_partial:
            newline = data.find(b"\n")
            if newline < 0:
                return
            data = data[newline + 1:]
            self._skip_partial = False
        self._rx.extend(data)

    def _service(self, out: list[str]) -> None:
        """Move lines from RX into the command buffer; execute until blocked or empty."""
        while not self.halted:
            while self._ring_free() > 0 and not self.halted:
                raw = self._take_line()
                if raw is None:
                    break
                self._accept(raw, out)
            if self._wait is not None or not self._ring or self.halted:
                return
            self._execute(self._ring.popleft(), out)

    def _ring_free(self) -> int:
        """Free command slots; a running command keeps its slot until it is done."""
        return self.config.bufsize - len(self._ring) - (self._wait is not None)

    def _take_line(self) -> bytes | None:
        while True:
            newline = self._rx.find(b"\n")
            if newline < 0:
                return None
            raw = bytes(self._rx[:newline]).strip()
            del self._rx[:newline + 1]
            if raw:
                return raw

    # ------------------------------------------------------------ line protocol
    def _accept(self, raw: bytes, out: list[str]) -> None:
        parsed = parse_line(raw)
        text = raw.decode("ascii", "replace")
        if "M112" in parsed.command.upper() and parsed.checksum_ok is not False:
            # emergency parser: acts at once (a line with a bad checksum is noise, not M112)
            self._log(text)
            self._halt(out)
        elif parsed.number is None:
            if parsed.checksum_ok is not None:
                out.append(f"Error:No Line Number with checksum, Last Line: {self.last_n}")
            else:
                if parsed.command.upper().startswith("M110"):
                    self.last_n = _m110_number(parsed.command, self.last_n)
                self._ring.append(_Queued(text, parsed.command, None))
        else:
            self._accept_numbered(text, parsed.number, parsed.command, parsed.checksum_ok, out)

    def _accept_numbered(self, text: str, number: int, command: str, checksum_ok: bool | None,
                         out: list[str]) -> None:
        m110 = command.upper().startswith("M110")
        if self._chance(self.config.corrupt_rate):
            return self._line_error("checksum mismatch", out)
        if number != self.last_n + 1 and not m110:
            if self.last_n - 1 <= number <= self.last_n:
                if self.config.duplicate_ok:          # older Marlin: `ok`, nothing executed
                    self._ring.append(_Queued(text, command, number, noop=True))
                return None                           # current Marlin: dropped silently
            return self._line_error("Line Number is not Last Line Number+1", out)
        if checksum_ok is None:
            return self._line_error("No Checksum with line number", out)
        if not checksum_ok:
            return self._line_error("checksum mismatch", out)
        self.last_n = _m110_number(command, number) if m110 else number
        self._ring.append(_Queued(text, command, number))
        return None

    def _line_error(self, message: str, out: list[str]) -> None:
        """Marlin's gcode_line_error: report, drain the RX buffer, ask for the next line."""
        out.append(f"Error:{message}, Last Line: {self.last_n}")
        out.append(f"Resend: {self.last_n + 1}")
        self._ok(out, self.last_n)
        self._skip_partial = bool(self._rx) and not self._rx.endswith(b"\n")
        self._rx.clear()

    def _ok(self, out: list[str], number: int | None) -> None:
        if self._chance(self.config.drop_ok_rate):
            return
        if self.config.advanced_ok:
            free = self.config.bufsize - len(self._ring)
            n = f"N{number} " if number is not None else ""
            out.append(f"ok {n}P{PLANNER_FREE} B{free}")
        else:
            out.append("ok")

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def _halt(self, out: list[str]) -> None:
        self.halted = True
        self._ring.clear()
        self._rx.clear()
        self._wait = None
        out.append("Error:Printer halted. kill() called!")

    def _log(self, text: str) -> None:
        self.executed += 1
        if self._on_execute is not None:
            self._on_execute(text)

    def _maybe_reboot(self, out: list[str]) -> bool:
        """Fault injection: the board resets once after `reboot_after` executed lines."""
        if self._rebooted or not self.config.reboot_after:
            return False
        if self.executed < self.config.reboot_after:
            return False
        self._rebooted = True
        self.reset()
        out.append("start")
        return True

    # ------------------------------------------------------------ commands
    def _execute(self, queued: _Queued, out: list[str]) -> None:
        if queued.noop:
            return self._ok(out, queued.number)
        self._log(queued.raw)
        if self._maybe_reboot(out):
            return None
        code, params = _parse_command(queued.command)
        handler = self._HANDLERS.get(code)
        if handler is None:
            out.append(f'echo:Unknown command: "{queued.command}"')
            result = None
        else:
            result = handler(self, params, out)
        if result is None:
            result = self._delay(self.config.command_time)
        if isinstance(result, _Wait):
            result.number = queued.number
            self._start_wait(result)
        elif result is not SKIP_OK:
            self._ok(out, queued.number)
        return None

    def _start_wait(self, wait: _Wait) -> None:
        assert self._now is not None
        self._wait = wait
        self._next_busy = self._now + self.keepalive
        self._next_wait_report = self._now + WAIT_REPORT

    def _tick_wait(self, now: float, out: list[str]) -> None:
        wait = self._wait
        assert wait is not None
        if wait.done():
            self._wait = None
            self._ok(out, wait.number)
            self._service(out)
            return
        if wait.heating and now >= self._next_wait_report:
            self._next_wait_report = now + WAIT_REPORT
            out.append(self._temperature_line() + " W:?")
        if self.keepalive > 0 and now >= self._next_busy:
            self._next_busy = now + self.keepalive
            out.append("echo:busy: processing")

    def _temperature_line(self) -> str:
        t, b = self.heaters["T"], self.heaters["B"]
        return f"T:{t.actual:.2f} /{t.target:.2f} B:{b.actual:.2f} /{b.target:.2f} @:0 B@:0"

    def _set_target(self, name: str, params: dict[str, float], wait: bool) -> _Wait | None:
        heater = self.heaters[name]
        cooling_too = "R" in params
        heater.target = params.get("R", params.get("S", heater.target))
        if not wait:
            return None
        target = heater.target
        if cooling_too:
            return _Wait(lambda: abs(heater.actual - target) <= TEMP_WINDOW, None, True)
        return _Wait(lambda: heater.actual >= target - TEMP_WINDOW, None, True)

    def _m104(self, params: dict[str, float], out: list[str]) -> object:
        return self._set_target("T", params, wait=False)

    def _m109(self, params: dict[str, float], out: list[str]) -> object:
        return self._set_target("T", params, wait=True)

    def _m140(self, params: dict[str, float], out: list[str]) -> object:
        return self._set_target("B", params, wait=False)

    def _m190(self, params: dict[str, float], out: list[str]) -> object:
        return self._set_target("B", params, wait=True)

    def _m105(self, params: dict[str, float], out: list[str]) -> object:
        out.append("ok " + self._temperature_line())
        return SKIP_OK

    def _m155(self, params: dict[str, float], out: list[str]) -> object:
        self._report_every = max(0.0, params.get("S", 0.0))
        self._next_report = (self._now or 0.0) + self._report_every
        return None

    def _m114(self, params: dict[str, float], out: list[str]) -> object:
        pos = self._motion.pos
        out.append(f"X:{pos['X']:.2f} Y:{pos['Y']:.2f} Z:{pos['Z']:.2f} E:{pos['E']:.2f} "
                   f"Count X:0 Y:0 Z:0")
        return None

    def _m115(self, params: dict[str, float], out: list[str]) -> object:
        out.append("FIRMWARE_NAME:gotapi-3dp virtual Marlin PROTOCOL_VERSION:1.0 "
                   "MACHINE_TYPE:Virtual EXTRUDER_COUNT:1")
        out.append(f"Cap:ADVANCED_OK:{int(self.config.advanced_ok)}")
        out.append("Cap:AUTOREPORT_TEMP:1")
        out.append("Cap:EMERGENCY_PARSER:1")
        return None

    def _move(self, params: dict[str, float], out: list[str]) -> object:
        motion = self._motion
        motion.feedrate = params.get("F", motion.feedrate) or motion.feedrate
        distance = 0.0
        for axis in "XYZE":
            if axis in params:
                relative = motion.relative_e if axis == "E" else motion.relative
                goal = motion.pos[axis] + params[axis] if relative else params[axis]
                if axis != "E":
                    distance += (goal - motion.pos[axis]) ** 2
                motion.pos[axis] = goal
        return self._motion_delay(math.sqrt(distance) / (motion.feedrate / 60.0))

    def _dwell(self, params: dict[str, float], out: list[str]) -> object:
        return self._motion_delay(params.get("S", params.get("P", 0.0) / 1000.0))

    def _motion_delay(self, seconds: float) -> _Wait | None:
        """Motion time when `motion` is on; never less than the command time."""
        if not self.config.motion:
            return None
        return self._delay(max(seconds, self.config.command_time))

    def _delay(self, seconds: float) -> _Wait | None:
        if seconds <= 0 or self._now is None:
            return None
        end = self._now + seconds
        return _Wait(lambda: (self._now or 0.0) >= end, None, end=end)

    def _home(self, params: dict[str, float], out: list[str]) -> object:
        axes = [a for a in "XYZ" if a in params] or list("XYZ")
        for axis in axes:
            self._motion.pos[axis] = 0.0
        return None

    def _set_position(self, params: dict[str, float], out: list[str]) -> object:
        for axis in "XYZE":
            if axis in params:
                self._motion.pos[axis] = params[axis]
        return None

    def _g90(self, params: dict[str, float], out: list[str]) -> object:
        self._motion.relative = self._motion.relative_e = False
        return None

    def _g91(self, params: dict[str, float], out: list[str]) -> object:
        self._motion.relative = self._motion.relative_e = True
        return None

    def _m82(self, params: dict[str, float], out: list[str]) -> object:
        self._motion.relative_e = False
        return None

    def _m83(self, params: dict[str, float], out: list[str]) -> object:
        self._motion.relative_e = True
        return None

    def _accepted(self, params: dict[str, float], out: list[str]) -> object:
        return None

    _HANDLERS: dict[str, Callable[["VirtualFirmware", dict, list], object]] = {}


VirtualFirmware._HANDLERS = {
    "G0": VirtualFirmware._move, "G1": VirtualFirmware._move,
    "G2": VirtualFirmware._move, "G3": VirtualFirmware._move,
    "G4": VirtualFirmware._dwell, "G28": VirtualFirmware._home,
    "G92": VirtualFirmware._set_position,
    "G90": VirtualFirmware._g90, "G91": VirtualFirmware._g91,
    "M82": VirtualFirmware._m82, "M83": VirtualFirmware._m83,
    "M104": VirtualFirmware._m104, "M109": VirtualFirmware._m109,
    "M140": VirtualFirmware._m140, "M190": VirtualFirmware._m190,
    "M105": VirtualFirmware._m105,
    "M114": VirtualFirmware._m114, "M115": VirtualFirmware._m115,
    "M155": VirtualFirmware._m155,
    **dict.fromkeys(("M110", "G21", "M17", "M18", "M84", "M106", "M107", "M400", "M73", "M117",
                     "M201", "M203", "M204", "M205", "M220", "M221", "M900", "M113",
                     "M300", "T0"), VirtualFirmware._accepted),
}


def _parse_command(command: str) -> tuple[str, dict[str, float]]:
    """`G1 X10 F3000` -> ("G1", {"X": 10.0, "F": 3000.0}); G01 is G1."""
    words = _WORD.findall(command.upper())
    if not words:
        return "", {}
    (letter, number), rest = words[0], words[1:]
    code = letter + (str(int(float(number))) if number else "")
    return code, {k: float(v) if v else 0.0 for k, v in rest}


def _m110_number(command: str, fallback: int) -> int:
    """Marlin takes the N after `M110` as the new line number (when the line is read)."""
    match = re.search(r"N\s*(\d+)", command[4:])
    return int(match.group(1)) if match else fallback


def _encode(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode("ascii", "replace")


class _Wire:
    """One direction of a simulated UART: bytes put on it arrive one after another, each
    10 bits after the last at `baud` (0 = at once)."""

    def __init__(self, baud: int) -> None:
        self.byte_time = 10.0 / baud if baud > 0 else 0.0
        self.data = bytearray()
        self.clock = 0.0                 # arrival time of the last byte put on the wire

    def put(self, data: bytes, t: float) -> None:
        """Start sending `data` at `t`, or when the bytes before it are through."""
        if data:
            self.clock = max(self.clock, t) + len(data) * self.byte_time
            self.data += data

    def arrival(self, i: int) -> float:
        """When the byte at index `i` of what is on the wire has arrived."""
        return self.clock - (len(self.data) - 1 - i) * self.byte_time

    def arrived(self, t: float) -> int:
        """How many bytes, from the front, have arrived by `t`."""
        if not self.data or self.byte_time == 0.0:
            return len(self.data)
        late = math.ceil((self.clock - t) / self.byte_time - 1e-9)
        return max(0, len(self.data) - max(0, late))

    def next_line_at(self) -> float | None:
        """When the next whole line (or, with no newline, the last byte) will have arrived."""
        if not self.data:
            return None
        newline = self.data.find(b"\n")
        return self.arrival(newline if newline >= 0 else len(self.data) - 1)

    def take(self, n: int) -> bytes:
        data = bytes(self.data[:n])
        del self.data[:n]
        return data


class _Served:
    """A `VirtualFirmware` behind one file descriptor (pty master or socket), with a
    simulated UART each way; the serving thread's loop.

    Bytes written by the host are read at once (the host's driver holds them) and reach the
    core as they arrive on the wire; the core runs every event at its own simulated time
    (a line's arrival, a command's end), so the simulation does not drift with the loop.
    """

    def __init__(self, core: VirtualFirmware, config: FirmwareConfig, stop: threading.Event,
                 packet_mode: bool = False) -> None:
        self.core, self.stop, self.packet_mode = core, stop, packet_mode
        self.inbound, self.outbound = _Wire(config.baud), _Wire(config.baud)
        self.closed = False

    def run(self, fd: int, greet: bool, boot: float = 0.0) -> None:
        """Serve until stopped or the peer hangs up (EOF on a socket). With `greet`, `start`
        is sent after `boot` seconds (a board booting; a host flushes its input on open)."""
        greet_at = time.monotonic() + boot if greet else None
        while not self.stop.is_set() and not self.closed:
            now = time.monotonic()
            if greet_at is not None and now >= greet_at:
                self.outbound.put(self.core.greet(), now)
                greet_at = None
            sending = self.outbound.arrived(now) > 0
            readable, writable, _ = select.select([fd], [fd] if sending else [], [],
                                                  self._timeout(now, greet_at))
            now = time.monotonic()
            if readable:
                self._read(fd, now)
            self._simulate(now)
            if writable or self.outbound.arrived(now) > 0:
                self._write(fd, now)

    def _timeout(self, now: float, greet_at: float | None) -> float:
        """Until the next event: a line in, a reply line out, a command's end (10 ms at most)."""
        events = [t for t in (self.inbound.next_line_at(), self.outbound.next_line_at(),
                              self.core.wake_at(), greet_at) if t is not None and t > now]
        return min([now + 0.01, *events]) - now

    def _simulate(self, now: float) -> None:
        """Run the core through every event up to `now`, in order, each at its own time."""
        core, inbound = self.core, self.inbound
        while True:
            wake = core.wake_at()
            n = inbound.arrived(now if wake is None else min(now, wake))
            if n:
                newline = inbound.data.find(b"\n", 0, n)
                n = newline + 1 if newline >= 0 else n
                t = inbound.arrival(n - 1)
                self.outbound.put(core.feed(inbound.take(n), t), t)
            elif wake is not None and wake <= now:
                self.outbound.put(core.tick(wake), wake)
            else:
                break
        self.outbound.put(core.tick(now), now)

    def _read(self, fd: int, now: float) -> None:
        try:
            data = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.closed = True
            return
        if not data:
            self.closed = not self.packet_mode        # EOF: the socket peer went away
            return
        if self.packet_mode:
            if data[0] != 0:
                if data[0] & 0x01:                    # TIOCPKT_FLUSHREAD: the port was opened
                    self._reset(now)
                return
            data = data[1:]
        self.inbound.put(data, now)

    def _reset(self, now: float) -> None:
        """The port was opened: a halted board (M112) comes back, as DTR resets a real one."""
        if self.core.halted:
            self.core.reset()
        self.outbound.put(self.core.greet(), now)

    def _write(self, fd: int, now: float) -> None:
        n = self.outbound.arrived(now)
        if not n:
            return
        try:
            written = os.write(fd, bytes(self.outbound.data[:n]))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.closed = True
            return
        self.outbound.take(written)


class PtyFirmware:
    """A `VirtualFirmware` on a pseudo-terminal, served by one daemon thread.

    The thread owns the master side; the slave path is a serial port to pyserial. Opening it
    (pyserial flushes its input on open) makes the board greet with `start`, as a reset would.
    Every executed line goes to `log_path`, one a line, as received.
    """

    def __init__(self, config: FirmwareConfig, log_path: Path, keepalive: float = 2.0) -> None:
        self.config = config
        self.log_path = Path(log_path)
        self.keepalive = keepalive
        self._core: VirtualFirmware | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._fds: tuple[int, int] | None = None
        self._log = None
        self._packet_mode = False

    def start(self) -> str:
        """Open the pty and start serving; returns the slave path (e.g. /dev/pts/5)."""
        master, slave = os.openpty()
        tty.setraw(slave)
        try:
            fcntl.ioctl(master, termios.TIOCPKT, struct.pack("i", 1))
            self._packet_mode = True
        except (AttributeError, OSError):
            self._packet_mode = False
        os.set_blocking(master, False)
        self._fds = (master, slave)
        self._open_core()
        self._thread = threading.Thread(target=self._run, name="firmware:pty", daemon=True)
        self._thread.start()
        return os.ttyname(slave)

    def _open_core(self) -> None:
        self._log = open(self.log_path, "a", encoding="ascii", errors="replace", buffering=1)
        self._core = VirtualFirmware(self.config, on_execute=self._write_log,
                                     keepalive=self.keepalive)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close_fds()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _close_fds(self) -> None:
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None

    @property
    def executed_count(self) -> int:
        return self._core.executed if self._core is not None else 0

    @property
    def firmware(self) -> VirtualFirmware | None:
        return self._core

    def _write_log(self, line: str) -> None:
        if self._log is not None:
            self._log.write(line + "\n")

    def _run(self) -> None:
        assert self._fds is not None and self._core is not None
        served = _Served(self._core, self.config, self._stop, self._packet_mode)
        served.run(self._fds[0], greet=not self._packet_mode)   # else greeted on open


class TcpFirmware(PtyFirmware):
    """A `VirtualFirmware` on a TCP port, one connection at a time (pyserial `socket://`).

    Each new connection is a board reset: line number forgotten, `start` sent at once (a
    host that flushes its input on open may never see it; a late one would break its
    handshake).
    """

    def __init__(self, config: FirmwareConfig, log_path: Path, host: str = "127.0.0.1",
                 port: int = 0, keepalive: float = 2.0) -> None:
        super().__init__(config, log_path, keepalive)
        self.host, self.port = host, port
        self._listener: socket.socket | None = None

    def start(self) -> str:
        """Listen and start serving; returns the pyserial URL, `socket://host:port`."""
        listener = socket.create_server((self.host, self.port))
        listener.settimeout(0.1)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._open_core()
        self._thread = threading.Thread(target=self._run, name="firmware:tcp", daemon=True)
        self._thread.start()
        return f"socket://{self.host}:{self.port}"

    def _close_fds(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _run(self) -> None:
        assert self._listener is not None and self._core is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._core.reset()
                _Served(self._core, self.config, self._stop).run(conn.fileno(), greet=True)
