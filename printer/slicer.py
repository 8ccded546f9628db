"""FDM slicer: a mesh file in, Marlin G-code out, generated and streamed one layer at a time.

`load_mesh` reads and checks the model and places it on the bed; `iter_layers` sections every
layer plane at once (`geometry.section`) and then yields each layer's G-code lazily, so the
printer can stream while slicing; `slice_file` writes a whole job atomically. Per layer: the
outline (nonzero winding of the section rings), `perimeters` walls by inward offsets printed
inside out, rectilinear sparse infill at +/- `infill_angle`, travels with retraction.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import trimesh

from gotapi3dp import __version__
from gotapi3dp.config import SliceProfile
from gotapi3dp.fsutil import fsync_dir
from gotapi3dp.threemf import ModelError, read_3mf
from gotapi3dp.wire.errors import ErrorCode, P3DError

from . import geometry

RETRACT_MIN_TRAVEL = 2.0     # mm: travels longer than this retract first
INFILL_OVERLAP = 0.15        # fraction of a line width the infill overlaps the innermost wall
Z_SPEED = 10.0               # mm/s for layer changes (time estimate and feed rate)
MIN_EXTENT = 1e-3            # mm: a model thinner than this on any axis is flat
MIN_VOLUME = 1e-3            # mm^3: a closed model enclosing less than this is empty
FIT_TOLERANCE = 1e-6         # mm: rounding slack when comparing the model with the bed
MESH_SUFFIXES = ("stl", "obj", "3mf")
_WALL_OUTER, _WALL_INNER, _FILL = "WALL-OUTER", "WALL-INNER", "FILL"


@dataclass
class SliceResult:
    """What a finished slice produced; `lines` counts every line of the file."""

    layers: int
    lines: int
    height: float
    bounds: tuple[tuple[float, float], tuple[float, float]]   # XY min/max of extruding moves
    filament_mm: float
    estimated_seconds: float


# ---------------------------------------------------------------------------- loading


def load_mesh(path: Path, profile: SliceProfile) -> trimesh.Trimesh:
    """Read an STL, OBJ or 3MF file, check it is printable, and place it on the bed.

    The lowest point ends at z = 0 and the XY bounding box centre at the bed centre.
    Raises P3DError(MODEL_INVALID) with a message for the user when it cannot be printed.
    """
    mesh = _read_mesh(Path(path))
    _check_mesh(mesh, profile)
    low, high = mesh.bounds
    centre = (low + high) / 2.0
    mesh.apply_translation([profile.bed_x / 2.0 - centre[0], profile.bed_y / 2.0 - centre[1],
                            -low[2]])
    return mesh


def _read_mesh(path: Path) -> trimesh.Trimesh:
    kind = _sniff(path)
    try:
        if kind == "3mf":
            mesh = trimesh.Trimesh(*read_3mf(path), process=False)
        else:
            mesh = trimesh.load(str(path), file_type=kind, force="mesh", process=False)
    except ModelError as exc:
        raise P3DError(ErrorCode.MODEL_INVALID, f"{path.name}: {exc}") from None
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise P3DError(ErrorCode.MODEL_INVALID,
                       f"{path.name} is not a readable {kind.upper()} mesh: {exc}") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise P3DError(ErrorCode.MODEL_INVALID, f"{path.name} holds no triangles")
    return mesh


def _sniff(path: Path) -> str:
    """File type from the suffix, else from the first bytes; the file must not be empty."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
        size = path.stat().st_size
    except OSError as exc:
        raise P3DError(ErrorCode.MODEL_INVALID, f"cannot read model file: {exc.strerror}") from None
    if not head.strip():
        raise P3DError(ErrorCode.MODEL_INVALID, f"model file {path.name} is empty")
    suffix = path.suffix.lower().lstrip(".")
    if head.startswith(b"PK\x03\x04"):
        return "3mf"
    if suffix in MESH_SUFFIXES:
        return suffix
    if head.lstrip().lower().startswith(b"solid") or (
            size >= 84 and 84 + 50 * int.from_bytes(head[80:84], "little") == size):
        return "stl"
    if any(line.split(b" ", 1)[0] in (b"v", b"f") for line in head.splitlines()):
        return "obj"
    raise P3DError(ErrorCode.MODEL_INVALID, f"{path.name} is not an STL, OBJ or 3MF model")


def _check_mesh(mesh: trimesh.Trimesh, profile: SliceProfile) -> None:
    """Refuse non-finite, flat, empty or oversized models; merge and orient the rest."""
    if not np.isfinite(mesh.vertices).all():
        raise P3DError(ErrorCode.MODEL_INVALID, "model has NaN or infinite vertex coordinates")
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    mesh.remove_unreferenced_vertices()
    extents = mesh.extents
    flat = [axis for axis, size in zip("XYZ", extents) if size < MIN_EXTENT]
    if flat:
        raise P3DError(ErrorCode.MODEL_INVALID, f"model is flat: zero size along {', '.join(flat)}")
    if mesh.is_watertight and abs(mesh.volume) < MIN_VOLUME:
        raise P3DError(ErrorCode.MODEL_INVALID, "model encloses no volume")
    bed = (profile.bed_x, profile.bed_y, profile.bed_z)
    over = [f"{axis} {size:.1f} mm > {limit:.1f} mm"
            for axis, size, limit in zip("XYZ", extents, bed) if size > limit + FIT_TOLERANCE]
    if over:
        raise P3DError(ErrorCode.MODEL_INVALID,
                       f"model does not fit the build volume: {'; '.join(over)}")
    if not mesh.is_winding_consistent:
        trimesh.repair.fix_winding(mesh)


# ---------------------------------------------------------------------------- layers


def count_layers(height: float, profile: SliceProfile) -> int:
    """Layers needed for a model `height` mm tall: every layer whose mid-plane cuts the model.

    The last layer's top is then within half a layer of the model's top; a mid-plane that
    falls exactly on the top face cuts nothing, so that layer is not counted.
    """
    if height <= 0:
        return 0
    rest = (height - profile.first_layer_height) / profile.layer_height
    return 1 + max(0, math.ceil(rest + 0.5 - 1e-6) - 1)


def layer_tops(count: int, profile: SliceProfile) -> np.ndarray:
    """(count,) float: nozzle Z of each layer."""
    return profile.first_layer_height + profile.layer_height * np.arange(count)


def layer_thickness(index: int, profile: SliceProfile) -> float:
    return profile.first_layer_height if index == 0 else profile.layer_height


@dataclass
class Island:
    """One connected piece of a layer: wall loops by level (0 = outer) and infill segments.

    walls : list over levels of lists of (m, 2) float loops; infill : (k, 2, 2) float
    """

    walls: list[list[np.ndarray]]
    infill: np.ndarray


def plan_layer(region: object, index: int, profile: SliceProfile) -> list[Island]:
    """Walls and infill of every island of one layer's outline."""
    width = profile.line_width
    density = min(max(profile.infill_density, 0.0), 1.0)
    angle = profile.infill_angle if index % 2 == 0 else -profile.infill_angle
    planned = []
    for piece in geometry.islands(region):
        walls = [geometry.loops(geometry.inset(piece, width * (level + 0.5)))
                 for level in range(profile.perimeters)]
        depth = width * (profile.perimeters - INFILL_OVERLAP) if profile.perimeters else width / 2
        infill = (geometry.rectilinear(geometry.inset(piece, depth), width / density, angle)
                  if density > 0 else np.zeros((0, 2, 2)))
        if any(walls) or len(infill):
            planned.append(Island([w for w in walls if w], infill))
    return planned


# ---------------------------------------------------------------------------- G-code


@dataclass
class Toolhead:
    """Absolute-E G-code state (position, E, retraction) and the running totals."""

    profile: SliceProfile
    xy: np.ndarray = field(default_factory=lambda: np.zeros(2))
    z: float = 0.0
    e: float = 0.0
    retracted: bool = False
    first_layer: bool = True
    e_per_mm: float = 0.0
    filament_mm: float = 0.0
    seconds: float = 0.0
    low: np.ndarray = field(default_factory=lambda: np.full(2, np.inf))
    high: np.ndarray = field(default_factory=lambda: np.full(2, -np.inf))
    kind: str = ""

    def start_layer(self, index: int, z: float, out: list[str]) -> None:
        p = self.profile
        area = math.pi * (p.filament_diameter / 2.0) ** 2
        self.e_per_mm = p.line_width * layer_thickness(index, p) / area
        self.first_layer, self.kind = index == 0, ""
        self.filament_mm += self.e
        out += [f";LAYER:{index}"] + (["M106 S255"] if index == 1 else [])
        out += [f"G0 F{Z_SPEED * 60:.0f} Z{z:.3f}", "G92 E0"]
        self.seconds += abs(z - self.z) / Z_SPEED
        self.z, self.e = z, 0.0

    def finish(self) -> None:
        self.filament_mm += self.e
        self.e = 0.0

    def travel(self, target: np.ndarray, out: list[str]) -> None:
        p = self.profile
        distance = float(np.hypot(*(target - self.xy)))
        if distance < 1e-6:
            return
        long = distance > RETRACT_MIN_TRAVEL and p.retract_length > 0
        if long:
            out.append(f"G1 F{p.retract_speed * 60:.0f} E{self.e - p.retract_length:.5f}")
        out.append(f"G0 F{p.travel_speed * 60:.0f} X{target[0]:.3f} Y{target[1]:.3f}")
        if long:
            out.append(f"G1 F{p.retract_speed * 60:.0f} E{self.e:.5f}")
            self.seconds += 2 * p.retract_length / p.retract_speed
        self.seconds += distance / p.travel_speed
        self.xy = np.asarray(target, dtype=np.float64)

    def extrude(self, points: np.ndarray, kind: str, out: list[str]) -> None:
        """Travel to points[0], then print through the rest; points is (m, 2) float."""
        if len(points) < 2:
            return
        self.travel(points[0], out)
        if kind != self.kind:
            out.append(f";TYPE:{kind}")
            self.kind = kind
        p = self.profile
        speed = p.first_layer_speed if self.first_layer else p.print_speed
        lengths = np.hypot(*np.diff(points, axis=0).T)
        e = self.e + np.cumsum(lengths) * self.e_per_mm
        rows = zip(points[1:, 0].tolist(), points[1:, 1].tolist(), e.tolist())
        moves = [f"G1 X{x:.3f} Y{y:.3f} E{ev:.5f}" for x, y, ev in rows]
        moves[0] = f"G1 F{speed * 60:.0f} " + moves[0][3:]
        out += moves
        self.e, self.xy = float(e[-1]), points[-1]
        self.seconds += float(lengths.sum()) / speed
        self.low = np.minimum(self.low, points.min(axis=0))
        self.high = np.maximum(self.high, points.max(axis=0))

    def print_island(self, island: Island, out: list[str]) -> None:
        """Walls from the innermost level out (outer wall last), then infill."""
        for level in range(len(island.walls) - 1, -1, -1):
            kind = _WALL_OUTER if level == 0 else _WALL_INNER
            remaining = list(island.walls[level])
            while remaining:
                loop = remaining.pop(self._nearest_loop(remaining))
                start = int(np.argmin(np.hypot(*(loop - self.xy).T)))
                self.extrude(np.vstack([np.roll(loop, -start, axis=0), loop[start:start + 1]]),
                             kind, out)
        segments = island.infill
        if len(segments) and (np.hypot(*(segments[-1, 1] - self.xy))
                              < np.hypot(*(segments[0, 0] - self.xy))):
            segments = segments[::-1, ::-1]
        for segment in segments:
            self.extrude(segment, _FILL, out)

    def _nearest_loop(self, loops: list[np.ndarray]) -> int:
        return int(np.argmin([np.hypot(*(loop - self.xy).T).min() for loop in loops]))


def start_gcode(profile: SliceProfile) -> list[str]:
    bed, hotend = profile.bed_temp, profile.hotend_temp
    return [f"M140 S{bed:.0f}", f"M104 S{hotend:.0f}", f"M190 S{bed:.0f}", f"M109 S{hotend:.0f}",
            "G28", "G90", "M82", "G92 E0", "M107"]


def end_gcode(profile: SliceProfile) -> list[str]:
    """Retract (E reset first: absolute E), heaters and fan off, lift 10 mm, motors off."""
    retract = f"G1 F{profile.retract_speed * 60:.0f} E-{profile.retract_length:.5f}"
    return [";END_GCODE", "G92 E0", retract,
            "M104 S0", "M140 S0", "M107", "G91", "G1 Z10 F600", "G90", "M84"]


def header(head: Toolhead, layers: int, height: float) -> list[str]:
    (x0, y0), (x1, y1) = _bounds(head)
    return [";FLAVOR:Marlin", f";TIME:{round(head.seconds)}",
            f";Filament used: {head.filament_mm / 1000.0:.5f}m",
            f";Layer height: {head.profile.layer_height}",
            f";MINX:{x0:.3f}", f";MINY:{y0:.3f}", ";MINZ:0", f";MAXX:{x1:.3f}",
            f";MAXY:{y1:.3f}", f";MAXZ:{height:.3f}", f";Generated with gotapi-3dp {__version__}"]


def _bounds(head: Toolhead) -> tuple[tuple[float, float], tuple[float, float]]:
    if not np.isfinite(head.low).all():
        return (0.0, 0.0), (0.0, 0.0)
    return (float(head.low[0]), float(head.low[1])), (float(head.high[0]), float(head.high[1]))


# ---------------------------------------------------------------------------- slicing


def iter_layers(mesh: trimesh.Trimesh,
                profile: SliceProfile) -> Iterator[tuple[int, float, list[str]]]:
    """(index, z, G-code lines) of each layer, generated lazily; sections eagerly.

    The mesh must already be placed on the bed (`load_mesh`). Raises P3DError(MODEL_INVALID)
    at once if no layer plane meets a closed part of the mesh.
    """
    return _layers(mesh, profile, Toolhead(profile))


def _layers(mesh: trimesh.Trimesh, profile: SliceProfile,
            head: Toolhead) -> Iterator[tuple[int, float, list[str]]]:
    count = count_layers(float(mesh.bounds[1, 2]), profile)
    tops = layer_tops(count, profile)
    mids = tops - np.array([layer_thickness(i, profile) for i in range(count)]) / 2.0
    rings = geometry.section(mesh.vertices, mesh.faces, mesh.edges_unique,
                             mesh.faces_unique_edges, mids)
    if len(rings.layer) == 0:
        raise P3DError(ErrorCode.MODEL_INVALID,
                       "nothing printable: no layer cuts a closed part of the model")
    return _generate(rings, tops, profile, head)


def _generate(rings: geometry.Rings, tops: np.ndarray, profile: SliceProfile,
              head: Toolhead) -> Iterator[tuple[int, float, list[str]]]:
    for index, z in enumerate(tops.tolist()):
        out: list[str] = []
        head.start_layer(index, z, out)
        region = geometry.outline(*rings.of_layer(index))
        for island in _nearest_first(plan_layer(region, index, profile), head):
            head.print_island(island, out)
        yield index, z, out
    head.finish()


def _nearest_first(islands: list[Island], head: Toolhead) -> Iterator[Island]:
    """Islands in greedy nearest-neighbour order from wherever the head is."""
    remaining = list(islands)
    while remaining:
        dist = [min(np.hypot(*(loop - head.xy).T).min() for loop in _all_points(i))
                for i in remaining]
        yield remaining.pop(int(np.argmin(dist)))


def _all_points(island: Island) -> list[np.ndarray]:
    loops = [loop for level in island.walls for loop in level]
    return loops or [island.infill.reshape(-1, 2)]


def slice_file(model: Path, out: Path, profile: SliceProfile,
               progress: Callable[[int, int], None] | None = None) -> SliceResult:
    """Slice `model` into G-code at `out` (temp file in the same directory, fsync, rename).

    progress(layers_done, layers_total) is called once per layer.
    """
    out = Path(out)
    mesh = load_mesh(Path(model), profile)
    head = Toolhead(profile)
    try:
        return _slice_into(mesh, out, profile, head, progress)
    except P3DError:
        raise
    except Exception as exc:
        raise P3DError(ErrorCode.SLICE_FAILED,
                       f"slicing failed: {type(exc).__name__}: {exc}") from exc


def _slice_into(mesh: trimesh.Trimesh, out: Path, profile: SliceProfile, head: Toolhead,
                progress: Callable[[int, int], None] | None) -> SliceResult:
    layers = _layers(mesh, profile, head)
    total = count_layers(float(mesh.bounds[1, 2]), profile)
    body_lines, height = 0, 0.0
    with tempfile.TemporaryFile("w+", dir=out.parent, encoding="ascii") as body:
        for index, z, lines in layers:
            body.write("\n".join(lines) + "\n")
            body_lines, height = body_lines + len(lines), z
            if progress is not None:
                progress(index + 1, total)
        if head.filament_mm <= 0:
            raise P3DError(ErrorCode.MODEL_INVALID,
                           "nothing printable: every part is thinner than one line width")
        top = header(head, total, height) + start_gcode(profile) + [f";LAYER_COUNT:{total}"]
        tail = end_gcode(profile)
        body.seek(0)
        _write_atomic(out, top, body, tail)
    return SliceResult(layers=total, lines=len(top) + body_lines + len(tail), height=height,
                       bounds=_bounds(head), filament_mm=head.filament_mm,
                       estimated_seconds=head.seconds)


def _write_atomic(out: Path, top: list[str], body: IO[str], tail: list[str]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with io.open(fd, "w", encoding="ascii", newline="\n") as fh:
            fh.write("\n".join(top) + "\n")
            while chunk := body.read(1 << 20):
                fh.write(chunk)
            fh.write("\n".join(tail) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(out.parent)
