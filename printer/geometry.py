"""Layer geometry for the slicer: mesh sectioning into outlines, wall offsets, infill clipping.

The only module of the printer that touches shapely. Sectioning is topological, like slic3r:
every (mesh edge, plane) crossing is one node, computed once from the edge's two vertices, so
the two faces that share an edge produce bit-identical points and rings close without any
coordinate merging. Segments are oriented by the face winding, so each layer's outline is the
nonzero-winding region of its rings: intersecting shells give the union of what they enclose,
an inside-out mesh still prints, and open chains (holes in the mesh) are dropped.

All layers are sectioned in one vectorised pass (the only loops are over pointer-jumping
rounds); the per-layer shapely work is done lazily by the caller, one layer at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry.base import BaseGeometry

# Tolerances, defined once (millimetres).
RESOLUTION = 0.0125      # outlines and wall paths are simplified to this (PrusaSlicer's default)
MIN_RING_AREA = 1e-4     # rings enclosing less than this (mm^2) are noise
MIN_FILL_LENGTH = 0.2    # infill pieces shorter than this are not worth a start and a stop
WINDING_CHUNK = 1 << 22  # segments x points evaluated at once by `winding_numbers`


@dataclass(frozen=True)
class Rings:
    """Closed, oriented section rings of every layer.

    coords : (n, 2) float64, ring after ring, each ring not repeating its first point
    offsets : (r + 1,) int64, ring i is coords[offsets[i]:offsets[i + 1]]
    layer : (r,) int64, the plane index of each ring, ascending
    shell : (r,) int64, the connected surface (shell) each ring was cut from: label >= 0
      for a closed shell, -1 - label for an open one (boundary edges: orientation unreliable)
    """

    coords: np.ndarray
    offsets: np.ndarray
    layer: np.ndarray
    shell: np.ndarray

    def of_layer(self, index: int) -> tuple[list[np.ndarray], np.ndarray]:
        """One layer's rings, a list of (m, 2) float64, and their (m,) int shells."""
        lo, hi = np.searchsorted(self.layer, [index, index + 1])
        rings = [self.coords[self.offsets[i]:self.offsets[i + 1]] for i in range(lo, hi)]
        return rings, self.shell[lo:hi]

    def subset(self, first: int, last: int) -> Rings:
        """The rings of layers first .. last - 1 (layer numbers kept), for a worker process."""
        lo, hi = np.searchsorted(self.layer, [first, last])
        offsets = self.offsets[lo:hi + 1]
        return Rings(self.coords[offsets[0]:offsets[-1]], offsets - offsets[0],
                     self.layer[lo:hi], self.shell[lo:hi])


def section(vertices: np.ndarray, faces: np.ndarray, edges: np.ndarray,
            face_edges: np.ndarray, heights: np.ndarray,
            face_shell: np.ndarray | None = None) -> Rings:
    """Section a mesh by horizontal planes, all at once, into closed oriented rings.

    Parameters
    ----------
    vertices : (v, 3) float, faces : (f, 3) int (counter-clockwise seen from outside)
    edges : (e, 2) int, unique edges; face_edges : (f, 3) int, edge j of face i joins
      vertex j to vertex j + 1 (trimesh's `edges_unique` and `faces_unique_edges`)
    heights : (k,) float, ascending plane heights
    face_shell : (f,) int, `shells(face_edges, len(edges))` when the caller already has it
      (sectioning a few planes first and the rest later labels the shells once)

    A vertex exactly on a plane counts as above it, so every crossed face yields exactly one
    segment and the rings of a closed mesh are closed. Each ring remembers its shell (faces
    joined by shared edges, non-manifold ones included) and whether that shell is open.
    """
    vertices = np.asanyarray(vertices, dtype=np.float64)
    heights = np.asanyarray(heights, dtype=np.float64)
    face, plane = _face_plane_pairs(vertices[:, 2][faces], heights)
    start, end = _segment_nodes(vertices, faces, edges, face_edges, heights, face, plane)
    keys, inverse = np.unique(np.concatenate([start, end]), return_inverse=True)
    points = _node_points(vertices, edges, heights, keys)
    s, e = inverse[:len(start)], inverse[len(start):]
    order, ring_id = _cycles(s, e)
    by_layer = np.argsort(plane[order], kind="stable")     # keeps each cycle contiguous
    order, ring_id = order[by_layer], ring_id[by_layer]
    if face_shell is None:
        face_shell = shells(face_edges, len(edges))
    shell = face_shell[face[order]]
    return _rings(points[s[order]], ring_id, plane[order], shell)


def edge_topology(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edges, face_edges): the (e, 2) unique edges, smaller vertex first, and (f, 3) the
    edge of each face side (side j joins vertex j to vertex j + 1).

    What trimesh's `edges_unique`/`faces_unique_edges` give, in a third of the time (one
    integer sort, no row hashing), and without trimesh's cache, so threads can share it.
    """
    sides = np.asarray(faces, dtype=np.int64)[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    lo, hi = np.minimum(sides[:, 0], sides[:, 1]), np.maximum(sides[:, 0], sides[:, 1])
    key = lo * (int(hi.max(initial=0)) + 1) + hi
    order = np.argsort(key)
    ordered = key[order]
    new = np.empty(len(ordered), dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    edge_of = np.empty(len(ordered), dtype=np.int64)
    edge_of[order] = np.cumsum(new) - 1
    first = order[new]
    return np.stack([lo[first], hi[first]], axis=1), edge_of.reshape(-1, 3)


def shells(face_edges: np.ndarray, edge_count: int) -> np.ndarray:
    """(f,) int: shell label of each face (faces joined by any shared edge), -1 - label if open.

    A shell is open when one of its edges belongs to an odd number of its faces.
    """
    faces = len(face_edges)
    edge = np.asarray(face_edges).ravel()
    rows = np.repeat(np.arange(faces), 3)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, faces + edge)),
                       shape=(faces + edge_count,) * 2)
    _, labels = connected_components(graph, directed=False)
    odd = np.bincount(edge, minlength=edge_count) % 2 == 1
    open_shell = np.zeros(labels.max() + 1, dtype=bool)
    open_shell[labels[faces + np.flatnonzero(odd)]] = True
    return np.where(open_shell[labels[:faces]], -1 - labels[:faces], labels[:faces])


def _face_plane_pairs(face_z: np.ndarray, heights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p,) face and (p,) plane index of every face crossing every plane (min < h <= max)."""
    z0, z1, z2 = face_z[:, 0], face_z[:, 1], face_z[:, 2]     # columns: no short-axis reduce
    lo = np.searchsorted(heights, np.minimum(np.minimum(z0, z1), z2), side="right")
    hi = np.searchsorted(heights, np.maximum(np.maximum(z0, z1), z2), side="right")
    counts = hi - lo
    face = np.repeat(np.arange(len(face_z)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    plane = lo[face] + np.arange(len(face)) - first
    return face, plane


def _segment_nodes(vertices: np.ndarray, faces: np.ndarray, edges: np.ndarray,
                   face_edges: np.ndarray, heights: np.ndarray, face: np.ndarray,
                   plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Node keys (edge * k + plane) of each segment's start and end, (p,) int64 each.

    Walking a face's edges in order, one edge goes from above to below the plane and one
    from below to above; the segment runs from the first crossing to the second, which
    makes outer rings counter-clockwise for outward-facing triangles.
    """
    z, h = vertices[:, 2], heights[plane]
    a0, a1, a2 = (z[faces[face, j]] >= h for j in range(3))                # vertex j above
    down = np.where(a0 & ~a1, 0, np.where(a1 & ~a2, 1, 2))                 # edge j: above -> below
    up = np.where(~a0 & a1, 0, np.where(~a1 & a2, 1, 2))                   # edge j: below -> above
    k = np.int64(len(heights))
    start, end = face_edges[face, down], face_edges[face, up]
    return start.astype(np.int64) * k + plane, end.astype(np.int64) * k + plane


def _node_points(vertices: np.ndarray, edges: np.ndarray, heights: np.ndarray,
                 keys: np.ndarray) -> np.ndarray:
    """(n, 2) float64 XY where each keyed edge crosses its plane."""
    edge, plane = np.divmod(keys, len(heights))
    a, b = vertices[edges[edge, 0]], vertices[edges[edge, 1]]
    t = (heights[plane] - a[:, 2]) / (b[:, 2] - a[:, 2])
    return a[:, :2] + t[:, None] * (b[:, :2] - a[:, :2])


def _cycles(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chain segments into closed cycles; open chains are dropped.

    Parameters
    ----------
    start, end : (s,) int, node of each directed segment

    Returns
    -------
    order : (c,) int, closed segments, cycle by cycle, each in walking order
    ring : (c,) int, cycle label of each (the smallest segment index in it)

    Where several segments meet at one node (non-manifold edges) incoming and outgoing ones
    are paired arbitrarily: the winding numbers, hence the filled region, do not depend on it.
    """
    nxt = _successors(start, end)
    rounds = max(1, int(np.ceil(np.log2(max(len(start), 2)))) + 1)
    jump, label = nxt.copy(), np.arange(len(start))
    for _ in range(rounds):
        ok = jump >= 0
        label = np.where(ok, np.minimum(label, label[np.where(ok, jump, 0)]), label)
        jump = np.where(ok, jump[np.where(ok, jump, 0)], -1)
    closed = jump >= 0
    root = closed & (label == np.arange(len(start)))
    steps = _steps_to_root(nxt, root, closed)
    length = np.bincount(label[closed], minlength=len(start))[label]
    position = (length - steps) % np.maximum(length, 1)
    idx = np.flatnonzero(closed)
    order = idx[np.lexsort((position[idx], label[idx]))]
    return order, label[order]


def _successors(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """(s,) int: the segment leaving the node where each segment ends, or -1."""
    def ranked(node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(node, kind="stable")
        sorted_node = node[order]
        first = np.searchsorted(sorted_node, sorted_node, side="left")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(node)) - first
        return order, rank

    width = np.int64(len(start) + 1)
    _, out_rank = ranked(start)
    _, in_rank = ranked(end)
    out_key = start.astype(np.int64) * width + out_rank
    in_key = end.astype(np.int64) * width + in_rank
    sorter = np.argsort(out_key)
    pos = np.searchsorted(out_key, in_key, sorter=sorter).clip(max=len(start) - 1)
    cand = sorter[pos] if len(start) else pos
    return np.where(out_key[cand] == in_key, cand, -1)


def _steps_to_root(nxt: np.ndarray, root: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """(s,) int: steps from each closed segment forward to its cycle's root (list ranking)."""
    here = np.arange(len(nxt))
    jump = np.where(root | ~closed, here, nxt)
    steps = np.where(root | ~closed, 0, 1)
    rounds = max(1, int(np.ceil(np.log2(max(len(nxt), 2)))) + 1)
    for _ in range(rounds):
        steps = steps + steps[jump]
        jump = jump[jump]
    return steps


def _rings(points: np.ndarray, ring_id: np.ndarray, plane: np.ndarray,
           shell: np.ndarray) -> Rings:
    """Pack cycle points (grouped by layer, then ring) into `Rings`, dropping empty rings."""
    if len(points) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Rings(np.zeros((0, 2)), np.zeros(1, dtype=np.int64), empty, empty)
    starts = np.flatnonzero(np.r_[True, ring_id[1:] != ring_id[:-1]])
    area = signed_areas(points, starts)
    keep = np.abs(area) >= MIN_RING_AREA
    ends = np.r_[starts[1:], len(points)]
    mask = np.repeat(keep, ends - starts)
    counts = (ends - starts)[keep]
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return Rings(points[mask], offsets, plane[starts][keep], shell[starts][keep])


def signed_areas(points: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(r,) float: shoelace area of each implicitly closed ring; positive = counter-clockwise.

    points : (n, 2) float, rings back to back; starts : (r,) int, first point of each ring
    """
    ring = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(points)]))
    following = np.arange(len(points)) + 1
    ends = np.r_[starts[1:], len(points)]
    following[ends - 1] = starts
    x, y = points[:, 0], points[:, 1]
    cross = x * y[following] - x[following] * y
    return 0.5 * np.bincount(ring, weights=cross, minlength=len(starts))


def winding_numbers(rings: list[np.ndarray], points: np.ndarray) -> np.ndarray:
    """(p,) int: winding number of each (p, 2) point about the directed rings."""
    a = np.concatenate(rings)
    b = np.concatenate([np.roll(r, -1, axis=0) for r in rings])
    total = np.zeros(len(points), dtype=np.int64)
    step = max(1, WINDING_CHUNK // max(len(a), 1))
    for lo in range(0, len(points), step):
        p = points[lo:lo + step]
        px, py = p[None, :, 0], p[None, :, 1]
        side = ((b[:, None, 0] - a[:, None, 0]) * (py - a[:, None, 1])
                - (b[:, None, 1] - a[:, None, 1]) * (px - a[:, None, 0]))
        up = (a[:, None, 1] <= py) & (b[:, None, 1] > py) & (side > 0)
        down = (a[:, None, 1] > py) & (b[:, None, 1] <= py) & (side < 0)
        total[lo:lo + step] = up.sum(axis=0) - down.sum(axis=0)
    return total


def outline(rings: list[np.ndarray], shell: np.ndarray | None = None) -> BaseGeometry:
    """One layer's region: where its directed rings wind nonzero, simplified and valid.

    rings : list of (m, 2) float; shell : (len(rings),) int from `Rings.shell`, or None.
    Closed shells keep their orientation, so an inverted inner shell is a cavity; the rings
    of an open shell (< 0) are turned to enclose positive area, since its faces' orientation
    cannot be trusted. Overlapping shells then give the union of what they enclose.
    """
    if not rings:
        return shapely.Polygon()
    if shell is not None and np.any(np.asarray(shell) < 0):
        rings = _orient_open(rings, np.asarray(shell))
    simple = shapely.simplify(_nonzero(rings), RESOLUTION, preserve_topology=False)
    region = shapely.make_valid(simple)
    return polygons_only(region)


def _orient_open(rings: list[np.ndarray], shell: np.ndarray) -> list[np.ndarray]:
    """Reverse the rings of each open shell whose rings enclose negative area in total."""
    starts = np.cumsum([0] + [len(r) for r in rings])[:-1]
    area = signed_areas(np.concatenate(rings), starts)
    _, group = np.unique(shell, return_inverse=True)
    total = np.bincount(group, weights=area)
    flip = (shell < 0) & (total[group] < 0)
    return [r[::-1] if f else r for r, f in zip(rings, flip)]


def _nonzero(rings: list[np.ndarray]) -> BaseGeometry:
    """The region where directed rings have a nonzero winding number."""
    closed = [np.vstack([r, r[:1]]) for r in rings]
    if len(rings) == 1:
        return shapely.make_valid(shapely.Polygon(closed[0]))
    index = np.repeat(np.arange(len(closed)), [len(c) for c in closed])
    lines = shapely.union_all(shapely.linestrings(np.concatenate(closed), indices=index))
    faces = shapely.get_parts(shapely.polygonize(shapely.get_parts(lines)))
    faces = faces[shapely.area(faces) > 0]
    if len(faces) == 0:
        return shapely.Polygon()
    probe = shapely.get_coordinates(shapely.point_on_surface(faces))
    return shapely.union_all(faces[winding_numbers(rings, probe) != 0])


def polygons_only(geometry: BaseGeometry) -> BaseGeometry:
    """The polygons of a geometry (lines and points dropped) as a (Multi)Polygon."""
    parts = shapely.get_parts(geometry)
    polys = [p for p in parts if isinstance(p, shapely.Polygon) and p.area >= MIN_RING_AREA]
    return shapely.MultiPolygon(polys) if polys else shapely.Polygon()


def islands(region: BaseGeometry) -> list[BaseGeometry]:
    """The separate polygons of a region."""
    return [p for p in shapely.get_parts(region) if not p.is_empty]


def inset(region: BaseGeometry, distance: float) -> BaseGeometry:
    """Region shrunk by `distance` (mm), reflex corners rounded, simplified."""
    grown = shapely.buffer(region, -distance, quad_segs=4)
    simple = shapely.simplify(grown, RESOLUTION, preserve_topology=False)
    return polygons_only(shapely.make_valid(simple))


def opened(region: BaseGeometry, radius: float) -> BaseGeometry:
    """Region with every part narrower than 2 * radius removed (morphological opening)."""
    if region.is_empty or radius <= 0:
        return polygons_only(region)
    grown = shapely.buffer(shapely.buffer(region, -radius, quad_segs=2), radius, quad_segs=2)
    return polygons_only(shapely.make_valid(shapely.intersection(grown, region)))


def grown_within(region: BaseGeometry, distance: float, limit: BaseGeometry) -> BaseGeometry:
    """Region grown by `distance` (mm), clipped to `limit`; unchanged if either is empty."""
    if region.is_empty or distance <= 0:
        return region
    grown = shapely.buffer(region, distance, quad_segs=4)
    return polygons_only(shapely.make_valid(shapely.intersection(grown, limit)))


def ring_area(loop: np.ndarray) -> float:
    """Signed shoelace area of one (m, 2) loop; positive = counter-clockwise."""
    return float(signed_areas(loop, np.zeros(1, dtype=np.int64))[0])


def loops(region: BaseGeometry) -> list[np.ndarray]:
    """Boundary loops of a region, outer ones counter-clockwise, holes clockwise.

    Returns a list of (m, 2) float64, each without its closing point.
    """
    if region.is_empty:
        return []
    oriented = shapely.orient_polygons(region)
    rings = shapely.get_rings(shapely.get_parts(oriented))
    return [shapely.get_coordinates(r)[:-1] for r in rings if shapely.get_num_coordinates(r) > 3]


def rectilinear(region: BaseGeometry, spacing: float, angle_deg: float) -> np.ndarray:
    """Parallel infill lines clipped to `region`, in back-and-forth printing order.

    Lines are spaced `spacing` apart on a grid fixed to the bed origin, so the same angle
    lines up from layer to layer. Returns (m, 2, 2) float64 segments (start, end).
    """
    if region.is_empty or spacing <= 0:
        return np.zeros((0, 2, 2))
    angle = np.radians(angle_deg)
    d = np.array([np.cos(angle), np.sin(angle)])
    n = np.array([-d[1], d[0]])
    corners = shapely.get_coordinates(shapely.envelope(region))
    along, across = corners @ d, corners @ n
    k = np.arange(np.floor(across.min() / spacing), np.ceil(across.max() / spacing) + 1)
    base = (k * spacing)[:, None] * n
    ends = np.stack([base + (along.min() - 1) * d, base + (along.max() + 1) * d], axis=1)
    shapely.prepare(region)
    clipped = shapely.intersection(shapely.linestrings(ends), region)
    parts, line = shapely.get_parts(clipped, return_index=True)
    keep = (shapely.get_type_id(parts) == 1) & (shapely.length(parts) >= MIN_FILL_LENGTH)
    parts, line = parts[keep], line[keep]
    if len(parts) == 0:
        return np.zeros((0, 2, 2))
    segs = np.stack([shapely.get_coordinates(shapely.get_point(parts, 0)),
                     shapely.get_coordinates(shapely.get_point(parts, -1))], axis=1)
    t = segs @ d                                                        # (m, 2)
    segs = np.where((t[:, 0] > t[:, 1])[:, None, None], segs[:, ::-1], segs)
    first = np.minimum(t[:, 0], t[:, 1])
    flip = line % 2 == 1
    order = np.lexsort((np.where(flip, -first, first), line))
    segs, flip = segs[order], flip[order]
    return np.where(flip[:, None, None], segs[:, ::-1], segs)


def contains_segments(region: BaseGeometry, segments: np.ndarray, tolerance: float) -> np.ndarray:
    """(m,) bool: whether each (m, 2, 2) segment lies within region grown by `tolerance`."""
    grown = shapely.buffer(region, tolerance)
    shapely.prepare(grown)
    return shapely.within(shapely.linestrings(segments), grown)
