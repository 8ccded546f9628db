"""Per-layer toolpath planning: section rings in, walls, skin, sparse infill and skirt out.

No G-code here and no state carried between layers except the outlines a layer needs for
skin detection, so batches of layers can be planned in separate processes: `plan_batch`
takes the section rings of a batch plus the `bottom_layers` below and `top_layers` above it
and returns one picklable `LayerPlan` per layer (numpy paths and shapely regions).

Skin (solid infill) of layer i is the part of its infill area that is not covered by every
one of the `top_layers` layers above and the `bottom_layers` layers below; beyond the model
counts as uncovered, so the first and last layers are solid. Skin then grows by the wall
thickness into the sparse part, and sparse pieces under `solid_infill_below_area` become skin.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from gotapi3dp.config import SliceProfile

from . import geometry

INFILL_OVERLAP = 0.15        # fraction of a line width the infill overlaps the innermost wall
SKIN_MIN_WIDTH = 0.5         # fraction of a line width: skin narrower than this is dropped
EMPTY_SEGMENTS = np.zeros((0, 2, 2))


@dataclass
class Island:
    """One connected piece of a layer and its paths.

    region : the island's outline (shapely Polygon), for travel checks
    walls : list over levels (0 = outer) of lists of (m, 2) float loops, without closing point
    skin, infill : (k, 2, 2) float segments in printing order
    """

    region: BaseGeometry
    walls: list[list[np.ndarray]]
    skin: np.ndarray = field(default_factory=lambda: EMPTY_SEGMENTS)
    infill: np.ndarray = field(default_factory=lambda: EMPTY_SEGMENTS)


@dataclass
class LayerPlan:
    """Everything printed on one layer; skirt is a list of (m, 2) float loops (layer 0 only)."""

    index: int
    z: float
    thickness: float
    width: float
    islands: list[Island]
    skirt: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True)
class Batch:
    """Work for one planner call: layers lo..hi-1 of `count`; rings hold the layers needed."""

    lo: int
    hi: int
    count: int
    tops: np.ndarray
    rings: geometry.Rings
    profile: SliceProfile


def needed_layers(lo: int, hi: int, count: int, profile: SliceProfile) -> tuple[int, int]:
    """The layer range whose outlines planning layers lo..hi-1 needs (skin looks around)."""
    return max(0, lo - profile.bottom_layers), min(count, hi + profile.top_layers)


def plan_batch(batch: Batch) -> list[LayerPlan]:
    """Plan layers batch.lo .. batch.hi - 1; the entry point of the worker processes."""
    p = batch.profile
    first, last = needed_layers(batch.lo, batch.hi, batch.count, p)
    outlines = {i: geometry.outline(*batch.rings.of_layer(i)) for i in range(first, last)}
    shapely.prepare(list(outlines.values()))
    return [plan_layer(i, float(batch.tops[i]), outlines, batch.count, p)
            for i in range(batch.lo, batch.hi)]


def layer_width(index: int, profile: SliceProfile) -> float:
    return profile.first_layer_line_width if index == 0 else profile.line_width


def layer_thickness(index: int, profile: SliceProfile) -> float:
    return profile.first_layer_height if index == 0 else profile.layer_height


def plan_layer(index: int, z: float, outlines: dict[int, BaseGeometry], count: int,
               profile: SliceProfile) -> LayerPlan:
    """Walls, skin and infill of every island of layer `index`, and the skirt on layer 0."""
    width = layer_width(index, profile)
    cover = _covered(index, outlines, count, profile)
    islands = [island for piece in geometry.islands(outlines[index])
               if (island := _plan_island(piece, index, width, cover, profile)) is not None]
    skirt = _skirt(outlines[0], width, profile) if index == 0 else []
    return LayerPlan(index, z, layer_thickness(index, profile), width, islands, skirt)


def _covered(index: int, outlines: dict[int, BaseGeometry], count: int,
             profile: SliceProfile) -> list[BaseGeometry] | None:
    """Outlines that must all cover a spot for it to stay sparse; None: nothing is solid."""
    around = [*range(index - profile.bottom_layers, index),
              *range(index + 1, index + 1 + profile.top_layers)]
    if any(j < 0 or j >= count for j in around):
        return []                                   # near the bottom or top: all solid
    if not around:
        return None
    return [outlines[j] for j in around]


def _plan_island(piece: BaseGeometry, index: int, width: float,
                 cover: list[BaseGeometry] | None, profile: SliceProfile) -> Island | None:
    walls = [geometry.loops(geometry.inset(piece, width * (level + 0.5)))
             for level in range(profile.perimeters)]
    depth = width * (profile.perimeters - INFILL_OVERLAP) if profile.perimeters else width / 2
    inner = geometry.inset(piece, depth) if profile.perimeters else piece
    sparse, skin = _split_solid(inner, cover, width, width * profile.perimeters)
    if profile.infill_density > 0:
        sparse, skin = _solidify_small(sparse, skin, profile.solid_infill_below_area)
    island = Island(piece, [w for w in walls if w])
    angle = profile.infill_angle if index % 2 == 0 else -profile.infill_angle
    island.skin = geometry.rectilinear(skin, width, angle)
    island.infill = _sparse_infill(sparse, width, angle, profile)
    if island.walls or len(island.skin) or len(island.infill):
        return island
    return None


def _split_solid(inner: BaseGeometry, cover: list[BaseGeometry] | None, width: float,
                 expand: float) -> tuple[BaseGeometry, BaseGeometry]:
    """(sparse, skin) parts of an island's infill area.

    Skin narrower than SKIN_MIN_WIDTH line widths is dropped; the rest grows by `expand` mm
    (the wall thickness) into the sparse part, so its edges rest on infill lines, not gaps.
    """
    if cover is None or inner.is_empty:
        return inner, shapely.Polygon()
    if not cover:
        return shapely.Polygon(), inner
    sparse = inner
    for outline in cover:
        if shapely.covers(outline, sparse):          # prepared: cheap, and the usual case
            continue
        sparse = geometry.polygons_only(shapely.intersection(sparse, outline))
        if sparse.is_empty:
            return sparse, inner
    if sparse is inner:
        return inner, shapely.Polygon()
    skin = geometry.opened(shapely.difference(inner, sparse), width * SKIN_MIN_WIDTH / 2)
    skin = geometry.grown_within(skin, expand, inner)
    return geometry.polygons_only(shapely.difference(inner, skin)), skin


def _solidify_small(sparse: BaseGeometry, skin: BaseGeometry,
                    below: float) -> tuple[BaseGeometry, BaseGeometry]:
    """Move sparse pieces smaller than `below` mm^2 to the skin: they would hold only a few
    unanchored infill stubs that support nothing."""
    pieces = geometry.islands(sparse)
    small = [p for p in pieces if p.area < below]
    if not small:
        return sparse, skin
    keep = [p for p in pieces if p.area >= below]
    return (shapely.MultiPolygon(keep) if keep else shapely.Polygon(),
            geometry.polygons_only(shapely.union_all([skin, *small])))


def _sparse_infill(region: BaseGeometry, width: float, angle: float,
                   profile: SliceProfile) -> np.ndarray:
    density = min(max(profile.infill_density, 0.0), 1.0)
    if density <= 0 or region.is_empty:
        return EMPTY_SEGMENTS
    if profile.infill_pattern == "grid":
        spacing = 2 * width / density
        first = geometry.rectilinear(region, spacing, profile.infill_angle)
        second = geometry.rectilinear(region, spacing, -profile.infill_angle)
        return np.concatenate([first, second]) if len(second) else first
    return geometry.rectilinear(region, width / density, angle)


def _skirt(first: BaseGeometry, width: float, profile: SliceProfile) -> list[np.ndarray]:
    """`skirt_loops` loops around the first layer, `skirt_distance` mm from it."""
    if profile.skirt_loops <= 0 or first.is_empty:
        return []
    hull = geometry.polygons_only(shapely.union_all(
        [shapely.Polygon(p.exterior) for p in geometry.islands(first)]))
    loops = []
    for k in range(profile.skirt_loops):
        grown = geometry.inset(hull, -(profile.skirt_distance + width * (k + 0.5)))
        loops += [loop for loop in geometry.loops(grown) if geometry.ring_area(loop) > 0]
    return loops
