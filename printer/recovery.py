"""Where a print stands, from its G-code: machine state after N commands, and the lines that
park a paused print or bring a crashed one back at a layer (Marlin power-loss recovery style).

Nothing here does I/O on a port; `scan` reads a G-code file. Command indices count commands
(comments and blank lines dropped), from 0, exactly as `serial_link.commands` yields them.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .gcode import strip_comment

_WORD = re.compile(r"([A-Z])\s*([-+]?(?:\d+\.?\d*|\.\d+))")
PARK_LIFT = 5.0             # mm the nozzle rises when a print pauses
RESUME_LIFT = 2.0           # mm it rises before homing X/Y on a crash resume
Z_FEED = 600.0              # mm/min for Z moves of our own
XY_FEED = 6000.0            # mm/min for parking travel


@dataclass
class MachineState:
    """What the G-code has told the machine so far (positions are logical, as in the file)."""

    pos: dict[str, float] = field(default_factory=lambda: dict.fromkeys("XYZE", 0.0))
    feedrate: float = 3000.0
    relative: bool = False
    relative_e: bool = False
    hotend: float = 0.0
    bed: float = 0.0
    fan: int = 0

    def apply(self, command: str) -> None:
        """Update the state with one command (unknown commands change nothing)."""
        words = _WORD.findall(command.upper())
        if not words:
            return
        code = words[0][0] + str(int(float(words[0][1])))
        params = {k: float(v) for k, v in words[1:]}
        handler = _APPLY.get(code)
        if handler is not None:
            handler(self, params)

    def _move(self, params: dict[str, float]) -> None:
        self.feedrate = params.get("F", self.feedrate) or self.feedrate
        for axis in "XYZE":
            if axis in params:
                rel = self.relative_e if axis == "E" else self.relative
                self.pos[axis] = self.pos[axis] + params[axis] if rel else params[axis]

    def _set_position(self, params: dict[str, float]) -> None:
        for axis in "XYZE":
            if axis in params:
                self.pos[axis] = params[axis]

    def _home(self, params: dict[str, float]) -> None:
        for axis in [a for a in "XYZ" if a in params] or list("XYZ"):
            self.pos[axis] = 0.0

    def modes(self) -> list[str]:
        """Commands that put the positioning modes back as they are in this state."""
        return ["G91" if self.relative else "G90", "M83" if self.relative_e else "M82"]


_APPLY = {
    "G0": MachineState._move, "G1": MachineState._move,
    "G92": MachineState._set_position, "G28": MachineState._home,
    "G90": lambda s, p: _set(s, relative=False, relative_e=False),
    "G91": lambda s, p: _set(s, relative=True, relative_e=True),
    "M82": lambda s, p: _set(s, relative_e=False), "M83": lambda s, p: _set(s, relative_e=True),
    "M104": lambda s, p: _set(s, hotend=p.get("S", s.hotend)),
    "M109": lambda s, p: _set(s, hotend=p.get("S", p.get("R", s.hotend))),
    "M140": lambda s, p: _set(s, bed=p.get("S", s.bed)),
    "M190": lambda s, p: _set(s, bed=p.get("S", p.get("R", s.bed))),
    "M106": lambda s, p: _set(s, fan=int(p.get("S", 255))),
    "M107": lambda s, p: _set(s, fan=0),
}


def _set(state: MachineState, **values: object) -> None:
    for key, value in values.items():
        setattr(state, key, value)


@dataclass(frozen=True)
class Layers:
    """Command index at which each `;LAYER:n` begins (layer numbers 1-based, as jobs report)."""

    starts: tuple[int, ...]
    total: int                      # commands in the file

    def layer_at(self, index: int) -> int:
        """The layer command `index` belongs to (0 before the first layer)."""
        return sum(1 for start in self.starts if start <= index)

    def start_of(self, layer: int) -> int:
        """Command index where `layer` (1-based) begins; 0 for layer 0."""
        return self.starts[layer - 1] if layer >= 1 else 0


class LayerMarks:
    """The command range of each layer, learnt as the G-code streams in (or from a whole
    file), and the layer and progress a print has reached after N commands.

    Progress counts layers, the one in progress by its share of commands done, so it is
    known before the slicer has produced the last layer (the file's length is not).
    """

    def __init__(self, layers: int, starts: Iterable[int] = (), ends: Iterable[int] = ()):
        self.layers = layers
        self.starts, self.ends = list(starts), list(ends)

    @classmethod
    def of_file(cls, marks: Layers, layers: int) -> LayerMarks:
        """A whole file's layers; the last one runs to the file's end."""
        return cls(layers, marks.starts, [*marks.starts[1:], marks.total])

    def add(self, start: int, end: int) -> None:
        """The next layer is commands `start` to `end` - 1."""
        self.starts.append(start)
        self.ends.append(end)

    def layer_at(self, index: int) -> int:
        """The layer (1-based) command `index` belongs to, at most `layers`; 0 before any."""
        layer = bisect_right(self.starts, index)
        return min(layer, self.layers) if self.layers else layer

    def progress(self, acked: int) -> float:
        """Percent done once `acked` commands ran: whole layers plus the share of this one."""
        layer = self.layer_at(acked)
        if layer == 0 or not self.layers:
            return 0.0
        start, end = self.starts[layer - 1], self.ends[layer - 1]
        part = min(1.0, (acked - start) / (end - start)) if end > start else 1.0
        return 100.0 * min(1.0, (layer - 1 + part) / self.layers)


def scan_layers(lines: Iterable[str]) -> Layers:
    """Find every `;LAYER:` marker of raw G-code by command index."""
    starts: list[int] = []
    count = 0
    for raw in lines:
        if raw.startswith(";LAYER:"):
            starts.append(count)
        elif strip_comment(raw):
            count += 1
    return Layers(tuple(starts), count)


def state_before(lines: Iterable[str], index: int) -> MachineState:
    """The machine state after the commands before command `index` (those 0..index-1)."""
    state = MachineState()
    count = 0
    for raw in lines:
        command = strip_comment(raw)
        if not command:
            continue
        if count >= index:
            break
        state.apply(command)
        count += 1
    return state


def resume_prelude(start: MachineState, crashed_z: float) -> list[str]:
    """Commands that bring a crashed print back to `start` (the state at a layer's first
    command) the way Marlin's power-loss recovery does: re-heat, home X/Y only (Z is where the
    crash left it, `crashed_z`), restore Z, E, feed rate, fan and modes."""
    lines = [f"M140 S{start.bed:g}", f"M104 S{start.hotend:g}",
             f"M190 S{start.bed:g}", f"M109 S{start.hotend:g}",
             "G90", f"G92 Z{crashed_z:.3f}", f"G1 Z{crashed_z + RESUME_LIFT:.3f} F{Z_FEED:g}",
             "G28 X Y"]
    x, y, z, e = (start.pos[a] for a in "XYZE")
    lines += [f"G1 X{x:.3f} Y{y:.3f} F{XY_FEED:g}", f"G1 Z{z:.3f} F{Z_FEED:g}",
              f"G92 E{e:.5f}", f"M106 S{start.fan}" if start.fan else "M107"]
    return lines + start.modes() + [f"G1 F{start.feedrate:g}"]


def park(state: MachineState, park_x: float = 0.0, park_y: float = 0.0) -> list[str]:
    """Lift and move aside, temperatures kept (after the move in progress has finished)."""
    return ["M400", "G90", f"G1 Z{state.pos['Z'] + PARK_LIFT:.3f} F{Z_FEED:g}",
            f"G1 X{park_x:.3f} Y{park_y:.3f} F{XY_FEED:g}", "M400"]


def unpark(state: MachineState) -> list[str]:
    """Back from `park` to where the print stopped, with its modes and feed rate."""
    x, y, z = (state.pos[a] for a in "XYZ")
    return ["G90", f"G1 X{x:.3f} Y{y:.3f} F{XY_FEED:g}", f"G1 Z{z:.3f} F{Z_FEED:g}",
            *state.modes(), f"G1 F{state.feedrate:g}"]


def load_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [line.rstrip("\r\n") for line in fh]
