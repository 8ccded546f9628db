"""FDM slicer: a mesh file in, Marlin G-code out, streamed one layer at a time.

`load_mesh` reads and checks the model and places it on the bed; `stream_gcode` sections
the few planes layer 0 needs, then every plane at once on a thread (`geometry.section`)
while layer 0 is planned, plans batches of the other layers in a pool of worker processes
(`layer_plan.plan_batch`: walls, skin, infill, skirt) and emits each layer's G-code in order
(`toolhead.Toolhead`) as soon as it is planned, so the printer can start on layer 0 while
later layers are still being sectioned and planned. `slice_file` writes a whole job atomically on
top of the stream, with a Cura-style header.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
import select
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import trimesh

from gotapi3dp.config import SliceProfile
from gotapi3dp.fsutil import fsync_dir
from gotapi3dp.threemf import ModelError, read_3mf
from gotapi3dp.wire.errors import ErrorCode, P3DError

from . import geometry, layer_plan, toolhead
from .toolhead import Toolhead

MIN_BATCH, MAX_BATCH = 8, 24  # layers per planner batch (skin needs a margin of layers)
WINDOW = 3                   # batches per worker planned ahead of the consumer
MIN_EXTENT = 1e-3            # mm: a model thinner than this on any axis is flat
MIN_VOLUME = 1e-3            # mm^3: a closed model enclosing less than this is empty
FIT_TOLERANCE = 1e-6         # mm: rounding slack when comparing the model with the bed
MESH_SUFFIXES = ("stl", "obj", "3mf")
MERGE_DIGITS = 8             # vertices agreeing to this many decimals (mm) are one


@dataclass
class SliceResult:
    """What a finished slice produced; `lines` counts every line of the file."""

    layers: int
    lines: int
    height: float
    bounds: tuple[tuple[float, float], tuple[float, float]]   # XY min/max of extruding moves
    filament_mm: float
    estimated_seconds: float
    filament_g: float = 0.0


# ---------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Topology:
    """A placed mesh as the plain arrays sectioning needs, shareable with another thread
    (trimesh's caches are not thread-safe). `face_shell` is `geometry.shells`' labels."""

    vertices: np.ndarray
    faces: np.ndarray
    edges: np.ndarray
    face_edges: np.ndarray
    face_shell: np.ndarray

    @classmethod
    def of(cls, mesh: trimesh.Trimesh,
           edge_topology: tuple[np.ndarray, np.ndarray] | None = None) -> Topology:
        """`edge_topology`: `geometry.edge_topology(mesh.faces)` if the caller has it."""
        faces = np.asarray(mesh.faces)
        edges, face_edges = edge_topology or geometry.edge_topology(faces)
        return cls(np.asarray(mesh.vertices), faces, edges, face_edges,
                   geometry.shells(face_edges, len(edges)))

    def section(self, mids: np.ndarray) -> geometry.Rings:
        """Rings of the planes at heights `mids` (ascending), numbered from 0."""
        return geometry.section(self.vertices, self.faces, self.edges, self.face_edges, mids,
                                self.face_shell)


def load_mesh(path: Path, profile: SliceProfile) -> trimesh.Trimesh:
    """Read an STL, OBJ or 3MF file, check it is printable, and place it on the bed.

    The lowest point ends at z = 0 and the XY bounding box centre at the bed centre.
    Raises P3DError(MODEL_INVALID) with a message for the user when it cannot be printed.
    """
    return _load(Path(path), profile)[0]


def _load(path: Path, profile: SliceProfile) -> tuple[trimesh.Trimesh, Topology]:
    """`load_mesh`, and the placed mesh's `Topology` found while checking it."""
    mesh = _merged(_read_mesh(path))
    edge_topology = _check_mesh(mesh, profile)
    low, high = mesh.bounds
    centre = (low + high) / 2.0
    mesh.apply_translation([profile.bed_x / 2.0 - centre[0], profile.bed_y / 2.0 - centre[1],
                            -low[2]])
    return mesh, Topology.of(mesh, edge_topology)


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


def _merged(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The mesh with coincident vertices merged and unused ones dropped, in the order of
    their first occurrence. Refuses NaN and infinity.

    What a triangle soup (STL) needs for its faces to share edges. Vertices are the same
    when they agree to MERGE_DIGITS decimals (trimesh's tolerance), found with one sort of
    integer keys instead of trimesh's row hashing: half the time, the same vertices on
    every test model.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    if not np.isfinite(vertices).all():
        raise P3DError(ErrorCode.MODEL_INVALID, "model has NaN or infinite vertex coordinates")
    faces = np.asarray(mesh.faces)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise P3DError(ErrorCode.MODEL_INVALID, "model has faces pointing at missing vertices")
    scaled = vertices * 10.0 ** MERGE_DIGITS
    if len(scaled) and np.abs(scaled).max() < 2.0 ** 62:
        grid = np.ascontiguousarray(np.round(scaled).astype(np.int64))
    else:                                                   # beyond int64: exact match
        grid = np.ascontiguousarray(vertices + 0.0)         # -0.0 -> 0.0: one key per point
    keys = grid.view(np.dtype((np.void, grid.dtype.itemsize * 3))).ravel()
    _, first, group = np.unique(keys, return_index=True, return_inverse=True)
    used = np.zeros(len(first), dtype=bool)
    used[group[faces].ravel()] = True
    order = np.argsort(first)                               # groups by first occurrence
    order = order[used[order]]
    rank = np.full(len(first), -1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    return trimesh.Trimesh(vertices[first[order]], rank[group.ravel()][faces], process=False)


def _check_mesh(mesh: trimesh.Trimesh, profile: SliceProfile) -> tuple[np.ndarray, np.ndarray]:
    """Refuse flat, empty or oversized models (merged by `_merged`); orient the rest.

    Returns `geometry.edge_topology` of the checked mesh's faces.
    """
    extents = mesh.extents
    flat = [axis for axis, size in zip("XYZ", extents) if size < MIN_EXTENT]
    if flat:
        raise P3DError(ErrorCode.MODEL_INVALID, f"model is flat: zero size along {', '.join(flat)}")
    bed = (profile.bed_x, profile.bed_y, profile.bed_z)
    over = [f"{axis} {size:.1f} mm > {limit:.1f} mm"
            for axis, size, limit in zip("XYZ", extents, bed) if size > limit + FIT_TOLERANCE]
    if over:
        raise P3DError(ErrorCode.MODEL_INVALID,
                       f"model does not fit the build volume: {'; '.join(over)}")
    faces = np.asarray(mesh.faces)
    edges, face_edges = geometry.edge_topology(faces)
    watertight, consistent = _edge_checks(edges, faces, face_edges)
    if watertight and abs(_volume(np.asarray(mesh.vertices), faces)) < MIN_VOLUME:
        raise P3DError(ErrorCode.MODEL_INVALID, "model encloses no volume")
    if not consistent:
        trimesh.repair.fix_winding(mesh)
        edges, face_edges = geometry.edge_topology(np.asarray(mesh.faces))
    return edges, face_edges


def _volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume enclosed by the faces (divergence theorem; exact for closed meshes)."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->", a, np.cross(b, c))) / 6.0


def _edge_checks(edges: np.ndarray, faces: np.ndarray,
                 face_edges: np.ndarray) -> tuple[bool, bool]:
    """(watertight, winding consistent), from the edge topology the sectioner needs anyway.

    Watertight: every edge joins exactly two faces. Consistent: each such edge is walked
    once in each direction. Edges from a vertex to itself (collapsed faces) are ignored.
    Same answers as trimesh's, without regrouping the edges.
    """
    edge = face_edges.ravel()
    uses = np.bincount(edge, minlength=len(edges))
    forward = (faces < np.roll(faces, -1, axis=1)).ravel()
    balance = np.bincount(edge, weights=np.where(forward, 1.0, -1.0), minlength=len(edges))
    proper = edges[:, 0] != edges[:, 1]
    pair = (uses == 2) & proper
    return bool(pair[proper].all()), bool((balance[pair] == 0).all())


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


layer_thickness = layer_plan.layer_thickness


def layer_mids(count: int, profile: SliceProfile) -> tuple[np.ndarray, np.ndarray]:
    """(tops, mids): nozzle Z and the Z of the sectioning mid-plane of each layer."""
    tops = layer_tops(count, profile)
    return tops, tops - np.array([layer_thickness(i, profile) for i in range(count)]) / 2.0


def section_layers(mesh: trimesh.Trimesh, profile: SliceProfile) -> tuple[geometry.Rings,
                                                                          np.ndarray]:
    """Section rings of every layer's mid-plane, and the (count,) float layer tops.

    Raises P3DError(MODEL_INVALID) if no layer plane meets a closed part of the mesh.
    """
    tops, mids = layer_mids(count_layers(float(mesh.bounds[1, 2]), profile), profile)
    return _require_rings(Topology.of(mesh).section(mids)), tops


def _require_rings(rings: geometry.Rings) -> geometry.Rings:
    if len(rings.layer) == 0:
        raise P3DError(ErrorCode.MODEL_INVALID,
                       "nothing printable: no layer cuts a closed part of the model")
    return rings


def _in_thread(fn: Callable[..., Any], *args: Any) -> Future:
    """fn(*args) on a daemon thread; its result or exception in the returned Future."""
    future: Future = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

    threading.Thread(target=run, name="slicer-section", daemon=True).start()
    return future


# ---------------------------------------------------------------------------- planning


def batches(count: int, workers: int) -> list[tuple[int, int]]:
    """(lo, hi) layer ranges: a one-layer first batch (fast first layer), then even batches."""
    size = min(MAX_BATCH, max(MIN_BATCH, count // max(1, workers * 4)))
    edges = [0, 1, *range(1 + size, count, size), count]
    return [(lo, hi) for lo, hi in zip(edges, edges[1:]) if hi > lo]


def _batch(rings: geometry.Rings, tops: np.ndarray, lo: int, hi: int,
           profile: SliceProfile) -> layer_plan.Batch:
    first, last = layer_plan.needed_layers(lo, hi, len(tops), profile)
    return layer_plan.Batch(lo, hi, len(tops), tops, rings.subset(first, last), profile)


def worker_count(profile: SliceProfile) -> int:
    """Planner processes to use: the profile's `workers`, or one per core up to 2."""
    if profile.workers > 0:
        return profile.workers
    return max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


def planned_layers(rings: geometry.Rings | Future, tops: np.ndarray, profile: SliceProfile,
                   pool: ProcessPoolExecutor | None = None,
                   first: geometry.Rings | None = None) -> Iterator[layer_plan.LayerPlan]:
    """Plan every layer, yielding them in order as soon as each is ready.

    Batches go to `pool` (see `start_pool`), at most `WINDOW` per worker ahead of the
    consumer, so a slow consumer does not make planning run away. This process plans too:
    it takes the first batch at once (a fast first layer) and any batch it needs next that
    no worker has picked up yet. Without a pool everything is planned here, lazily.

    `rings` may be a Future (the sectioning still running); then `first` holds the rings of
    the layers that layer 0 needs, and layer 0 is planned from them while it runs.
    """
    workers = pool._max_workers if pool is not None else 1
    ranges = batches(len(tops), workers)
    if first is not None:
        lo, hi = ranges[0]
        yield from layer_plan.plan_batch(_batch(first, tops, lo, hi, profile))
        ranges = ranges[1:]
    if isinstance(rings, Future):
        rings = rings.result()
    jobs = [_batch(rings, tops, lo, hi, profile) for lo, hi in ranges]
    if pool is None or len(jobs) <= 2:
        for job in jobs:
            yield from layer_plan.plan_batch(job)
        return
    ahead, start = WINDOW * workers, 0 if first is not None else 1
    futures = {i: pool.submit(layer_plan.plan_batch, jobs[i])
               for i in range(start, min(len(jobs), start + ahead))}
    for i, job in enumerate(jobs):
        future = futures.pop(i, None)
        if i >= start and i + ahead < len(jobs):
            futures[i + ahead] = pool.submit(layer_plan.plan_batch, jobs[i + ahead])
        if future is None or future.cancel():
            yield from layer_plan.plan_batch(job)
        else:
            yield from future.result()


def start_pool(profile: SliceProfile) -> ProcessPoolExecutor | None:
    """Planner processes for one slice, started at once so they are up when work comes.

    None when `worker_count` is 1 or processes cannot be started (then plan in-process).
    """
    workers = worker_count(profile)
    pool = _pool(workers) if workers > 1 else None
    if pool is not None:
        for _ in range(workers):
            pool.submit(int)
    return pool


def _pool(workers: int) -> ProcessPoolExecutor | None:
    """A process pool, or None where processes cannot be started (then plan in-process).

    A single-threaded caller forks (cheap: the workers inherit the loaded modules); a
    threaded one (the printer's server) uses a fork server, since forking a process whose
    other threads may hold locks is unsafe.
    """
    try:
        if threading.active_count() == 1:
            context: Any = multiprocessing.get_context("fork")
        else:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["printer.layer_plan"])
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_planner,
                                   initargs=(os.getpid(),))
    except (OSError, ValueError, AssertionError, ImportError):
        return None


def _init_planner(owner: int) -> None:
    """In a planner process: ignore SIGINT, and end with `owner`. Ctrl-C in a terminal reaches the whole
    foreground process group; the printer must stop its planners through the pool (its job
    is then interrupted), not have them die under it (the job would fail). SIGTERM still
    ends them: the supervisor sends it only to processes whose parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(owner)


def _die_with(owner: int) -> None:
    """End this planner when process `owner` (the printer that made the pool) ends.

    A planner's parent is the multiprocessing fork server, not the printer, and the fork
    server lives as long as any planner does (each holds its "alive" pipe), so neither
    notices a printer killed with SIGKILL outside `gotapi-3dp up`: they lived on, orphaned.
    A pidfd (Linux >= 5.3) becomes readable when `owner` exits; a daemon thread waits on it.
    Elsewhere this does nothing.
    """
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(1)  # the printer ended before this planner came up
    except (AttributeError, OSError):
        return

    def watch() -> None:
        select.select([pidfd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


# ---------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class GcodeChunk:
    """A piece of the G-code stream, in file order.

    kind : "start" (start G-code, E mode, `;LAYER_COUNT:`), "layer" (one layer, from its
      `;LAYER:n` line) or "end" (`;END_GCODE` and the end G-code; `result` is set)
    index : layer number for "layer"; -1 for "start"; `layers` for "end"
    layers : total layer count (known from the first chunk on)
    z : nozzle height of the layer (0 for "start", the last layer's for "end")
    lines : G-code lines without newlines
    result : the finished `SliceResult`, on the "end" chunk only
    """

    kind: str
    index: int
    layers: int
    z: float
    lines: list[str]
    result: SliceResult | None = None


class SliceStream:
    """The chunks of one slice; iterate it (once) or use it as a context manager.

    Creating it (`stream_gcode`) loads and checks the model, so model errors are raised
    there; planning runs while the chunks are consumed. `close()` (or leaving the `with`
    block) stops the worker processes early, e.g. on a cancelled job. `rings` may be a
    Future of the sectioning, with `first` the rings layer 0 needs (see `planned_layers`).
    """

    def __init__(self, rings: geometry.Rings | Future, tops: np.ndarray, profile: SliceProfile,
                 pool: ProcessPoolExecutor | None = None,
                 first: geometry.Rings | None = None) -> None:
        self.layers = len(tops)
        self._pool = pool
        self.height = float(tops[-1])
        self.profile = profile
        self.head = Toolhead(profile)
        self._chunks = self._generate(rings, tops, first)

    def __iter__(self) -> Iterator[GcodeChunk]:
        return self._chunks

    def __next__(self) -> GcodeChunk:
        return next(self._chunks)

    def __enter__(self) -> SliceStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._chunks.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _generate(self, rings: geometry.Rings | Future, tops: np.ndarray,
                  first: geometry.Rings | None) -> Iterator[GcodeChunk]:
        p, head, height = self.profile, self.head, 0.0
        yield GcodeChunk("start", -1, self.layers, 0.0, toolhead.start_gcode(p, self.layers))
        try:
            for plan in planned_layers(rings, tops, p, self._pool, first):
                height = plan.z
                yield GcodeChunk("layer", plan.index, self.layers, plan.z, head.layer(plan))
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
        if head.filament_mm <= 0:
            raise P3DError(ErrorCode.MODEL_INVALID,
                           "nothing printable: every part is thinner than one line width")
        yield GcodeChunk("end", self.layers, self.layers, height, toolhead.end_gcode(p),
                         self.result(height))

    def result(self, height: float) -> SliceResult:
        head = self.head
        return SliceResult(layers=self.layers, lines=0, height=height, bounds=head.bounds(),
                           filament_mm=head.filament_mm, estimated_seconds=head.seconds,
                           filament_g=head.filament_grams())


def stream_gcode(model: Path, profile: SliceProfile) -> SliceStream:
    """Load and check `model`, and return the stream of its G-code chunks.

    Raises P3DError(MODEL_INVALID) for a model that cannot be printed, before any chunk.
    The stream yields one "start" chunk, then one "layer" chunk per layer in order, each as
    soon as it is planned, then one "end" chunk carrying the `SliceResult` (its `lines` is
    0: a stream has no file). `header_lines(result, profile)` gives the Cura-style header
    (estimated time, filament) that only the end of the stream can know.

    For a fast first layer only the planes layer 0 needs are sectioned here; the rest are
    sectioned on a thread while layer 0 is planned. If those planes hold no ring at all,
    everything is sectioned first, so "nothing printable" is still raised before any chunk.
    """
    _check_profile(profile)
    pool = start_pool(profile)                  # workers start while the model loads
    try:
        mesh, topology = _load(Path(model), profile)
        tops, mids = layer_mids(count_layers(float(mesh.bounds[1, 2]), profile), profile)
        first = topology.section(mids[:layer_plan.needed_layers(0, 1, len(tops), profile)[1]])
        if len(first.layer) == 0:
            return SliceStream(_require_rings(topology.section(mids)), tops, profile, pool)
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    return SliceStream(_in_thread(topology.section, mids), tops, profile, pool, first)


def header_lines(stream: SliceStream) -> list[str]:
    """The Cura-style header of a finished stream (`;TIME:`, `;Filament used:`, bounds)."""
    return toolhead.header(stream.head, stream.layers, stream.height)


def iter_layers(mesh: trimesh.Trimesh,
                profile: SliceProfile) -> Iterator[tuple[int, float, list[str]]]:
    """(index, z, G-code lines) of each layer of a mesh already placed (`load_mesh`)."""
    rings, tops = section_layers(mesh, profile)
    stream = SliceStream(rings, tops, profile)
    return ((c.index, c.z, c.lines) for c in stream if c.kind == "layer")


def _check_profile(profile: SliceProfile) -> None:
    from .profile import ProfileError, validate
    try:
        validate(profile)
    except ProfileError as exc:
        raise P3DError(ErrorCode.SLICE_FAILED, f"bad slicer profile: {exc}") from None


# ---------------------------------------------------------------------------- files


def slice_file(model: Path, out: Path, profile: SliceProfile,
               progress: Callable[[int, int], None] | None = None) -> SliceResult:
    """Slice `model` into G-code at `out` (temp file in the same directory, fsync, rename).

    progress(layers_done, layers_total) is called once per layer; an exception it raises
    stops slicing (the worker processes too) and propagates unchanged. Any other failure
    is a P3DError: MODEL_INVALID for the model, SLICE_FAILED for the rest.
    """
    out = Path(out)
    with stream_gcode(Path(model), profile) as stream:
        count, result = 0, None
        with tempfile.TemporaryFile("w+", dir=out.parent, encoding="ascii") as body:
            for chunk in _checked(stream):
                body.write("\n".join(chunk.lines) + "\n")
                count += len(chunk.lines)
                if chunk.kind == "layer" and progress is not None:
                    progress(chunk.index + 1, chunk.layers)
                result = chunk.result or result
            assert result is not None
            top = header_lines(stream)
            body.seek(0)
            _write_atomic(out, top, body, [])
    return dataclasses.replace(result, lines=len(top) + count)


def _checked(chunks: Iterable[GcodeChunk]) -> Iterator[GcodeChunk]:
    """The chunks, with unexpected slicing errors turned into P3DError(SLICE_FAILED)."""
    try:
        yield from chunks
    except P3DError:
        raise
    except Exception as exc:
        raise P3DError(ErrorCode.SLICE_FAILED,
                       f"slicing failed: {type(exc).__name__}: {exc}") from exc


def _write_atomic(out: Path, top: list[str], body: IO[str], tail: list[str]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with open(fd, "w", encoding="ascii", newline="\n") as fh:
            fh.write("\n".join(top) + "\n")
            while chunk := body.read(1 << 20):
                fh.write(chunk)
            if tail:
                fh.write("\n".join(tail) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(out.parent)
