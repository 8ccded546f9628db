"""Slicer profiles: a TOML file of `SliceProfile` settings, `--set key=value` overrides, checks.

A profile file holds top-level keys named as the `SliceProfile` fields (docs/SLICER.md lists
them with their defaults); keys may also sit under a `[slicer]` table. Every error names the
file or the `--set` item and the key, and says what was expected.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from gotapi3dp.config import ConfigError, SliceProfile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CHOICES = {"infill_pattern": ("rectilinear", "grid"), "e_mode": ("absolute", "relative")}
POSITIVE = ("layer_height", "first_layer_height", "nozzle_diameter", "line_width",
            "first_layer_line_width", "filament_diameter", "filament_density", "print_speed",
            "travel_speed", "first_layer_speed", "retract_speed", "bed_x", "bed_y", "bed_z")
NOT_NEGATIVE = ("perimeters", "top_layers", "bottom_layers", "skirt_loops", "skirt_distance",
                "retract_length", "z_hop", "fan_speed", "fan_first_layer", "workers",
                "hotend_temp", "bed_temp", "first_layer_hotend_temp", "first_layer_bed_temp")


class ProfileError(ConfigError):
    """A profile file, `--set` item or value that cannot be used; the message says why."""


def fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(SliceProfile)}


def load_profile(path: str | os.PathLike[str] | None = None, overrides: list[str] = (),
                 base: SliceProfile | None = None) -> SliceProfile:
    """`base` (or the defaults), then the TOML file at `path`, then `KEY=VALUE` overrides."""
    profile = dataclasses.replace(base) if base is not None else SliceProfile()
    if path:
        apply(profile, read_toml(Path(path)), f"{path}: ")
    for item in overrides:
        key, value = parse_override(item)
        apply(profile, {key: value}, f"--set {item}: ")
    validate(profile)
    return profile


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {path} is not valid TOML: {exc}") from None
    table = data.pop("slicer", {})
    if not isinstance(table, dict):
        raise ProfileError(f"{path}: [slicer] must be a table")
    return {**data, **table}


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` with value read as a TOML value (1, 0.2, true, "x") or else a bare word."""
    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key or not text.strip():
        raise ProfileError(f"--set {item}: expected KEY=VALUE with KEY one of the slicer "
                           f"settings ({', '.join(fields())})")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return key, value


def apply(profile: SliceProfile, data: dict[str, Any], where: str) -> None:
    """Set each key of `data` on `profile`, checking names and types."""
    known = fields()
    for raw, value in data.items():
        key = raw.replace("-", "_")
        if key not in known:
            raise ProfileError(f"{where}unknown slicer setting {raw!r}; known settings: "
                               f"{', '.join(known)}")
        setattr(profile, key, _coerce(getattr(SliceProfile(), key), value, f"{where}{key}"))


def _coerce(default: Any, value: Any, where: str) -> Any:
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str and isinstance(value, str):
        return value
    raise ProfileError(f"{where} must be {_describe(kind)}, not {value!r}")


def _describe(kind: type) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number",
            str: "a string"}.get(kind, kind.__name__)


def validate(profile: SliceProfile) -> None:
    """Refuse values no printer could use; the message names the setting."""
    for key in POSITIVE:
        value = getattr(profile, key)
        if not value > 0:
            raise ProfileError(f"{key} must be greater than 0 (got {value})")
    for key in NOT_NEGATIVE:
        value = getattr(profile, key)
        if not value >= 0:
            raise ProfileError(f"{key} must not be negative (got {value})")
    for key, choices in CHOICES.items():
        if getattr(profile, key) not in choices:
            raise ProfileError(f"{key} must be one of {', '.join(choices)} "
                               f"(got {getattr(profile, key)!r})")
    if not 0 <= profile.infill_density <= 1:
        raise ProfileError(f"infill_density is a fraction from 0 to 1 (got "
                           f"{profile.infill_density}; 20 % is 0.2)")
    for key in ("layer_height", "first_layer_height"):
        if getattr(profile, key) > profile.nozzle_diameter:
            raise ProfileError(f"{key} {getattr(profile, key)} is more than the nozzle "
                               f"diameter {profile.nozzle_diameter}")
    if profile.fan_speed > 100:
        raise ProfileError(f"fan_speed is a percentage up to 100 (got {profile.fan_speed})")
