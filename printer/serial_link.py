"""Host side of the Marlin serial protocol: a pure line sender and the thin loop that owns the port.

`LineSender` is the protocol: line numbers, the history kept for resends, `ok` credit (one line
per `ok`, or a window when the firmware answers ADVANCED_OK), resend requests, timeouts. It does
no I/O and owns no clock: the caller passes `now` and writes what it is given. `SerialLink` owns
the pyserial port and nothing else: it reads reply lines into the sender and writes its output.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import serial

from gotapi3dp.wire.errors import ErrorCode, P3DError

from .gcode import (Busy, ErrorKind, FirmwareError, Ok, Reply, Resend, Start, TemperatureReport,
                    Temperatures, format_line, parse_reply, strip_comment)

HISTORY = 1024              # lines kept for resend requests
RX_BUDGET = 127             # bytes of unacknowledged lines allowed (Marlin RX_BUFFER_SIZE 128)
RESEND_OK_WAIT = 0.5        # seconds to wait for the `ok` that may follow `Resend:`
MAX_TIMEOUTS = 5            # consecutive ok timeouts before the firmware is considered dead
QUEUE_AHEAD = 8             # commands the link queues in the sender ahead of sending
READ_TIMEOUT = 0.02         # seconds one port read may block


@dataclass
class SenderCounters:
    lines_sent: int = 0       # new lines written (first transmissions)
    resends: int = 0          # lines written again, after a resend request or a timeout
    checksum_errors: int = 0  # line errors reported by the firmware
    timeouts: int = 0         # ok timeouts


class LineSender:
    """Numbered, checksummed line streaming with resends and `ok` credit; no I/O.

    Feed every reply line to `feed(line, now)`; write whatever `next_to_send(now)` returns until
    it returns None. `failure` is set (and nothing more is sent) when the link cannot go on.
    """

    def __init__(self, first_number: int = 1, ok_timeout: float = 10.0, max_resends: int = 10,
                 rx_budget: int = RX_BUDGET, resend_ok_wait: float = RESEND_OK_WAIT,
                 max_timeouts: int = MAX_TIMEOUTS) -> None:
        self.ok_timeout = ok_timeout
        self.max_resends = max_resends
        self.rx_budget = rx_budget
        self.resend_ok_wait = resend_ok_wait
        self.max_timeouts = max_timeouts
        self.counters = SenderCounters()
        self.failure: str | None = None
        self.temperatures: Temperatures | None = None
        self.acked = first_number - 1          # every line up to this number is acknowledged
        self._next = first_number              # number the next queued command gets
        self._last_sent = first_number - 1     # highest number written so far
        self._pending: deque[bytes] = deque()  # framed, numbered, not yet written
        self._history: dict[int, bytes] = {}
        self._in_flight: deque[tuple[int, int]] = deque()  # (number, size) awaiting ok
        self._replay: int | None = None        # next number to re-send from history
        self._window = 1                       # lines in flight; B of the last ADVANCED_OK
        self._deadline: float | None = None    # ok timeout
        self._error_oks = 0                    # `ok`s still expected after Resend lines
        self._error_ok_until = 0.0
        self._resend_line: int | None = None   # last resend request acted upon
        self._resend_count = 0
        self._stale = 0                        # repeats of that request still in transit
        self._timeouts = 0

    # ------------------------------------------------------------ input
    def queue(self, command: str) -> int:
        """Number and frame one command for sending; returns its line number."""
        number = self._next
        self._next += 1
        self._pending.append(format_line(number, command))
        return number

    def drop_pending(self) -> None:
        """Forget queued commands not yet written (cancel); written lines are still delivered."""
        self._pending.clear()
        self._next = self._last_sent + 1

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def next_number(self) -> int:
        return self._next

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing in flight, nothing to re-send."""
        return not self._pending and self._replay is None and self.acked >= self._last_sent

    def feed(self, line: str, now: float) -> Reply:
        """Take one reply line from the firmware; returns it parsed."""
        reply = parse_reply(line)
        if isinstance(reply, Ok):
            self._on_ok(reply, now)
        elif isinstance(reply, Resend):
            self._on_resend(reply.line, now)
        elif isinstance(reply, FirmwareError):
            self._on_error(reply, now)
        elif isinstance(reply, Busy):
            self._timeouts = 0
            if self._deadline is not None:
                self._deadline = now + self.ok_timeout
        elif isinstance(reply, TemperatureReport):
            self.temperatures = reply.temperatures
        elif isinstance(reply, Start):
            self._fail("the printer restarted (it sent `start`); line numbers are lost")
        return reply

    # ------------------------------------------------------------ output
    def next_to_send(self, now: float, allow_new: bool = True) -> bytes | None:
        """The next bytes to write, or None while credit, a pause or a failure holds it back."""
        if self.failure is not None:
            return None
        if self._deadline is not None and now >= self._deadline:
            self.on_timeout(now)
            if self.failure is not None:
                return None
        if self._error_oks and now < self._error_ok_until:
            return None
        self._error_oks = 0
        if self._replay is not None:
            return self._send_replay(now)
        if allow_new and self._pending and self._has_credit(len(self._pending[0])):
            data = self._pending.popleft()
            self._last_sent += 1
            self._remember(self._last_sent, data)
            self.counters.lines_sent += 1
            return self._transmit(self._last_sent, data, now)
        return None

    def on_timeout(self, now: float) -> None:
        """No `ok` in time: re-send every unacknowledged line with its own number.

        The firmware silently discards a repeat of its last line, so a lost `ok` costs one
        re-send; a lost line is simply delivered again.
        """
        self.counters.timeouts += 1
        self._timeouts += 1
        self._deadline = None
        if self._timeouts > self.max_timeouts:
            self._fail(f"no response from the printer after {self._timeouts - 1} "
                       f"consecutive timeouts of {self.ok_timeout:g} s")
            return
        self._stale = 0
        self._error_oks = 0
        oldest = self._in_flight[0][0] if self._in_flight else self.acked + 1
        if oldest <= self._last_sent:
            self._rewind(oldest)

    def wake_at(self) -> float | None:
        """When the sender next needs `next_to_send` without a new reply (a timer expiring)."""
        times = [t for t in (self._deadline, self._error_ok_until if self._error_oks else None)
                 if t is not None]
        return min(times) if times else None

    # ------------------------------------------------------------ internals
    def _has_credit(self, size: int) -> bool:
        if not self._in_flight:
            return True
        in_bytes = sum(s for _, s in self._in_flight)
        return len(self._in_flight) < self._window and in_bytes + size <= self.rx_budget

    def _send_replay(self, now: float) -> bytes | None:
        number = self._replay
        assert number is not None
        data = self._history[number]
        if not self._has_credit(len(data)):
            return None
        self._replay = number + 1 if number < self._last_sent else None
        self.counters.resends += 1
        return self._transmit(number, data, now)

    def _transmit(self, number: int, data: bytes, now: float) -> bytes:
        self._in_flight.append((number, len(data)))
        if self._deadline is None:
            self._deadline = now + self.ok_timeout
        return data

    def _remember(self, number: int, data: bytes) -> None:
        self._history[number] = data
        self._history.pop(number - HISTORY, None)

    def _on_ok(self, ok: Ok, now: float) -> None:
        self._timeouts = 0
        if ok.temperatures is not None:
            self.temperatures = ok.temperatures
        if ok.buffer is not None:
            self._window = max(1, ok.buffer)
        if self._error_oks:
            self._error_oks -= 1                 # the `ok` that closes an error/resend
            if ok.line is not None:
                self._ack_through(ok.line)
        elif ok.line is not None:
            self._ack_through(ok.line)
        elif self._in_flight:
            self._ack(self._in_flight.popleft()[0])
        self._deadline = now + self.ok_timeout if self._in_flight else None

    def _ack_through(self, number: int) -> None:
        while self._in_flight and self._in_flight[0][0] <= number:
            self._ack(self._in_flight.popleft()[0])
        self.acked = max(self.acked, min(number, self._last_sent))

    def _ack(self, number: int) -> None:
        self.acked = max(self.acked, number)
        if self._resend_line is not None and number >= self._resend_line:
            self._resend_line, self._resend_count, self._stale = None, 0, 0

    def _on_resend(self, number: int, now: float) -> None:
        self._error_oks += 1
        self._error_ok_until = now + self.resend_ok_wait
        if number > self._last_sent + 1:
            self._fail(f"printer requested line {number}, but only {self._last_sent} were sent")
            return
        self.acked = max(self.acked, number - 1)   # the firmware holds everything before it
        if number == self._last_sent + 1:          # it has every line: a repeat got through
            self._in_flight.clear()
            self._replay = None
            return
        if number == self._resend_line and self._stale > 0:
            self._stale -= 1                       # caused by a line sent before the rewind
            return
        if number not in self._history:
            self._fail(f"printer requested line {number}, no longer in the resend history")
            return
        self._resend_count = self._resend_count + 1 if number == self._resend_line else 1
        self._resend_line = number
        if self._resend_count > self.max_resends:
            self._fail(f"printer keeps requesting line {number} again and again "
                       f"({self._resend_count - 1} resends), communication stuck")
            return
        self._stale = sum(1 for n, _ in self._in_flight if n > number)
        self._rewind(number)

    def _rewind(self, number: int) -> None:
        self._in_flight.clear()
        self._replay = number
        self._deadline = None

    def _on_error(self, error: FirmwareError, now: float) -> None:
        if error.kind is ErrorKind.NO_LINE_NUMBER:
            self.counters.checksum_errors += 1     # recoverable: no Resend, no ok follows
            self._on_ok(Ok(), now)
        elif error.kind is ErrorKind.FATAL:
            self._fail(f"printer error: {error.message}")
        else:
            self.counters.checksum_errors += 1     # a Resend line follows

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message


@dataclass
class StreamStats:
    lines_sent: int
    resends: int
    checksum_errors: int
    timeouts: int
    seconds: float


def commands(lines: Iterable[str]) -> Iterator[str]:
    """The commands of raw G-code: comments and blank lines dropped."""
    for line in lines:
        command = strip_comment(line)
        if command:
            yield command


class SerialLink:
    """The serial port to a Marlin-like firmware, driven by a `LineSender`.

    One caller at a time (`stream`, `command`); `temperatures()` may be read from any thread.
    `port` is anything `serial.serial_for_url` opens: a device, a pty, socket://, rfc2217://.
    """

    def __init__(self, port: str, baud: int = 115200, ok_timeout: float = 10.0,
                 max_resends: int = 10,
                 on_temperature: Callable[[dict], None] | None = None) -> None:
        self.port = port
        self.baud = baud
        self.ok_timeout = ok_timeout
        self.max_resends = max_resends
        self.on_temperature = on_temperature
        self._serial: serial.SerialBase | None = None
        self._sender = LineSender(ok_timeout=ok_timeout, max_resends=max_resends)
        self._rx = bytearray()
        self._temps: dict = Temperatures().as_dict()
        self._replies: list[str] | None = None

    # ------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Open the port and reset the line number with `M110 N0` (re-sent after `start`)."""
        try:
            self._serial = serial.serial_for_url(self.port, baudrate=self.baud,
                                                 timeout=READ_TIMEOUT)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise P3DError(ErrorCode.SERIAL_LINK, f"cannot open {self.port}: {exc}") from None
        try:
            self._handshake()
        except P3DError:
            self.close()
            raise
        self._sender = LineSender(first_number=1, ok_timeout=self.ok_timeout,
                                  max_resends=self.max_resends)

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass

    def _handshake(self, attempts: int = 5) -> None:
        reset = format_line(0, "M110 N0")
        for _ in range(attempts):
            self._write(reset)
            if self._await_ok(time.monotonic() + min(self.ok_timeout, 3.0)) and self._settle():
                return
        raise P3DError(ErrorCode.SERIAL_LINK, f"no answer to M110 from {self.port}")

    def _await_ok(self, deadline: float) -> bool:
        """True on a clean `ok`; False on `start` (a reboot), an error, or silence."""
        spoiled = False
        while time.monotonic() < deadline:
            reply = self._read_reply()
            if isinstance(reply, Start):
                return False
            if isinstance(reply, (FirmwareError, Resend)):
                spoiled = True
            elif isinstance(reply, Ok):
                return not spoiled
        return False

    def _settle(self, quiet: float = 0.1, limit: float = 1.0) -> bool:
        """Swallow late answers to earlier attempts; False if the board rebooted meanwhile."""
        end = time.monotonic() + limit
        last = time.monotonic()
        while time.monotonic() - last < quiet and time.monotonic() < end:
            reply = self._read_reply()
            if isinstance(reply, Start):
                return False
            if reply is not None:
                last = time.monotonic()
        return True

    # ------------------------------------------------------------ streaming
    def stream(self, lines: Iterable[str], on_sent: Callable[[int], None] | None = None,
               cancel: threading.Event | None = None,
               pause: threading.Event | None = None) -> StreamStats:
        """Send every command of `lines` and wait for all to be acknowledged.

        Returns early once `cancel` is set (lines already written are still delivered, no new
        ones); while `pause` is set no new line is written. Raises P3DError(SERIAL_LINK).
        """
        sender = self._sender
        before = SenderCounters(**vars(sender.counters))
        started = time.monotonic()
        first = sender.next_number
        source = commands(lines)
        exhausted, reported = False, 0
        while True:
            if cancel is not None and cancel.is_set():
                sender.drop_pending()
                self._drain(time.monotonic() + min(self.ok_timeout, 2.0))
                break
            while not exhausted and sender.pending < QUEUE_AHEAD:
                command = next(source, None)
                if command is None:
                    exhausted = True
                else:
                    sender.queue(command)
            self._pump(allow_new=pause is None or not pause.is_set())
            done = max(0, sender.acked - first + 1)
            if on_sent is not None and done != reported:
                reported = done
                on_sent(done)
            if exhausted and sender.idle:
                break
        return self._stats(before, started)

    def command(self, cmd: str, timeout: float = 10.0) -> list[str]:
        """Send one numbered command and wait for its `ok`; returns the reply lines seen."""
        number = self._sender.queue(strip_comment(cmd))
        self._replies = []
        deadline = time.monotonic() + timeout
        try:
            while self._sender.acked < number:
                if time.monotonic() > deadline:
                    raise P3DError(ErrorCode.SERIAL_LINK, f"no ok for {cmd!r} within {timeout:g} s")
                self._pump(allow_new=True)
            return self._replies
        finally:
            self._replies = None

    def temperatures(self) -> dict:
        return {k: dict(v) for k, v in self._temps.items()}

    def _drain(self, deadline: float) -> None:
        while not self._sender.idle and time.monotonic() < deadline:
            self._pump(allow_new=False)

    def _stats(self, before: SenderCounters, started: float) -> StreamStats:
        now = self._sender.counters
        return StreamStats(lines_sent=now.lines_sent - before.lines_sent,
                           resends=now.resends - before.resends,
                           checksum_errors=now.checksum_errors - before.checksum_errors,
                           timeouts=now.timeouts - before.timeouts,
                           seconds=time.monotonic() - started)

    # ------------------------------------------------------------ the I/O loop
    def _pump(self, allow_new: bool) -> None:
        """Write what the sender releases, then read and feed one reply line (or time out)."""
        sender = self._sender
        while (data := sender.next_to_send(time.monotonic(), allow_new)) is not None:
            self._write(data)
        if sender.failure is not None:
            raise P3DError(ErrorCode.SERIAL_LINK, sender.failure)
        line = self._read_line()
        if line is None:
            return
        reply = sender.feed(line, time.monotonic())
        if self._replies is not None:
            self._replies.append(line)
        temps = getattr(reply, "temperatures", None)
        if temps is not None:
            self._update_temperatures(temps)
        if sender.failure is not None:
            raise P3DError(ErrorCode.SERIAL_LINK, sender.failure)

    def _update_temperatures(self, temps: Temperatures) -> None:
        merged = {k: dict(v) for k, v in self._temps.items()}
        for heater, values in temps.as_dict().items():
            for key, value in values.items():
                if value is not None:
                    merged[heater][key] = value
        self._temps = merged
        if self.on_temperature is not None:
            self.on_temperature(self.temperatures())

    def _read_reply(self) -> Reply | None:
        line = self._read_line()
        return None if line is None else parse_reply(line)

    def _read_line(self) -> str | None:
        """One reply line without its newline, or None if none completed within READ_TIMEOUT."""
        port = self._port()
        while True:
            newline = self._rx.find(b"\n")
            if newline >= 0:
                raw = bytes(self._rx[:newline])
                del self._rx[:newline + 1]
                text = raw.decode("ascii", "replace").strip()
                if text:
                    return text
                continue
            try:
                chunk = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                raise P3DError(ErrorCode.SERIAL_LINK,
                               f"read from {self.port} failed: {exc}") from None
            if not chunk:
                return None
            self._rx.extend(chunk)

    def _write(self, data: bytes) -> None:
        try:
            self._port().write(data)
        except (serial.SerialException, OSError) as exc:
            raise P3DError(ErrorCode.SERIAL_LINK, f"write to {self.port} failed: {exc}") from None

    def _port(self) -> serial.SerialBase:
        if self._serial is None:
            raise P3DError(ErrorCode.SERIAL_LINK, f"{self.port} is not open")
        return self._serial
