"""Configuration of the four processes: embedded defaults, an optional TOML file, explicit data dir.

Every address lives here so a plug-in host or a printer can run on another machine without
code changes. Each process gets its own sub-directory of the data dir.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class GotapiConfig:
    host: str = "127.0.0.1"
    port: int = 4035
    bus_endpoint: str = "tcp://127.0.0.1:4040"
    tap_endpoint: str = "tcp://127.0.0.1:4041"  # PUB copy of every bus frame, for `bus tap`
    # "curve": only plug-in hosts whose public key is in <data-dir>/gotapi/bus/clients/ may
    # connect (gotapi3dp/buskeys.py); "none": any peer may (debugging only).
    bus_security: str = "curve"
    request_timeout: float = 60.0        # seconds a plug-in may take (Device Connect: 60 s)
    discovery_timeout: float = 8.0       # per plug-in, during serviceDiscovery
    worker: str = "gevent"               # gunicorn worker: "gevent" (greenlets) or "gthread"
    connections: int = 1000              # gevent: open connections, WebSockets included
    threads: int = 16                    # gthread: request threads (each WebSocket holds one)
    # Empty: a browser Origin must be a loopback web origin (http(s)://localhost, 127.0.0.1
    # or [::1], any port), so no web site can drive the printer; a native app naming
    # itself with X-GotAPI-Origin alone may use any single name but "null". Non-empty:
    # the exact list for both headers ("null" only if listed). gotapi_server/request_checks.py
    allowed_origins: list[str] = field(default_factory=list)
    allow_non_loopback: bool = False     # refuse to bind elsewhere unless told explicitly
    token_lifetime: int = 180 * 24 * 3600
    max_body_bytes: int = 1 << 20


@dataclass
class PrinterEntry:
    """A printer the 3D printer plug-in serves (one GotAPI service each)."""

    service_id: str = "printer-1"
    name: str = "Virtual Printer"
    url: str = "http://127.0.0.1:4060"
    api_key: str = ""
    printer_id: str = ""                 # the printer's id at the contents server


@dataclass
class PluginHostConfig:
    bus_endpoint: str = "tcp://127.0.0.1:4040"
    host_id: str = "plugin-host-1"
    bus_security: str = "curve"          # as [gotapi] bus_security
    # The bus server's CURVE public key (40 Z85 characters); empty: read it from
    # <data-dir>/gotapi/bus/server.key and put this host's key in that server's allow-list.
    bus_server_key: str = ""
    contents_url: str = "http://127.0.0.1:4050"
    http_timeout: float = 20.0
    connection_ttl: int = 600
    printers: list[PrinterEntry] = field(default_factory=list)


@dataclass
class ContentsConfig:
    host: str = "127.0.0.1"
    port: int = 4050
    public_url: str = ""                 # how printers reach us; default http://host:port
    issuer: str = "gotapi-3dp-contents"
    token_ttl: int = 600
    download_ttl: int = 600
    nonce_ttl: int = 60
    max_upload_bytes: int = 256 << 20
    allow_non_loopback: bool = False

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


@dataclass
class FirmwareConfig:
    """The virtual Marlin-like firmware the printer starts on a pseudo-terminal."""

    bufsize: int = 4
    rx_buffer: int = 128
    advanced_ok: bool = False
    baud: int = 0                        # simulated baud, both ways, 10 bits a byte (0 = instant)
    command_time: float = 0.0            # seconds each command runs before its `ok` (0 = none)
    motion: bool = False                 # moves take their time from feed rates (at least
                                         # command_time)
    heat_rate: float = 50.0              # degrees per second toward a target
    corrupt_rate: float = 0.0            # fault injection: probability a line arrives corrupted
    drop_ok_rate: float = 0.0            # fault injection: probability an `ok` is lost
    seed: int = 0
    duplicate_ok: bool = False           # answer a repeat of the last line with `ok` (old
                                         # Marlin); current Marlin drops it silently
    byte_error_rate: float = 0.0         # fault injection: per byte host->firmware, corrupted
                                         # or dropped (half each)
    reply_error_rate: float = 0.0        # the same, firmware->host
    reboot_after: int = 0                # fault injection: reboot after N executed lines (0 = never)


DEFAULT_START_GCODE = """M140 S{first_layer_bed_temp:.0f}
M104 S{first_layer_hotend_temp:.0f}
M190 S{first_layer_bed_temp:.0f}
M109 S{first_layer_hotend_temp:.0f}
G28
G90
M107"""
DEFAULT_END_GCODE = """M104 S0
M140 S0
M107
G91
G1 Z10 F600
G90
M84"""


@dataclass
class SliceProfile:
    """Print settings of the slicer (millimetres, mm/s, degrees C); see docs/SLICER.md.

    Loaded from TOML by `printer.profile.load_profile`, or `[printer.slicer]` in the config.
    """

    layer_height: float = 0.2
    first_layer_height: float = 0.2
    nozzle_diameter: float = 0.4
    line_width: float = 0.45
    first_layer_line_width: float = 0.45
    filament_diameter: float = 1.75
    filament_density: float = 1.24       # g/cm^3 (PLA), for the filament weight
    perimeters: int = 2
    outer_wall_first: bool = False       # False: inner walls first, outer wall last
    top_layers: int = 4                  # solid layers under a top surface
    bottom_layers: int = 4               # solid layers over a bottom surface
    infill_density: float = 0.2          # 0..1
    infill_pattern: str = "rectilinear"  # "rectilinear" (alternating angle) or "grid"
    infill_angle: float = 45.0
    solid_infill_below_area: float = 70.0  # mm^2: smaller sparse pieces are printed solid
    skirt_loops: int = 1                 # 0: no skirt
    skirt_distance: float = 3.0          # gap between the skirt and the first layer
    hotend_temp: float = 210.0
    bed_temp: float = 60.0
    first_layer_hotend_temp: float = 215.0
    first_layer_bed_temp: float = 60.0
    fan_speed: float = 100.0             # percent, from fan_first_layer on
    fan_first_layer: int = 1             # index of the first layer with the fan on
    print_speed: float = 50.0            # mm/s
    travel_speed: float = 150.0
    first_layer_speed: float = 25.0
    retract_length: float = 0.8
    retract_speed: float = 35.0
    z_hop: float = 0.2                   # lift during retracted travels (0: none)
    e_mode: str = "absolute"             # "absolute" (M82, G92 E0 each layer) or "relative" (M83)
    start_gcode: str = DEFAULT_START_GCODE   # {setting} placeholders are filled in
    end_gcode: str = DEFAULT_END_GCODE
    bed_x: float = 220.0
    bed_y: float = 220.0
    bed_z: float = 250.0
    workers: int = 0                     # planner processes; 0: one per core, at most 2


@dataclass
class PrinterConfig:
    host: str = "127.0.0.1"
    port: int = 4060
    printer_id: str = "printer-1"
    name: str = "Virtual Printer"
    serial_port: str = ""                # empty: start the virtual firmware on a pty
    baud: int = 115200
    ok_timeout: float = 10.0             # seconds without `ok` before re-sending
    max_resends: int = 10                # same line requested again and again -> fail
    http_timeout: float = 20.0
    allow_non_loopback: bool = False
    firmware: FirmwareConfig = field(default_factory=FirmwareConfig)
    slicer: SliceProfile = field(default_factory=SliceProfile)


@dataclass
class Config:
    data_dir: Path = field(default_factory=lambda: default_data_dir())
    gotapi: GotapiConfig = field(default_factory=GotapiConfig)
    plugin_host: PluginHostConfig = field(default_factory=PluginHostConfig)
    contents: ContentsConfig = field(default_factory=ContentsConfig)
    printer: PrinterConfig = field(default_factory=PrinterConfig)

    def dir_for(self, process: str) -> Path:
        """Per-process data directory, created private (0700)."""
        path = Path(self.data_dir) / process
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "gotapi-3dp"


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the key."""


def _merge(obj: Any, data: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise ConfigError(f"unknown setting {where}{key}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key} must be a table")
            _merge(current, value, f"{where}{key}.")
        elif name == "printers":
            setattr(obj, name, [_merge(PrinterEntry(), p, f"{where}printers.") for p in value])
        else:
            setattr(obj, name, _coerce(current, value, f"{where}{key}"))
    return obj


def _coerce(current: Any, value: Any, where: str) -> Any:
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if isinstance(current, (int, float)) and not isinstance(value, bool) and isinstance(value, (int, float)):
        return type(current)(value)
    if isinstance(current, (str, Path)) and isinstance(value, str):
        return type(current)(value)
    if isinstance(current, list) and isinstance(value, list):
        return value
    raise ConfigError(f"{where} has the wrong type ({type(value).__name__})")


def load_config(path: str | os.PathLike[str] | None = None,
                data_dir: str | os.PathLike[str] | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file, then explicit overrides (nested dicts), then data_dir."""
    config = Config()
    if path:
        try:
            with open(path, "rb") as fh:
                _merge(config, tomllib.load(fh), "")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    if overrides:
        _merge(config, overrides, "")
    if data_dir is not None:
        config.data_dir = Path(data_dir)
    config.data_dir = Path(config.data_dir).expanduser().resolve()
    return config


def check_bind_host(host: str, allow_non_loopback: bool, what: str) -> None:
    """Refuse to listen beyond loopback unless the operator said so explicitly."""
    if host not in LOOPBACK_HOSTS and not allow_non_loopback:
        raise ConfigError(f"{what} refuses to bind {host!r}: not a loopback address "
                          f"(set allow_non_loopback = true to expose it)")


def endpoint_host(endpoint: str) -> str:
    """Host part of a tcp:// or http:// address."""
    return urlsplit(endpoint).hostname or ""
