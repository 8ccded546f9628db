"""G-code emission: planned layers in, Marlin G-code lines out, in printing order.

`Toolhead` keeps the only sequential state of a slice (nozzle position, E, retraction, the
running totals) and turns each `LayerPlan` into lines: skirt, then islands nearest first,
each island's walls (outer first or last), skin and sparse infill. A travel that stays
inside the current island (combing-lite) is a plain G0; one that crosses its outline
retracts and lifts by `z_hop` first. E is absolute and reset each layer (M82) or relative
(M83), as the profile says.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from gotapi3dp import __version__
from gotapi3dp.config import SliceProfile

from .layer_plan import Island, LayerPlan

Z_SPEED = 10.0               # mm/s for layer changes and hops (time estimate and feed rate)
TRAVEL_SLACK = 0.01          # mm an island grows by before a travel counts as leaving it
MIN_TRAVEL = 1e-6            # mm: shorter travels are not written
WALL_OUTER, WALL_INNER, FILL, SKIN, SKIRT = "WALL-OUTER", "WALL-INNER", "FILL", "SKIN", "SKIRT"


@dataclass
class Path:
    """One extrusion in printing order: (m, 2) float points, and its ;TYPE: kind."""

    points: np.ndarray
    kind: str


@dataclass
class Toolhead:
    """G-code state (position, E, retraction) and the running totals of a slice."""

    profile: SliceProfile
    xy: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))
    z: float = 0.0
    e: float = 0.0
    speed: float = 0.0
    e_per_mm: float = 0.0
    filament_mm: float = 0.0
    seconds: float = 0.0
    low: np.ndarray = field(default_factory=lambda: np.full(2, np.inf))
    high: np.ndarray = field(default_factory=lambda: np.full(2, -np.inf))
    kind: str = ""

    @property
    def relative(self) -> bool:
        return self.profile.e_mode == "relative"

    # ------------------------------------------------------------------ layers

    def layer(self, plan: LayerPlan) -> list[str]:
        """The G-code of one planned layer, from `;LAYER:n` to its last extrusion."""
        out: list[str] = []
        self._start_layer(plan, out)
        if plan.skirt:
            self._print_paths(self._loop_paths([plan.skirt], SKIRT), None, out)
        remaining = list(plan.islands)
        while remaining:
            island = remaining.pop(self._nearest_island(remaining))
            self._print_paths(self._island_paths(island), island.region, out)
        return out

    def _start_layer(self, plan: LayerPlan, out: list[str]) -> None:
        p = self.profile
        area = math.pi * (p.filament_diameter / 2.0) ** 2
        self.e_per_mm = plan.width * plan.thickness / area
        self.speed = p.first_layer_speed if plan.index == 0 else p.print_speed
        self.kind = ""
        out.append(f";LAYER:{plan.index}")
        out += self._layer_settings(plan.index)
        out.append(f"G0 F{Z_SPEED * 60:.0f} Z{plan.z:.3f}")
        if not self.relative:
            out.append("G92 E0")
        self.seconds += abs(plan.z - self.z) / Z_SPEED
        self.z, self.e = plan.z, 0.0

    def _layer_settings(self, index: int) -> list[str]:
        """Fan and temperature changes that take effect at layer `index`."""
        p, lines = self.profile, []
        if index == p.fan_first_layer and p.fan_speed > 0:
            lines.append(f"M106 S{round(255 * min(p.fan_speed, 100.0) / 100.0)}")
        if index == 1 and p.hotend_temp != p.first_layer_hotend_temp:
            lines.append(f"M104 S{p.hotend_temp:.0f}")
        if index == 1 and p.bed_temp != p.first_layer_bed_temp:
            lines.append(f"M140 S{p.bed_temp:.0f}")
        return lines

    # ------------------------------------------------------------------ ordering

    def _nearest_island(self, islands: list[Island]) -> int:
        if not np.isfinite(self.xy).all():
            return 0
        dist = [min(np.hypot(*(pts - self.xy).T).min() for pts in _island_points(i))
                for i in islands]
        return int(np.argmin(dist))

    def _island_paths(self, island: Island) -> list[Path]:
        """Walls in the profile's order, then skin, then sparse infill."""
        levels = list(range(len(island.walls)))
        if not self.profile.outer_wall_first:
            levels.reverse()
        paths: list[Path] = []
        for level in levels:
            kind = WALL_OUTER if level == 0 else WALL_INNER
            paths += self._loop_paths([island.walls[level]], kind, paths)
        paths += self._segment_paths(island.skin, SKIN, paths)
        paths += self._segment_paths(island.infill, FILL, paths)
        return paths

    def _loop_paths(self, groups: list[list[np.ndarray]], kind: str,
                    before: list[Path] | None = None) -> list[Path]:
        """Closed loops, nearest first, each starting at its point nearest the nozzle."""
        here = before[-1].points[-1] if before else self.xy
        paths = []
        for group in groups:
            remaining = list(group)
            while remaining:
                pick, start = _nearest_start(remaining, here)
                loop = remaining.pop(pick)
                points = np.vstack([np.roll(loop, -start, axis=0), loop[start:start + 1]])
                paths.append(Path(points, kind))
                here = points[-1]
        return paths

    def _segment_paths(self, segments: np.ndarray, kind: str, before: list[Path]) -> list[Path]:
        if len(segments) == 0:
            return []
        here = before[-1].points[-1] if before else self.xy
        if np.isfinite(here).all() and (np.hypot(*(segments[-1, 1] - here))
                                        < np.hypot(*(segments[0, 0] - here))):
            segments = segments[::-1, ::-1]
        return [Path(s, kind) for s in segments]

    # ------------------------------------------------------------------ moves

    def _print_paths(self, paths: list[Path], region: BaseGeometry | None,
                     out: list[str]) -> None:
        """Print paths in order; travels leaving `region` (None: any travel) retract."""
        if not paths:
            return
        starts = np.array([p.points[0] for p in paths])
        ends = np.array([self.xy] + [p.points[-1] for p in paths[:-1]])
        crossing = _crossing(ends, starts, region)
        for path, cross in zip(paths, crossing.tolist()):
            self.travel(path.points[0], cross, out)
            self.extrude(path.points, path.kind, out)

    def travel(self, target: np.ndarray, crossing: bool, out: list[str]) -> None:
        """Move to target; retract and lift around it when it crosses a perimeter."""
        p = self.profile
        distance = float(np.hypot(*(target - self.xy))) if np.isfinite(self.xy).all() else 0.0
        if np.isfinite(self.xy).all() and distance < MIN_TRAVEL:
            return
        retract = crossing and p.retract_length > 0
        hop = crossing and p.z_hop > 0
        if retract:
            out.append(f"G1 F{p.retract_speed * 60:.0f} E{self._e_text(-p.retract_length)}")
        if hop:
            out.append(f"G0 F{Z_SPEED * 60:.0f} Z{self.z + p.z_hop:.3f}")
        out.append(f"G0 F{p.travel_speed * 60:.0f} X{target[0]:.3f} Y{target[1]:.3f}")
        if hop:
            out.append(f"G0 F{Z_SPEED * 60:.0f} Z{self.z:.3f}")
        if retract:
            out.append(f"G1 F{p.retract_speed * 60:.0f} E{self._e_text(p.retract_length)}")
        self.seconds += (distance / p.travel_speed + (2 * p.retract_length / p.retract_speed
                         if retract else 0.0) + (2 * p.z_hop / Z_SPEED if hop else 0.0))
        self.xy = np.asarray(target, dtype=np.float64)

    def _e_text(self, delta: float) -> str:
        """E word value for a retraction (delta < 0) or its undo, without moving self.e."""
        return f"{delta:.5f}" if self.relative else f"{self.e + min(delta, 0.0):.5f}"

    def extrude(self, points: np.ndarray, kind: str, out: list[str]) -> None:
        """Print through points[1:] (the nozzle is at points[0]); points is (m, 2) float."""
        if kind != self.kind:
            out.append(f";TYPE:{kind}")
            self.kind = kind
        lengths = np.hypot(*np.diff(points, axis=0).T)
        if self.relative:
            e = lengths * self.e_per_mm
        else:
            e = self.e + np.cumsum(lengths) * self.e_per_mm
        rows = zip(points[1:, 0].tolist(), points[1:, 1].tolist(), e.tolist())
        moves = [f"G1 X{x:.3f} Y{y:.3f} E{ev:.5f}" for x, y, ev in rows]
        moves[0] = f"G1 F{self.speed * 60:.0f} " + moves[0][3:]
        out += moves
        used = float(lengths.sum()) * self.e_per_mm
        self.e = 0.0 if self.relative else float(e[-1])
        self.filament_mm += used
        self.xy = points[-1]
        self.seconds += float(lengths.sum()) / self.speed
        self.low = np.minimum(self.low, points.min(axis=0))
        self.high = np.maximum(self.high, points.max(axis=0))

    # ------------------------------------------------------------------ results

    def bounds(self) -> tuple[tuple[float, float], tuple[float, float]]:
        if not np.isfinite(self.low).all():
            return (0.0, 0.0), (0.0, 0.0)
        return ((float(self.low[0]), float(self.low[1])),
                (float(self.high[0]), float(self.high[1])))

    def filament_grams(self) -> float:
        area = math.pi * (self.profile.filament_diameter / 2.0) ** 2
        return self.filament_mm * area / 1000.0 * self.profile.filament_density


def _nearest_start(loops: list[np.ndarray], here: np.ndarray) -> tuple[int, int]:
    """(loop, point) indices of the loop point nearest `here` (the first if unknown)."""
    if not np.isfinite(here).all():
        return 0, 0
    dist = [np.hypot(*(loop - here).T) for loop in loops]
    pick = int(np.argmin([d.min() for d in dist]))
    return pick, int(np.argmin(dist[pick]))


def _island_points(island: Island) -> list[np.ndarray]:
    loops = [loop for level in island.walls for loop in level]
    return loops or [np.concatenate([island.skin, island.infill]).reshape(-1, 2)]


def _crossing(starts: np.ndarray, ends: np.ndarray, region: BaseGeometry | None) -> np.ndarray:
    """(t,) bool: whether each travel (starts[i] -> ends[i]) leaves `region`.

    A travel from an unknown position (NaN) or with no region counts as crossing.
    """
    crossing = np.ones(len(starts), dtype=bool)
    if region is None:
        return crossing
    known = np.isfinite(starts).all(axis=1)
    moving = np.hypot(*(ends - starts).T) >= MIN_TRAVEL
    check = known & moving
    if check.any():
        grown = shapely.buffer(region, TRAVEL_SLACK, quad_segs=2)
        shapely.prepare(grown)
        lines = shapely.linestrings(np.stack([starts[check], ends[check]], axis=1))
        crossing[check] = ~shapely.within(lines, grown)
    crossing[known & ~moving] = False
    return crossing


# ---------------------------------------------------------------------- file parts


def start_gcode(profile: SliceProfile, layers: int) -> list[str]:
    """The profile's start G-code with {settings} filled in, the E mode, `;LAYER_COUNT:`."""
    try:
        text = profile.start_gcode.format_map(vars(profile))
    except (KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"start_gcode: bad placeholder {exc}") from None
    e_mode = ["M83"] if profile.e_mode == "relative" else ["M82", "G92 E0"]
    return [*text.splitlines(), *e_mode, f";LAYER_COUNT:{layers}"]


def end_gcode(profile: SliceProfile) -> list[str]:
    """`;END_GCODE`, a retraction, then the profile's end G-code with {settings} filled in."""
    try:
        text = profile.end_gcode.format_map(vars(profile))
    except (KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"end_gcode: bad placeholder {exc}") from None
    reset = [] if profile.e_mode == "relative" else ["G92 E0"]
    retract = f"G1 F{profile.retract_speed * 60:.0f} E-{profile.retract_length:.5f}"
    return [";END_GCODE", *reset, retract, *text.splitlines()]


def header(head: Toolhead, layers: int, height: float) -> list[str]:
    """Cura-style header: flavour, time, filament (m, mm, g), bounds, layer height."""
    (x0, y0), (x1, y1) = head.bounds()
    return [";FLAVOR:Marlin", f";TIME:{round(head.seconds)}",
            f";Filament used: {head.filament_mm / 1000.0:.5f}m",
            f";Filament used [mm]: {head.filament_mm:.2f}",
            f";Filament used [g]: {head.filament_grams():.2f}",
            f";Layer height: {head.profile.layer_height}",
            f";MINX:{x0:.3f}", f";MINY:{y0:.3f}", ";MINZ:0", f";MAXX:{x1:.3f}",
            f";MAXY:{y1:.3f}", f";MAXZ:{height:.3f}", f";Generated with gotapi-3dp {__version__}"]
