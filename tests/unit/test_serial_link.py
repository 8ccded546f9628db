"""The host-side G-code sender: LineSender with no port, SerialLink over a real pty."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gotapi3dp.config import FirmwareConfig
from gotapi3dp.wire.errors import ErrorCode, P3DError
from printer.firmware import PtyFirmware
from printer.gcode import format_line, parse_line
from printer.serial_link import LineSender, SerialLink, commands


def drain(sender: LineSender, now: float = 0.0) -> list[bytes]:
    """Everything the sender writes right now."""
    out = []
    while (data := sender.next_to_send(now)) is not None:
        out.append(data)
    return out


def numbers(datas: list[bytes]) -> list[int]:
    return [parse_line(d).number for d in datas]


def feed(sender: LineSender, *lines: str, now: float = 0.0) -> None:
    for line in lines:
        sender.feed(line, now)


# ------------------------------------------------------------------ LineSender, no port

def test_one_line_per_ok():
    sender = LineSender()
    for cmd in ("G28", "G1 X1", "G1 X2"):
        sender.queue(cmd)
    assert drain(sender) == [format_line(1, "G28")]
    feed(sender, "ok")
    assert drain(sender) == [format_line(2, "G1 X1")]
    assert sender.acked == 1 and not sender.idle
    feed(sender, "ok")
    assert drain(sender) == [format_line(3, "G1 X2")]
    feed(sender, "ok")
    assert drain(sender) == [] and sender.idle and sender.acked == 3
    assert sender.counters.lines_sent == 3 and sender.counters.resends == 0


def test_stray_ok_with_nothing_in_flight_is_harmless():
    sender = LineSender()
    feed(sender, "ok")
    sender.queue("G28")
    assert numbers(drain(sender)) == [1]
    assert sender.acked == 0


def test_resend_from_history():
    sender = LineSender()
    for i in range(3):
        sender.queue(f"G1 X{i}")
    drain(sender)
    feed(sender, "ok")
    sent = drain(sender)
    assert numbers(sent) == [2]
    feed(sender, "Error:checksum mismatch, Last Line: 1", "Resend: 2", "ok")
    assert drain(sender) == sent                     # the very same bytes, same number
    assert sender.counters.resends == 1 and sender.counters.checksum_errors == 1
    feed(sender, "ok")
    assert numbers(drain(sender)) == [3]
    feed(sender, "ok")
    assert sender.idle and sender.failure is None


def test_resend_several_lines_back_replays_in_order():
    sender = LineSender()
    for i in range(5):
        sender.queue(f"G1 X{i}")
    for _ in range(4):
        drain(sender)
        feed(sender, "ok")
    drain(sender)                                    # 1..5 sent, 1..4 acknowledged
    feed(sender, "Resend: 3", "ok")
    assert numbers(drain(sender)) == [3]
    feed(sender, "ok")
    assert numbers(drain(sender)) == [4]
    feed(sender, "ok")
    assert numbers(drain(sender)) == [5]
    feed(sender, "ok")
    assert sender.idle


def test_resend_for_a_line_never_sent_is_not_trusted():
    sender = LineSender(max_resends=2)
    sender.queue("G28")
    sender.queue("G1 X1")
    drain(sender)
    feed(sender, "Resend: 7")                          # line noise? ask where the firmware is
    assert sender.failure is None
    assert [parse_line(d).command for d in drain(sender)] == ["M105"]
    feed(sender, "Resend: 7", "Resend: 7")
    assert "requested line 7, but only 2 were sent" in sender.failure and sender.emergency
    assert drain(sender, 10.0) == []


def test_resend_for_the_next_line_is_ignored():
    """The firmware holds every line: a repeat reached it. Nothing is replayed."""
    sender = LineSender()
    sender.queue("G28")
    sender.queue("G1 X1")
    drain(sender)
    feed(sender, "Error:Line Number is not Last Line Number+1, Last Line: 1", "Resend: 2", "ok")
    assert sender.failure is None
    assert numbers(drain(sender)) == [2]             # the next new line, not a replay
    assert sender.counters.resends == 0


def test_repeated_resend_of_the_same_line_is_capped():
    sender = LineSender(max_resends=3)
    sender.queue("G28")
    drain(sender)
    for attempt in range(3):
        feed(sender, "Error:checksum mismatch, Last Line: 0", "Resend: 1", "ok")
        assert numbers(drain(sender)) == [1], attempt
    feed(sender, "Error:checksum mismatch, Last Line: 0", "Resend: 1", "ok")
    assert sender.failure is not None and "again and again" in sender.failure
    assert drain(sender) == []


def test_resend_count_resets_once_the_line_gets_through():
    sender = LineSender(max_resends=2)
    for i in range(3):
        sender.queue(f"G1 X{i}")
    drain(sender)
    for _ in range(2):
        feed(sender, "Resend: 1", "ok")
        drain(sender)
    feed(sender, "ok")                                # line 1 finally acknowledged
    drain(sender)
    for _ in range(2):
        feed(sender, "Resend: 2", "ok")
        assert numbers(drain(sender)) == [2]
    assert sender.failure is None


def test_resend_without_ok_waits_then_replays():
    sender = LineSender(resend_ok_wait=0.5)
    sender.queue("G28")
    sender.queue("G1 X1")
    drain(sender, 0.0)
    feed(sender, "ok", now=0.1)
    drain(sender, 0.1)
    feed(sender, "Error:checksum mismatch, Last Line: 1", "Resend: 2", now=0.2)
    assert drain(sender, 0.3) == []                   # an `ok` may still follow the Resend
    assert numbers(drain(sender, 0.8)) == [2]         # none came: replay anyway
    feed(sender, "ok", now=0.9)                       # this ok is the replayed line's
    assert sender.idle


def test_lost_ok_is_found_by_a_numbered_m105_probe():
    sender = LineSender(ok_timeout=10.0)
    sender.queue("G28")
    sender.queue("G1 X1")
    assert numbers(drain(sender, 0.0)) == [1]
    assert drain(sender, 9.9) == []
    probe = drain(sender, 10.1)                       # not a repeat: current Marlin drops it
    assert [(p.number, p.command) for p in map(parse_line, probe)] == [(2, "M105")]
    assert sender.counters.timeouts == 1 and sender.counters.probes == 1
    feed(sender, "ok T:20.0 /0.0 B:20.0 /0.0", now=10.2)   # M105 ran: line 1 arrived
    assert sender.acked == 2 and sender.acked_queued == 1
    assert [(p.number, p.command) for p in map(parse_line, drain(sender, 10.2))] == [(3, "G1 X1")]


def test_lost_line_is_found_by_the_probe_and_resent():
    sender = LineSender(ok_timeout=1.0)
    sender.queue("G28")
    first = drain(sender, 0.0)                        # line 1 never arrives
    assert numbers(drain(sender, 1.5)) == [2]         # probe M105
    feed(sender, "Error:Line Number is not Last Line Number+1, Last Line: 0", "Resend: 1",
         "ok", now=1.6)
    assert drain(sender, 1.6) == first                # one line per ok: the replay first
    feed(sender, "ok", now=1.7)
    assert drain(sender, 1.7) == [format_line(2, "M105")]
    feed(sender, "ok T:20.0 /0.0", now=1.8)
    assert sender.idle and sender.acked_queued == 1


def test_busy_extends_the_ok_timeout():
    sender = LineSender(ok_timeout=10.0)
    sender.queue("M109 S210")
    drain(sender, 0.0)
    feed(sender, "echo:busy: processing", now=8.0)
    feed(sender, " T:100.00 /210.00 B:25.00 /0.00 @:0 B@:0 W:?", now=9.0)
    assert drain(sender, 12.0) == []                 # busy at 8 s moved the deadline to 18 s
    assert sender.counters.timeouts == 0
    assert sender.temperatures is not None and sender.temperatures.hotend == 100.0
    assert numbers(drain(sender, 18.5)) == [2]        # the probe
    assert sender.counters.timeouts == 1


def test_consecutive_timeouts_fail():
    sender = LineSender(ok_timeout=1.0, max_timeouts=3)
    sender.queue("G28")
    now = 0.0
    drain(sender, now)
    for n in range(3):
        now += 1.5
        assert numbers(drain(sender, now)) == [2 + n]   # a probe each time
    assert sender.failure is None
    assert drain(sender, now + 1.5) == [] and "no response" in sender.failure
    assert sender.emergency


def test_no_line_number_with_checksum_counts_as_ok():
    sender = LineSender()
    sender.queue("G28")
    sender.queue("G1 X1")
    drain(sender)
    feed(sender, "Error:No Line Number with checksum, Last Line: 0")
    assert sender.failure is None
    assert numbers(drain(sender)) == [2]


def test_halt_errors_are_fatal_garbled_ones_are_not():
    sender = LineSender()
    sender.queue("G28")
    drain(sender)
    feed(sender, "Error:checksum misXatch, Lzst Line: 0")
    assert sender.failure is None
    feed(sender, "Error:Printer halted. kill() called!")
    assert "halted" in sender.failure


def test_a_firmware_restart_fails():
    sender = LineSender()
    sender.queue("G28")
    drain(sender)
    feed(sender, "start")
    assert "restarted" in sender.failure


def test_advanced_ok_keeps_several_lines_in_flight():
    sender = LineSender()
    for i in range(20):
        sender.queue(f"G1 X{i}")                     # N<n> G1 X<i>*<cs>: 14-16 bytes each
    assert numbers(drain(sender)) == [1]             # one line until the firmware says more
    feed(sender, "ok N1 P15 B4")
    assert numbers(drain(sender)) == [2, 3, 4, 5]    # B=4 lines in flight
    feed(sender, "ok N2 P15 B3")
    assert numbers(drain(sender)) == []              # 3 still in flight, B=3: full
    feed(sender, "ok N4 P15 B3")
    assert numbers(drain(sender)) == [6, 7]          # N4 acknowledges 3 and 4 at once
    assert sender.acked == 4


def test_advanced_ok_respects_the_rx_byte_budget():
    sender = LineSender(rx_budget=127)
    long = "G1 X100.123 Y100.123 Z0.300 E12.34567 F1800"      # ~50 bytes framed
    for _ in range(10):
        sender.queue(long)
    drain(sender)
    feed(sender, "ok N1 P15 B8")
    sent = drain(sender)
    assert len(sent) == 2                             # a third would pass 127 bytes
    assert sum(len(d) for d in sent) <= 127


def test_advanced_ok_ignores_stale_repeats_of_a_resend_request():
    """Lines already in flight when a resend is requested draw the same request again."""
    sender = LineSender()
    for i in range(6):
        sender.queue(f"G1 X{i}")
    drain(sender)
    feed(sender, "ok N1 P15 B4")
    assert numbers(drain(sender)) == [2, 3, 4, 5]
    feed(sender, "Error:checksum mismatch, Last Line: 1", "Resend: 2", "ok N1 P15 B4")
    assert numbers(drain(sender)) == [2, 3, 4, 5]
    for _ in range(3):                                # answers to the old 3, 4, 5
        feed(sender, "Error:Line Number is not Last Line Number+1, Last Line: 1",
             "Resend: 2", "ok N1 P15 B4")
        assert drain(sender) == []
    assert sender.counters.resends == 4               # replayed once, not four times
    feed(sender, "ok N5 P15 B4")
    assert numbers(drain(sender)) == [6]
    feed(sender, "ok N6 P15 B4")
    assert sender.idle and sender.failure is None


def test_drop_pending_keeps_numbers_contiguous():
    sender = LineSender()
    sender.queue("G28")
    sender.queue("G1 X1")
    drain(sender)
    sender.drop_pending()
    assert sender.next_number == 2
    feed(sender, "ok")
    assert sender.idle
    assert sender.queue("M105") == 2


# ------------------------------------------------------------------ SerialLink over a pty

def sample_gcode(n: int = 2000) -> list[str]:
    lines = ["; generated test print", "G28 ; home", "M104 S210", "M140 S60", "M190 S60",
             "M109 S210", "G90", "M82", "G92 E0", ""]
    for i in range(n - 10):
        if i % 97 == 0:
            lines.append(f"; layer {i // 97}")
        elif i % 113 == 0:
            lines.append("")
        else:
            lines.append(f"G1 X{i % 200}.{i % 10} Y{(i * 7) % 200} E{i * 0.0123:.4f} F1800")
    return lines


@pytest.fixture
def make_firmware(tmp_path):
    started: list[PtyFirmware] = []

    def make(**overrides) -> tuple[PtyFirmware, str, Path]:
        config = FirmwareConfig(heat_rate=1e6, **overrides)
        log = tmp_path / f"fw{len(started)}.log"
        firmware = PtyFirmware(config, log)
        started.append(firmware)
        return firmware, firmware.start(), log

    yield make
    for firmware in started:
        firmware.stop()


def executed(log: Path) -> list[str]:
    """Commands the firmware executed, minus the link's own (M110, M155, M105 probes)."""
    parsed = [parse_line(line.encode()) for line in log.read_text().splitlines()]
    return [p.command for p in parsed if p.command.split(" ")[0] not in HOST_COMMANDS]


HOST_COMMANDS = ("M110", "M155", "M105")


def run_stream(port: str, lines: list[str], **kwargs) -> tuple:
    link = SerialLink(port, ok_timeout=kwargs.pop("ok_timeout", 2.0))
    link.open()
    progress: list[int] = []
    try:
        stats = link.stream(lines, on_sent=progress.append, **kwargs)
    finally:
        link.close()
    return stats, progress


def test_stream_2000_lines_exactly_once_in_order(make_firmware):
    firmware, port, log = make_firmware()
    lines = sample_gcode()
    expected = list(commands(lines))
    stats, progress = run_stream(port, lines)
    assert executed(log) == expected
    handshakes = sum("M110" in line for line in log.read_text().splitlines())
    assert 1 <= handshakes <= 2                                   # again after `start`
    assert firmware.executed_count == len(log.read_text().splitlines())
    assert stats.lines_sent == len(expected) and stats.resends == 0
    assert progress[-1] == len(expected) and progress == sorted(progress)


@pytest.mark.parametrize("advanced_ok", [False, True])
def test_stream_survives_corruption_and_lost_oks(make_firmware, advanced_ok):
    firmware, port, log = make_firmware(corrupt_rate=0.05, drop_ok_rate=0.02, seed=7,
                                        advanced_ok=advanced_ok)
    lines = sample_gcode()
    expected = list(commands(lines))
    stats, progress = run_stream(port, lines, ok_timeout=0.1)
    assert executed(log) == expected
    assert stats.resends > 0 and stats.checksum_errors > 0
    assert progress[-1] == len(expected)
    assert firmware.firmware is not None and firmware.firmware.overflows == 0


def test_cancel_stops_early(make_firmware):
    firmware, port, log = make_firmware()
    lines = sample_gcode()
    expected = list(commands(lines))
    cancel = threading.Event()

    def on_sent(count: int) -> None:
        if count >= 300:
            cancel.set()

    link = SerialLink(port)
    link.open()
    stats = link.stream(lines, on_sent=on_sent, cancel=cancel)
    ran = executed(log)
    assert 300 <= len(ran) < 320
    assert ran == expected[:len(ran)]
    assert stats.lines_sent == len(ran)
    reply = link.command("M105")                       # the link is still in step afterwards
    assert reply[-1].startswith("ok T:")
    link.close()


def test_pause_holds_new_lines(make_firmware):
    firmware, port, log = make_firmware()
    lines = sample_gcode(400)
    pause = threading.Event()
    during: list[int] = []

    def on_sent(count: int) -> None:
        if count == 100 and not pause.is_set():
            pause.set()
            threading.Timer(0.3, pause.clear).start()
        elif pause.is_set():
            during.append(count)

    link = SerialLink(port)
    link.open()
    started = time.monotonic()
    link.stream(lines, on_sent=on_sent, pause=pause)
    link.close()
    assert time.monotonic() - started >= 0.3
    assert all(count <= 101 for count in during)       # at most the line in flight
    assert executed(log) == list(commands(lines))


def test_command_returns_replies_and_temperatures(make_firmware):
    firmware, port, log = make_firmware()
    seen: list[dict] = []
    link = SerialLink(port, on_temperature=seen.append)
    link.open()
    assert link.command("M104 S200") == ["ok"]
    time.sleep(0.05)
    reply = link.command("M105")
    assert reply == ["ok T:200.00 /200.00 B:25.00 /0.00 @:0 B@:0"]
    assert link.temperatures() == {"hotend": {"actual": 200.0, "target": 200.0},
                                   "bed": {"actual": 25.0, "target": 0.0}}
    assert seen[-1] == link.temperatures()
    m114 = link.command("M114")
    assert m114[0].startswith("X:0.00 Y:0.00") and m114[-1] == "ok"
    link.close()


def test_printer_halt_fails_the_stream(make_firmware):
    firmware, port, log = make_firmware()
    link = SerialLink(port)
    link.open()
    with pytest.raises(P3DError) as err:
        link.stream(["G28", "M112", "G1 X10", "G1 X20"])
    assert err.value.code == ErrorCode.SERIAL_LINK and "halted" in err.value.message
    link.close()


def test_open_fails_cleanly():
    with pytest.raises(P3DError) as err:
        SerialLink("/dev/does-not-exist-gotapi").open()
    assert err.value.code == ErrorCode.SERIAL_LINK


def test_open_fails_when_nothing_answers(tmp_path):
    firmware = PtyFirmware(FirmwareConfig(drop_ok_rate=1.0), tmp_path / "fw.log")
    port = firmware.start()
    try:
        with pytest.raises(P3DError) as err:
            SerialLink(port, ok_timeout=0.1).open()
        assert "M110" in err.value.message
    finally:
        firmware.stop()


# ------------------------------------------------------------------ sender + firmware, simulated time

def simulate(config: FirmwareConfig, lines: list[str], ok_timeout: float = 0.5,
             max_steps: int = 400_000) -> tuple[LineSender, list[str]]:
    """LineSender against VirtualFirmware in one thread, time simulated: no port, no sleep."""
    from printer.firmware import VirtualFirmware
    log: list[str] = []
    firmware = VirtualFirmware(config, on_execute=log.append)
    sender = LineSender(ok_timeout=ok_timeout)
    for command in commands(lines):
        sender.queue(command)
    now, rx, synced = 0.0, bytearray(), False
    for _ in range(max_steps):
        out = b"".join(iter(lambda: sender.next_to_send(now), None))
        rx += firmware.feed(out, now) + firmware.tick(now)
        while (newline := rx.find(b"\n")) >= 0:
            line = rx[:newline].decode("ascii", "replace").strip()
            del rx[:newline + 1]
            if line:
                sender.feed(line, now)
        if sender.failure is not None:
            break
        if sender.idle:
            if synced:
                break
            sender.probe()
            synced = True
        now += 0.001 if out else 0.01
    else:
        raise AssertionError("the simulation did not end")
    return sender, [parse_line(raw.encode()).command for raw in log]


@pytest.mark.parametrize("advanced_ok", [False, True])
@pytest.mark.parametrize("duplicate_ok", [False, True])
def test_noise_both_ways_and_lost_oks_execute_the_file_exactly(advanced_ok, duplicate_ok):
    config = FirmwareConfig(byte_error_rate=0.01, reply_error_rate=0.01, drop_ok_rate=0.005,
                            advanced_ok=advanced_ok, duplicate_ok=duplicate_ok, seed=11,
                            heat_rate=1e6)
    lines = sample_gcode(3000)
    sender, ran = simulate(config, lines)
    assert sender.failure is None
    assert [c for c in ran if c != "M105"] == list(commands(lines))
    assert sender.counters.resends > 0 and sender.counters.checksum_errors > 0
    assert sender.counters.probes > 0 and sender.acked_queued == len(list(commands(lines)))


def test_resend_storm_ends_in_a_clean_failure():
    config = FirmwareConfig(corrupt_rate=1.0)              # every line arrives corrupted
    sender, ran = simulate(config, sample_gcode(50))
    assert "again and again" in sender.failure and sender.emergency
    assert ran == []


def test_silent_firmware_ends_in_a_clean_failure():
    config = FirmwareConfig(drop_ok_rate=1.0)
    sender, ran = simulate(config, sample_gcode(50), ok_timeout=0.2)
    assert "no response" in sender.failure


def test_stream_over_a_tcp_socket_url(tmp_path):
    from printer.firmware import TcpFirmware
    log = tmp_path / "tcp.log"
    firmware = TcpFirmware(FirmwareConfig(heat_rate=1e6, advanced_ok=True), log)
    url = firmware.start()
    try:
        lines = sample_gcode(500)
        stats, progress = run_stream(url, lines)
        assert executed(log) == list(commands(lines)) and progress[-1] == stats.lines_sent
    finally:
        firmware.stop()


def test_pause_parks_and_resume_returns(make_firmware):
    firmware, port, log = make_firmware()
    lines = sample_gcode(400)
    pause = threading.Event()
    parked: list[int] = []

    def on_sent(count: int) -> None:
        if count == 100 and not pause.is_set() and not parked:
            pause.set()

    def park() -> tuple[list[str], list[str]]:
        parked.append(1)
        threading.Timer(0.2, pause.clear).start()
        return ["G1 Z50 F600", "G1 X0 Y0"], ["G1 X10 Y10", "G1 Z0.2"]

    link = SerialLink(port)
    link.open()
    link.stream(lines, on_sent=on_sent, pause=pause, park=park)
    link.close()
    ran = executed(log)
    expected = list(commands(lines))
    at = ran.index("G1 Z50 F600")
    assert parked == [1] and 100 <= at <= 101
    assert ran[at:at + 4] == ["G1 Z50 F600", "G1 X0 Y0", "G1 X10 Y10", "G1 Z0.2"]
    assert ran[:at] + ran[at + 4:] == expected
