"""Host side of the Marlin serial protocol: a pure line sender and the thin loop that owns the port.

`LineSender` is the protocol: line numbers, the history kept for resends, `ok` credit (one line
per `ok`, or a window when the firmware answers ADVANCED_OK), resend requests, timeouts. It does
no I/O and owns no clock: the caller passes `now` and writes what it is given. `SerialLink` owns
the pyserial port and nothing else: it reads reply lines into the sender and writes its output.

A lost `ok` is found by a probe: current Marlin drops a repeated line without a word, so on a
timeout the sender writes a new numbered `M105`. Its `ok T:..` acknowledges every line before
it; if a line was lost, the firmware's `Resend:` for it says where to go back to. Every stream
ends with such a probe, so "done" means the firmware holds every line.
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
TRUST_BELOW = 16            # a resend this far below the acknowledged line is line noise
RESEND_OK_WAIT = 0.5        # seconds to wait for the `ok` that may follow `Resend:`
MAX_TIMEOUTS = 5            # consecutive ok timeouts before the firmware is considered dead
PROBE = "M105"              # the command a probe sends (its `ok` carries temperatures)
AUTOREPORT = 2              # M155 S<n>: seconds between temperature auto-reports
POLL_EVERY = 5.0            # idle: M105 when no temperature was heard for this long
QUEUE_AHEAD = 8             # commands the link queues in the sender ahead of sending
READ_TIMEOUT = 0.02         # seconds one port read may block


@dataclass
class SenderCounters:
    lines_sent: int = 0       # new lines written (first transmissions)
    resends: int = 0          # lines written again, after a resend request or a timeout
    checksum_errors: int = 0  # line errors reported by the firmware
    timeouts: int = 0         # ok timeouts
    probes: int = 0           # M105 probes written to find where the firmware is


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
        self._pending: deque[str] = deque()    # commands not yet written (numbered on write)
        self._urgent = 0                       # pending commands at the front sent even paused
        self._probe_due = False
        self._probes: set[int] = set()         # numbers of M105 lines (their ok says T:)
        self._host: set[int] = set()           # numbers of lines the sender or link added
        self.acked_queued = 0                  # acknowledged lines that came from `queue`
        self.emergency = False                 # the failure calls for M112
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
        self._untrusted = 0                    # resend requests past the last line sent

    # ------------------------------------------------------------ input
    def queue(self, command: str) -> int:
        """Number and frame one command for sending; returns its line number."""
        number = self._next
        self._next += 1
        self._pending.append(command)
        return number

    def queue_first(self, commands: list[str]) -> None:
        """Put host commands (parking) ahead of everything queued; they go out even paused."""
        self._pending.extendleft(reversed(commands))
        self._urgent += len(commands)
        self._next += len(commands)


    def probe(self) -> None:
        """Ask where the firmware is: a numbered M105 goes out next, credit or not."""
        self._probe_due = True

    def drop_pending(self) -> None:
        """Forget queued commands not yet written (cancel); written lines are still delivered."""
        self._pending.clear()
        self._urgent = 0
        self._next = self._last_sent + 1 + int(self._probe_due)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def next_number(self) -> int:
        return self._next

    @property
    def in_flight(self) -> int:
        """Lines written and not yet acknowledged (or queued for a re-send)."""
        return len(self._in_flight) + (1 if self._replay is not None else 0)

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing in flight, nothing to re-send."""
        return (not self._pending and self._replay is None and not self._probe_due
                and self.acked >= self._last_sent)

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
        if self._deadline is None and self._in_flight:
            self._deadline = now + self.ok_timeout      # never wait without a timer
        if self._probe_due:                             # goes first, credit or not
            self._probe_due = False
            self.counters.probes += 1
            self._host.add(self._last_sent + 1)
            return self._send_new(PROBE, now)
        if self._replay is not None:
            return self._send_replay(now)
        if not self._pending or not (allow_new or self._urgent):
            return None
        data = format_line(self._last_sent + 1, self._pending[0])
        if not self._has_credit(len(data)):
            return None
        if self._urgent:
            self._urgent -= 1
            self._host.add(self._last_sent + 1)
        else:
            self.counters.lines_sent += 1
        return self._send_new(self._pending.popleft(), now)

    def _send_new(self, command: str, now: float) -> bytes:
        self._last_sent += 1
        data = format_line(self._last_sent, command)
        self._remember(self._last_sent, data)
        if command.split(" ", 1)[0].upper() == PROBE:
            self._probes.add(self._last_sent)
        return self._transmit(self._last_sent, data, now)

    def on_timeout(self, now: float) -> None:
        """No `ok` in time: probe with a new numbered M105 (see the module docstring).

        Re-sending the same line would not do: current Marlin drops a repeat of its last line
        silently, so a lost `ok` would never be answered.
        """
        self.counters.timeouts += 1
        self._timeouts += 1
        self._deadline = None
        if self._timeouts > self.max_timeouts:
            self._fail(f"no response from the printer after {self._timeouts - 1} "
                       f"consecutive timeouts of {self.ok_timeout:g} s", stop=True)
            return
        self._stale = 0
        self._error_oks = 0
        self._probe_due = True

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
        self._probes.discard(number - HISTORY)
        self._host.discard(number - HISTORY)

    def _on_ok(self, ok: Ok, now: float) -> None:
        self._timeouts = 0
        if ok.temperatures is not None:
            self.temperatures = ok.temperatures
        if ok.buffer is not None:
            self._window = max(1, ok.buffer)
        probe = self._probe_in_flight() if ok.temperatures is not None else None
        if probe is not None:                    # an M105 answered: all before it arrived
            self._error_oks = 0
            self._ack_through(probe)
        elif self._error_oks:
            self._error_oks -= 1                 # the `ok` that closes an error/resend
            if ok.line is not None:
                self._ack_through(ok.line)
        elif ok.line is not None:
            self._ack_through(ok.line)
        elif self._in_flight:
            self._ack(self._in_flight.popleft()[0])
        self._deadline = now + self.ok_timeout if self._in_flight else None

    def _probe_in_flight(self) -> int | None:
        return next((n for n, _ in self._in_flight if n in self._probes), None)

    def _ack_through(self, number: int) -> None:
        while self._in_flight and self._in_flight[0][0] <= number:
            self._ack(self._in_flight.popleft()[0])
        self._advance(min(number, self._last_sent))

    def _advance(self, number: int) -> None:
        """Everything up to `number` is acknowledged; count the queued lines among them."""
        for n in range(self.acked + 1, number + 1):
            if n not in self._host:
                self.acked_queued += 1
        self.acked = max(self.acked, number)

    def _ack(self, number: int) -> None:
        self._advance(number)
        if self._resend_line is not None and number >= self._resend_line:
            self._resend_line, self._resend_count, self._stale = None, 0, 0

    def _on_resend(self, number: int, now: float) -> None:
        if not self._trusted(number):            # line noise? ask the firmware again
            self.counters.checksum_errors += 1
            self._untrusted += 1
            if self._untrusted > self.max_resends:
                self._fail(f"printer requested line {number}, but only {self._last_sent} were "
                           f"sent and {self.acked} acknowledged ({self._untrusted} times)",
                           stop=True)
            self._probe_due = True
            return
        self._untrusted = 0
        self._error_oks += 1
        self._error_ok_until = now + self.resend_ok_wait
        self._advance(number - 1)                  # the firmware holds everything before it
        if number == self._last_sent + 1:          # it has every line: a repeat got through
            self._in_flight.clear()
            self._replay = None
            return
        if number == self._resend_line and self._stale > 0:
            self._stale -= 1                       # caused by a line sent before the rewind
            return
        self._resend_count = self._resend_count + 1 if number == self._resend_line else 1
        self._resend_line = number
        if self._resend_count > self.max_resends:
            self._fail(f"printer keeps requesting line {number} again and again "
                       f"({self._resend_count - 1} resends), communication stuck", stop=True)
            return
        self._stale = sum(1 for n, _ in self._in_flight if n > number)
        self._rewind(number)

    def _trusted(self, number: int) -> bool:
        """A resend request is believed if it asks for a line sent and still in history, not
        far below what the firmware acknowledged (a dropped digit turns 1547 into 147)."""
        return (number <= self._last_sent + 1 and number >= self.acked - TRUST_BELOW
                and (number in self._history or number == self._last_sent + 1))

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

    def _fail(self, message: str, stop: bool = False) -> None:
        """Give up; `stop`: the firmware may be running wild, so it gets M112."""
        if self.failure is None:
            self.failure = message
            self.emergency = stop


@dataclass
class StreamStats:
    lines_sent: int
    resends: int
    checksum_errors: int
    timeouts: int
    seconds: float
    probes: int = 0


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
        self._heard = 0.0                      # monotonic time of the last temperature report
        self._replies: list[str] | None = None

    # ------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Open the port, reset the line number with `M110 N0` (re-sent after `start`), turn
        on temperature auto-reports (`M155`) and read the temperatures once."""
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
        try:
            self.command(f"M155 S{AUTOREPORT}")
            self.command(PROBE)
        except P3DError:
            self.close()
            raise

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
               cancel: threading.Event | None = None, pause: threading.Event | None = None,
               park: Callable[[], tuple[list[str], list[str]]] | None = None) -> StreamStats:
        """Send every command of `lines` and wait until the firmware holds them all.

        `on_sent(n)`: the first n commands are acknowledged. Returns early once `cancel` is
        set (lines already written are still delivered, no new ones). While `pause` is set no
        new line is written; once those in flight are done, `park()` gives the commands that
        park the head and those that bring it back on resume. Raises P3DError(SERIAL_LINK).
        """
        sender = self._sender
        before = SenderCounters(**vars(sender.counters))
        started = time.monotonic()
        base = sender.acked_queued
        source = commands(lines)
        exhausted, reported, synced = False, 0, False
        back: list[str] | None = None
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
            paused = pause is not None and pause.is_set()
            if paused and back is None and park is not None and sender.in_flight == 0:
                ahead, back = park()
                sender.queue_first(ahead)
            elif not paused and back is not None:
                sender.queue_first(back)
                back = None
            self._pump(allow_new=not paused)
            done = sender.acked_queued - base
            if on_sent is not None and done != reported:
                reported = done
                on_sent(done)
            if exhausted and sender.idle:
                if synced:
                    break
                sender.probe()          # "done" only once an M105 behind the last line is ok
                synced = True
        return self._stats(before, started)

    def idle(self) -> None:
        """Between jobs: read what the firmware says (auto-reports, ~READ_TIMEOUT); send M105
        when no temperature was heard for POLL_EVERY, so the status stays live."""
        self._pump(allow_new=False)
        if time.monotonic() - self._heard > POLL_EVERY:
            self._heard = time.monotonic()
            self.command(PROBE)

    def command(self, cmd: str, timeout: float = 10.0) -> list[str]:
        """Send one numbered command and wait for its `ok`; returns the reply lines seen."""
        self._sender.queue(strip_comment(cmd))
        self._replies = []
        deadline = time.monotonic() + timeout
        try:
            while not self._sender.idle:
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
                           probes=now.probes - before.probes,
                           seconds=time.monotonic() - started)

    # ------------------------------------------------------------ the I/O loop
    def _pump(self, allow_new: bool) -> None:
        """Write what the sender releases, then read and feed one reply line (or time out)."""
        sender = self._sender
        while (data := sender.next_to_send(time.monotonic(), allow_new)) is not None:
            self._write(data)
        self._check(sender)
        line = self._read_line()
        if line is None:
            return
        reply = sender.feed(line, time.monotonic())
        if self._replies is not None:
            self._replies.append(line)
        temps = getattr(reply, "temperatures", None)
        if temps is not None:
            self._update_temperatures(temps)
        self._check(sender)

    def _check(self, sender: LineSender) -> None:
        """Raise the sender's failure; one that leaves the firmware unruly gets M112 first."""
        if sender.failure is None:
            return
        if sender.emergency:
            sender.emergency = False
            try:
                self._write(b"M112\n")      # unnumbered: Marlin's emergency parser takes it
            except P3DError:
                pass
        raise P3DError(ErrorCode.SERIAL_LINK, sender.failure)

    def _update_temperatures(self, temps: Temperatures) -> None:
        merged = {k: dict(v) for k, v in self._temps.items()}
        for heater, values in temps.as_dict().items():
            for key, value in values.items():
                if value is not None:
                    merged[heater][key] = value
        self._temps = merged
        self._heard = time.monotonic()
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
