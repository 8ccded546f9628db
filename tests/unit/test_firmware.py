"""The virtual Marlin-like firmware core (printer/firmware.py), bytes in and bytes out."""
from __future__ import annotations

import time

import pytest
import serial

from gotapi3dp.config import FirmwareConfig
from printer.firmware import PtyFirmware, VirtualFirmware
from printer.gcode import format_line


def make(**overrides) -> tuple[VirtualFirmware, list[str]]:
    log: list[str] = []
    return VirtualFirmware(FirmwareConfig(**overrides), on_execute=log.append), log


def send(fw: VirtualFirmware, n: int, command: str, now: float = 0.0) -> list[str]:
    return fw.feed(format_line(n, command), now).decode().splitlines()


def test_numbered_lines_are_executed_logged_and_acknowledged():
    fw, log = make()
    assert send(fw, 1, "G28") == ["ok"]
    assert send(fw, 2, "G1 X10 Y10 E0.5") == ["ok"]
    assert log == ["N1 G28*18", format_line(2, "G1 X10 Y10 E0.5").decode().strip()]
    assert fw.last_n == 2 and fw.executed == 2


def test_checksum_mismatch_gives_error_and_resend():
    fw, log = make()
    send(fw, 1, "G28")
    bad = format_line(2, "G1 X10").replace(b"X10", b"X11")
    assert fw.feed(bad, 0.0).decode().splitlines() == [
        "Error:checksum mismatch, Last Line: 1", "Resend: 2", "ok"]
    assert len(log) == 1 and fw.last_n == 1
    assert send(fw, 2, "G1 X10") == ["ok"]


def test_missing_checksum_and_wrong_number():
    fw, log = make()
    assert fw.feed(b"N1 G28\n", 0.0).decode().splitlines() == [
        "Error:No Checksum with line number, Last Line: 0", "Resend: 1", "ok"]
    assert send(fw, 3, "G28") == [
        "Error:Line Number is not Last Line Number+1, Last Line: 0", "Resend: 1", "ok"]
    assert log == []


def test_error_drains_the_rx_buffer():
    fw, log = make()
    good2, good3 = format_line(2, "G1 X2"), format_line(3, "G1 X3")
    out = fw.feed(b"N1 G28*99\n" + good2 + good3[:6], 0.0).decode().splitlines()
    assert out == ["Error:checksum mismatch, Last Line: 0", "Resend: 1", "ok"]
    assert fw.feed(good3[6:], 0.0) == b""               # the rest of a drained line is dropped
    assert log == []


def test_duplicate_of_last_line_is_dropped_silently_like_current_marlin():
    fw, log = make()
    line = format_line(1, "G1 X5")
    assert fw.feed(line, 0.0) == b"ok\n"
    assert fw.feed(line, 0.0) == b""                    # a repeat: no error, no resend, no ok
    assert send(fw, 2, "G1 X6") == ["ok"]
    assert fw.feed(line, 0.0) == b""                    # last_N - 1 is tolerated as well
    assert log == [line.decode().strip(), format_line(2, "G1 X6").decode().strip()]


def test_duplicate_answered_with_ok_like_older_marlin():
    fw, log = make(duplicate_ok=True)
    line = format_line(1, "G1 X5")
    assert fw.feed(line, 0.0) == b"ok\n"
    assert fw.feed(line, 0.0) == b"ok\n"
    assert log == [line.decode().strip()]


def test_byte_noise_in_both_directions_is_seeded_and_never_adds_newlines():
    fw, log = make(byte_error_rate=0.2, seed=3)
    out = [fw.feed(format_line(n, "G1 X10.000 Y20.000"), 0.0) for n in range(1, 40)]
    assert any(line.startswith(b"Error:") for o in out for line in o.splitlines())
    fw, log = make(reply_error_rate=0.3, seed=3)
    replies = b"".join(fw.feed(format_line(n, "M105"), 0.0) for n in range(1, 40))
    assert len(log) == 39                               # every line arrived intact
    clean = b"".join(b"ok " + fw._temperature_line().encode() + b"\n" for _ in range(39))
    assert replies != clean and replies.count(b"\n") <= 39


def test_reboot_fault_resets_the_board_once():
    fw, log = make(reboot_after=2)
    assert send(fw, 1, "M104 S200") == ["ok"]
    assert send(fw, 2, "G28") == ["start"]               # executed, then the board reset
    assert fw.last_n == 0 and fw.heaters["T"].target == 0.0
    assert send(fw, 1, "G28") == ["ok"] and send(fw, 2, "G28") == ["ok"]


def test_m110_sets_the_line_number():
    fw, log = make()
    assert fw.feed(b"N0 M110 N0*125\n", 0.0) == b"ok\n"
    send(fw, 1, "G28")
    assert send(fw, 7, "M110 N41") == ["ok"]
    assert fw.last_n == 41
    assert send(fw, 42, "G28") == ["ok"]
    assert fw.feed(b"M110 N100\n", 0.0) == b"ok\n"              # unnumbered form
    assert send(fw, 101, "G28") == ["ok"]


def test_m110_number_holds_while_commands_wait_in_the_buffer():
    fw, log = make(heat_rate=1.0)
    send(fw, 1, "M109 S100")                                     # blocks execution
    send(fw, 2, "M110 N50")
    send(fw, 51, "G1 X1")
    assert fw.last_n == 51                                       # not reset when M110 runs


def test_unnumbered_lines_run_and_stray_checksums_are_refused():
    fw, log = make()
    assert fw.feed(b"G28\n", 0.0) == b"ok\n"
    assert fw.feed(b"G28*18\n", 0.0).decode().strip() == \
        "Error:No Line Number with checksum, Last Line: 0"
    assert log == ["G28"]


def test_advanced_ok_reports_line_and_free_buffer():
    fw, _ = make(advanced_ok=True, bufsize=4)
    assert send(fw, 1, "G28") == ["ok N1 P16 B4"]
    bad = format_line(2, "G28").replace(b"G28", b"G29")
    assert fw.feed(bad, 0.0).decode().splitlines()[-1] == "ok N1 P16 B4"


def test_m109_blocks_until_temperature_reached_in_simulated_time():
    fw, log = make(heat_rate=50.0)
    fw.keepalive = 2.0
    assert send(fw, 1, "M109 S210", now=0.0) == []       # no ok while heating
    assert send(fw, 2, "M105", now=0.5) == []            # queued behind the wait
    replies: list[str] = []
    now = 0.5
    while now < 3.5:                                     # 25 -> 210 at 50 °C/s needs 3.7 s
        now += 0.25
        replies += fw.tick(now).decode().splitlines()
    assert not any(r.startswith("ok") for r in replies)
    assert "echo:busy: processing" in replies
    assert any(r.startswith("T:") and r.endswith("W:?") for r in replies)
    done = fw.tick(4.0).decode().splitlines()
    assert done[0] == "ok"
    assert done[1].startswith("ok T:") and "/210.00" in done[1]
    assert fw.heaters["T"].actual >= 209.0
    assert len(log) == 2


def test_m190_and_m140_heat_the_bed():
    fw, _ = make(heat_rate=100.0)
    assert send(fw, 1, "M140 S60") == ["ok"]
    assert send(fw, 2, "M190 S60", now=0.1) == []
    assert fw.tick(0.5).decode().splitlines()[-1] == "ok"


def test_m105_m114_m155_and_unknown_commands():
    fw, _ = make(heat_rate=1000.0)
    send(fw, 1, "M104 S200")
    assert send(fw, 2, "M105", now=1.0) == ["ok T:200.00 /200.00 B:25.00 /0.00 @:0 B@:0"]
    send(fw, 3, "G1 X10 Y20 Z0.3 E1.5")
    assert send(fw, 4, "M114") == ["X:10.00 Y:20.00 Z:0.30 E:1.50 Count X:0 Y:0 Z:0", "ok"]
    assert send(fw, 5, "G999") == ['echo:Unknown command: "G999"', "ok"]
    assert send(fw, 6, "M155 S1", now=1.0) == ["ok"]
    assert fw.tick(1.5) == b""
    assert fw.tick(2.1).decode().startswith("T:200.00 /200.00")


def test_m112_halts_the_printer():
    fw, log = make()
    assert send(fw, 1, "M112") == ["Error:Printer halted. kill() called!"]
    assert send(fw, 2, "G28") == []
    assert fw.halted and log == [format_line(1, "M112").decode().strip()]
    fw.reset()                                           # what a reset (port re-open) does
    assert send(fw, 1, "G28") == ["ok"]


def test_fault_injection_is_seeded():
    fw, log = make(corrupt_rate=1.0)
    assert send(fw, 1, "G28")[0].startswith("Error:checksum mismatch")
    fw, log = make(drop_ok_rate=1.0)
    assert send(fw, 1, "G28") == [] and log == ["N1 G28*18"]

    def run(seed: int) -> list[str]:
        fw, _ = make(corrupt_rate=0.3, seed=seed)
        return [fw.feed(format_line(1, "G28"), 0.0).decode() for _ in range(20)]

    assert run(1) == run(1) and run(1) != run(2)


def test_motion_takes_simulated_time_when_enabled():
    fw, _ = make(motion=True)
    assert send(fw, 1, "G1 X100 F6000", now=0.0) == []   # 100 mm at 100 mm/s
    assert fw.tick(0.5) == b""
    assert fw.tick(1.01) == b"ok\n"
    fw, _ = make()
    assert send(fw, 1, "G1 X100 F6000") == ["ok"]        # default: no motion delays


def test_rx_buffer_overflows_while_blocked():
    fw, _ = make(heat_rate=1.0, bufsize=4, rx_buffer=128)
    send(fw, 1, "M109 S210")
    data = b"".join(format_line(n, "G1 X1.000 Y1.000") for n in range(2, 20))
    fw.feed(data, 0.1)
    assert fw.overflows > 0


def test_pty_firmware_serves_a_serial_port(tmp_path):
    log = tmp_path / "fw.log"
    firmware = PtyFirmware(FirmwareConfig(), log)
    port = firmware.start()
    try:
        with serial.Serial(port, 115200, timeout=1.0) as link:
            assert link.readline() == b"start\n"        # greeted on open, like a reset
            link.write(format_line(1, "G28"))
            assert link.readline() == b"ok\n"
        assert firmware.executed_count == 1
        assert log.read_text() == "N1 G28*18\n"
    finally:
        firmware.stop()


def test_pty_firmware_baud_limit_paces_output(tmp_path):
    firmware = PtyFirmware(FirmwareConfig(baud=20000), tmp_path / "fw.log")
    port = firmware.start()
    try:
        with serial.Serial(port, 115200, timeout=2.0) as link:
            link.readline()
            started = time.monotonic()
            for n in range(1, 41):
                link.write(format_line(n, "M105"))
                link.readline()
            elapsed = time.monotonic() - started
        # 40 replies of 41 bytes at 2000 bytes/s (20000 baud): 0.82 s
        assert elapsed > 0.7
    finally:
        firmware.stop()


def test_tcp_firmware_serves_pyserial_socket_urls(tmp_path):
    from printer.firmware import TcpFirmware
    log = tmp_path / "fw.log"
    firmware = TcpFirmware(FirmwareConfig(), log)
    url = firmware.start()
    try:
        assert url.startswith("socket://127.0.0.1:")
        for _ in range(2):                                # each connection is a reset
            with serial.serial_for_url(url, timeout=1.0) as link:
                link.write(format_line(1, "G28"))         # `start` may have been flushed
                assert link.readline() in (b"start\n", b"ok\n")
                assert link.readline() in (b"ok\n", b"")
        assert log.read_text() == "N1 G28*18\n" * 2
    finally:
        firmware.stop()


def test_reopening_the_port_resets_a_halted_board(tmp_path):
    firmware = PtyFirmware(FirmwareConfig(), tmp_path / "fw.log")
    port = firmware.start()
    try:
        with serial.Serial(port, 115200, timeout=1.0) as link:
            link.readline()
            link.write(format_line(1, "M112"))
            assert link.readline().startswith(b"Error:Printer halted")
        with serial.Serial(port, 115200, timeout=1.0) as link:
            assert link.readline() == b"start\n"
            link.write(format_line(1, "G28"))
            assert link.readline() == b"ok\n"
    finally:
        firmware.stop()


def test_command_time_delays_the_ok_and_holds_a_buffer_slot():
    fw, log = make(command_time=0.01, bufsize=2, advanced_ok=True)
    assert send(fw, 1, "G1 X1", now=0.0) == []              # running: no ok yet
    assert fw.wake_at() == 0.01
    assert send(fw, 2, "G1 X2", now=0.001) == []            # takes the last free slot
    assert fw.feed(format_line(3, "G1 X3"), 0.002) == b""    # buffer full: waits in RX
    assert fw.tick(0.005) == b""
    assert fw.tick(0.01) == b"ok N1 P16 B1\n"               # N3 taken in, N2 starts running
    assert fw.tick(0.02) == b"ok N2 P16 B1\n" and fw.tick(0.03) == b"ok N3 P16 B2\n"
    assert len(log) == 3 and fw.wake_at() is None


def test_motion_time_is_at_least_the_command_time():
    fw, _ = make(motion=True, command_time=0.5)
    send(fw, 1, "G1 X1 F6000", now=0.0)                      # 10 ms of motion
    assert fw.tick(0.4) == b"" and fw.tick(0.5) == b"ok\n"


def test_wire_delivers_one_byte_per_ten_bits():
    from printer.firmware import _Wire
    wire = _Wire(10000)                                      # 1 ms a byte
    wire.put(b"ab\n", 1.0)
    assert wire.arrived(1.0) == 0 and wire.arrived(1.0015) == 1
    assert wire.next_line_at() == pytest.approx(1.003) and wire.arrived(1.0031) == 3
    wire.put(b"c\n", 1.001)                                  # queued behind the first line
    assert wire.arrival(4) == pytest.approx(1.005)
    instant = _Wire(0)                                       # baud 0: no delay
    instant.put(b"x\n", 5.0)
    assert instant.arrived(5.0) == 2


def test_pty_firmware_command_time_and_baud_make_one_line_per_ok_slow(tmp_path):
    firmware = PtyFirmware(FirmwareConfig(baud=115200, command_time=0.005), tmp_path / "fw.log")
    port = firmware.start()
    try:
        with serial.Serial(port, 115200, timeout=2.0) as link:
            link.readline()
            started = time.monotonic()
            for n in range(1, 21):
                link.write(format_line(n, "G1 X1.000 Y1.000"))
                assert link.readline() == b"ok\n"
            elapsed = time.monotonic() - started
        # each: the line in at 11520 bytes/s, 5 ms running, 3 bytes of `ok` out
        per_line = (len(format_line(20, "G1 X1.000 Y1.000")) + 3) / 11520 + 0.005
        assert 20 * per_line < elapsed < 20 * per_line + 1.0
    finally:
        firmware.stop()
