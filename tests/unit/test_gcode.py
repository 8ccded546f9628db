"""G-code framing and firmware reply parsing (printer/gcode.py)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from printer.gcode import (Busy, ErrorKind, FirmwareError, Ok, Other, Resend, Start,
                           TemperatureReport, Temperatures, checksum, format_line, parse_line,
                           parse_reply, parse_temperatures, strip_comment)


def test_known_marlin_checksums():
    assert checksum(b"N0 M110 N0") == 125
    assert format_line(0, "M110 N0") == b"N0 M110 N0*125\n"
    # N1 M105: 'N'^'1'^' '^'M'^'1'^'0'^'5' computed by hand: 78^49^32^77^49^48^53 = 38
    assert 78 ^ 49 ^ 32 ^ 77 ^ 49 ^ 48 ^ 53 == 38
    assert format_line(1, "M105") == b"N1 M105*38\n"


def test_checksum_covers_the_number_prefix():
    assert checksum(b"N1 G28") != checksum(b"G28")
    assert checksum(b"") == 0


def test_strip_comment():
    assert strip_comment("  G1 X10 Y10 ; move\n") == "G1 X10 Y10"
    assert strip_comment("; only a comment") == ""
    assert strip_comment("   \r\n") == ""
    assert strip_comment("M117 hi;there") == "M117 hi"


def test_parse_line_numbered():
    parsed = parse_line(b"N12 G1 X10 Y10 E0.5*87\n")
    assert parsed.number == 12
    assert parsed.command == "G1 X10 Y10 E0.5"
    assert parsed.checksum_ok is (checksum(b"N12 G1 X10 Y10 E0.5") == 87)


def test_parse_line_variants():
    assert parse_line(b"G28\r\n") == parse_line(b"G28")
    assert parse_line(b"G28").number is None and parse_line(b"G28").checksum_ok is None
    assert parse_line(b"N5 G28").checksum_ok is None          # numbered, no checksum
    assert parse_line(b"N5 G28*0").checksum_ok is False
    assert parse_line(b"N5 G28*abc").checksum_ok is False
    assert parse_line(b"N5 G28*9999").checksum_ok is False
    assert parse_line(b"NX G28").number is None               # N without digits
    flipped = bytearray(format_line(7, "G1 X1"))
    flipped[5] ^= 0x01                                          # one corrupted bit
    assert parse_line(bytes(flipped)).checksum_ok is False


_COMMANDS = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126,
                                           blacklist_characters="*;"), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(min_value=0, max_value=10**9), command=_COMMANDS)
def test_format_parse_round_trip(n, command):
    parsed = parse_line(format_line(n, command))
    assert parsed.number == n
    assert parsed.command == command
    assert parsed.checksum_ok is True


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_line_never_raises_on_garbage(raw):
    parsed = parse_line(raw)
    assert parsed.number is None or parsed.number >= 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_parse_reply_never_raises_on_garbage(text):
    parse_reply(text)


def test_parse_ok_forms():
    assert parse_reply("ok") == Ok()
    assert parse_reply("ok N12 P15 B3") == Ok(line=12, planner=15, buffer=3)
    ok = parse_reply("ok T:210.0 /210.0 B:60.0 /60.0 @:0 B@:0")
    assert isinstance(ok, Ok) and ok.line is None and ok.buffer is None
    assert ok.temperatures == Temperatures(210.0, 210.0, 60.0, 60.0)


def test_parse_resend_forms():
    assert parse_reply("Resend: 6") == Resend(6)
    assert parse_reply("Resend:6") == Resend(6)
    assert parse_reply("rs N6") == Resend(6)
    assert parse_reply("resend: N:6") == Resend(6)


def test_parse_errors():
    err = parse_reply("Error:checksum mismatch, Last Line: 5")
    assert err == FirmwareError(ErrorKind.CHECKSUM, "checksum mismatch, Last Line: 5", 5)
    assert parse_reply("Error:Line Number is not Last Line Number+1, Last Line: 9").kind \
        is ErrorKind.LINE_NUMBER
    assert parse_reply("Error:No Checksum with line number, Last Line: 9").kind \
        is ErrorKind.NO_CHECKSUM
    assert parse_reply("Error:No Line Number with checksum, Last Line: 9").kind \
        is ErrorKind.NO_LINE_NUMBER
    assert parse_reply("Error:Printer halted. kill() called!").kind is ErrorKind.FATAL
    assert parse_reply("!! MINTEMP").kind is ErrorKind.FATAL


def test_parse_busy_start_temperatures_other():
    assert parse_reply("busy: processing") == Busy("processing")
    assert parse_reply("echo:busy: paused for user") == Busy("paused for user")
    assert parse_reply("start") == Start()
    report = parse_reply(" T:25.00 /210.00 B:24.5 /60.00 @:0 B@:0 W:?")
    assert report == TemperatureReport(Temperatures(25.0, 210.0, 24.5, 60.0))
    assert isinstance(parse_reply("X:0.00 Y:0.00 Z:0.00 E:0.00 Count X:0 Y:0 Z:0"), Other)
    assert isinstance(parse_reply('echo:Unknown command: "G999"'), Other)


def test_parse_temperatures_first_hotend_wins():
    temps = parse_temperatures("T0:200.0 /205.0 T1:100.0 /0.0 B:50.0")
    assert temps == Temperatures(200.0, 205.0, 50.0, None)
    assert parse_temperatures("nothing here") is None
    assert temps.as_dict() == {"hotend": {"actual": 200.0, "target": 205.0},
                               "bed": {"actual": 50.0, "target": None}}
