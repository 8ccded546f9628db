"""Slicer features: skin, skirt, wall order, grid, E modes, combing, streaming, profiles."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import shapely
import trimesh
from hypothesis import given, settings
from hypothesis import strategies as st

from gotapi3dp.config import SliceProfile
from gotapi3dp.wire.errors import P3DError
from printer import geometry, layer_plan, slicer
from printer import profile as profiles

from .test_slicer import (
    MODELS,
    NO_SKIRT,
    PROFILE,
    assert_retracted_around,
    box_file,
    crossing_travels,
    parse,
    slice_to_text,
)


def layer_outlines(model: Path, profile: SliceProfile) -> list:
    mesh = slicer.load_mesh(model, profile)
    rings, tops = slicer.section_layers(mesh, profile)
    return [geometry.outline(*rings.of_layer(i)) for i in range(len(tops))]


def assert_inside_outlines(text: str, outlines: list) -> None:
    for layer, outline in zip(parse(text), outlines):
        grown = outline.buffer(0.01)
        segments = shapely.linestrings([[m.start, m.end] for m in layer.model])
        assert shapely.within(segments, grown).all(), f"layer {layer.index} leaves its outline"


def test_teapot_extrusions_stay_inside_each_layer_outline(tmp_path):
    model = MODELS / "teapot.stl"
    _, text = slice_to_text(tmp_path, model)
    assert_inside_outlines(text, layer_outlines(model, PROFILE))


def test_two_islands_retract_between_not_within(tmp_path):
    a, b = trimesh.creation.box((10, 10, 1)), trimesh.creation.box((10, 10, 1))
    b.apply_translation([20, 0, 0])
    path = tmp_path / "two.stl"
    trimesh.util.concatenate([a, b]).export(path)
    _, text = slice_to_text(tmp_path, path)
    outlines = layer_outlines(path, PROFILE)
    for layer, outline in zip(parse(text), outlines):
        crossing = crossing_travels(layer, outline)
        assert len(crossing) >= 1          # from one island to the other
        for i in crossing:
            assert_retracted_around(layer, i)


def test_skirt_surrounds_the_first_layer_only(tmp_path):
    _, text = slice_to_text(tmp_path, box_file(tmp_path, (20, 20, 2)))
    layers = parse(text)
    skirt = [m for m in layers[0].extrusions if m.kind == "SKIRT"]
    loop = shapely.Polygon([m.start for m in skirt])
    body = shapely.box(100, 100, 120, 120)
    assert loop.contains(body)
    gap = PROFILE.skirt_distance + PROFILE.first_layer_line_width / 2
    assert body.exterior.distance(loop.exterior) == pytest.approx(gap, abs=0.1)  # chords
    assert all(m.kind != "SKIRT" for layer in layers[1:] for m in layer.extrusions)


def test_skin_on_bottom_and_top_layers_sparse_between(tmp_path):
    _, text = slice_to_text(tmp_path, box_file(tmp_path, (20, 20, 4)))   # 20 layers
    kinds = [{m.kind for m in layer.model} for layer in parse(text)]
    for index, found in enumerate(kinds):
        solid = index < 4 or index >= 16
        assert ("SKIN" in found) == solid and ("FILL" in found) != solid, (index, found)


def test_skin_over_a_hole_below_an_overhang(tmp_path):
    base = trimesh.creation.box((20, 20, 3))
    top = trimesh.creation.box((30, 30, 3))
    top.apply_translation([0, 0, 3])
    path = tmp_path / "t.stl"
    trimesh.util.concatenate([base, top]).export(path)
    layers = parse(slice_to_text(tmp_path, path, NO_SKIRT)[1])
    overhang = layers[15]                  # first layer of the wide part: solid where unsupported
    skin = [m for m in overhang.model if m.kind == "SKIN"]
    fill = [m for m in overhang.model if m.kind == "FILL"]
    assert skin and fill
    base = shapely.box(100, 100, 120, 120).buffer(0.5)   # sparse only where supported below
    assert shapely.within(shapely.linestrings([[m.start, m.end] for m in fill]), base).all()
    ring = shapely.box(95, 95, 125, 125).difference(base)
    assert any(shapely.LineString([m.start, m.end]).intersects(ring) for m in skin)
    middle = layers[22]
    assert {m.kind for m in middle.model} >= {"FILL"}
    anchored = shapely.box(100, 100, 120, 120).buffer(-0.5)   # skin grown by the wall thickness
    assert any(shapely.LineString([m.start, m.end]).intersects(anchored) for m in skin)


@pytest.mark.parametrize("below, sparse", [(70.0, False), (0.0, True)])
def test_small_sparse_regions_print_solid(tmp_path, below, sparse):
    profile = dataclasses.replace(NO_SKIRT, solid_infill_below_area=below)
    layers = parse(slice_to_text(tmp_path, box_file(tmp_path, (8, 8, 4)), profile)[1])
    middle = {m.kind for m in layers[10].model}       # ~25 mm^2 inside the walls
    assert ("FILL" in middle) == sparse and ("SKIN" in middle) != sparse, middle


def test_outer_wall_first_and_grid(tmp_path):
    profile = dataclasses.replace(NO_SKIRT, outer_wall_first=True, infill_pattern="grid")
    layers = parse(slice_to_text(tmp_path, box_file(tmp_path, (20, 20, 3)), profile)[1])
    layer = layers[7]
    kinds = list(dict.fromkeys(m.kind for m in layer.model))
    assert kinds == ["WALL-OUTER", "WALL-INNER", "FILL"]
    slopes = {np.sign(np.prod(np.subtract(m.end, m.start))) for m in layer.model if m.kind == "FILL"}
    assert slopes == {-1.0, 1.0}           # both directions on one layer


def test_relative_e_mode(tmp_path):
    profile = dataclasses.replace(PROFILE, e_mode="relative")
    result, text = slice_to_text(tmp_path, box_file(tmp_path, (10, 10, 1)), profile)
    head = text.split(";LAYER:0")[0]
    assert "M83" in head and "M82" not in head
    body = text.split(";LAYER:0")[1].split(";END_GCODE")[0]
    assert "G92" not in body
    extruded = sum(float(w[1:]) for line in body.splitlines() if line.startswith("G1 ")
                   for w in line.split() if w.startswith("E"))
    assert extruded == pytest.approx(result.filament_mm, rel=1e-3)


def test_stream_yields_layer_zero_before_the_last_layer_is_planned(tmp_path, monkeypatch):
    planned: list[int] = []
    real = layer_plan.plan_batch

    def recording(batch):
        planned.extend(range(batch.lo, batch.hi))
        return real(batch)
    monkeypatch.setattr(layer_plan, "plan_batch", recording)
    profile = dataclasses.replace(PROFILE, workers=1)
    with slicer.stream_gcode(box_file(tmp_path, (20, 20, 10)), profile) as stream:
        start = next(stream)
        assert start.kind == "start" and start.index == -1 and stream.layers == 50
        assert ";LAYER_COUNT:50" in start.lines and planned == []
        first = next(stream)
        assert (first.kind, first.index, first.lines[0]) == ("layer", 0, ";LAYER:0")
        assert stream.layers - 1 not in planned
        rest = list(stream)
    assert [c.index for c in rest[:-1]] == list(range(1, 50))
    assert rest[-1].kind == "end" and rest[-1].result.layers == 50
    assert planned == list(range(50))


def test_pool_and_in_process_give_the_same_gcode(tmp_path):
    model = box_file(tmp_path, (15, 25, 6))
    one = tmp_path / "one.gcode"
    two = tmp_path / "two.gcode"
    slicer.slice_file(model, one, dataclasses.replace(PROFILE, workers=1))
    slicer.slice_file(model, two, dataclasses.replace(PROFILE, workers=2))
    assert one.read_text() == two.read_text()


def test_progress_exception_propagates_and_stops(tmp_path):
    class Stop(Exception):
        pass

    def progress(done, total):
        raise Stop()
    with pytest.raises(Stop):
        slicer.slice_file(box_file(tmp_path), tmp_path / "x.gcode", PROFILE, progress)
    assert not (tmp_path / "x.gcode").exists()


@settings(max_examples=5, deadline=None)
@given(radius=st.floats(2, 30), height=st.floats(0.5, 3))
def test_random_cylinders(tmp_path_factory, radius, height):
    tmp = tmp_path_factory.mktemp("cyl")
    path = tmp / "c.stl"
    trimesh.creation.cylinder(radius=radius, height=height, sections=48).export(path)
    result, text = slice_to_text(tmp, path, NO_SKIRT)
    assert result.layers == slicer.count_layers(height, PROFILE)
    (x0, y0), (x1, y1) = result.bounds
    for size in (x1 - x0, y1 - y0):
        assert abs(size - 2 * radius) <= PROFILE.line_width + 0.01
    assert_inside_outlines(text, layer_outlines(path, NO_SKIRT))


# ------------------------------------------------------------------ profiles


def test_profile_file_and_overrides(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('layer_height = 0.1\ninfill_pattern = "grid"\n[slicer]\nperimeters = 3\n')
    p = profiles.load_profile(path, ["top_layers=5", "outer_wall_first=true", "bed_x=300"])
    assert (p.layer_height, p.infill_pattern, p.perimeters) == (0.1, "grid", 3)
    assert (p.top_layers, p.outer_wall_first, p.bed_x) == (5, True, 300.0)


@pytest.mark.parametrize("text, message", [
    ("lyer_height = 0.1", "unknown slicer setting 'lyer_height'"),
    ("perimeters = 2.5", "perimeters must be a whole number"),
    ('infill_pattern = "honeycomb"', "infill_pattern must be one of rectilinear, grid"),
    ("infill_density = 20", "infill_density is a fraction from 0 to 1"),
    ("layer_height = 0", "layer_height must be greater than 0"),
    ("layer_height = 0.6", "more than the nozzle diameter"),
    ("layer_height = [", "is not valid TOML"),
])
def test_profile_errors_name_the_setting(tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text + "\n")
    with pytest.raises(profiles.ProfileError) as info:
        profiles.load_profile(path)
    assert message in str(info.value)


def test_bad_override_names_the_item():
    with pytest.raises(profiles.ProfileError, match="--set z_hop=high: z_hop must be a number"):
        profiles.load_profile(None, ["z_hop=high"])
    with pytest.raises(profiles.ProfileError, match="expected KEY=VALUE"):
        profiles.load_profile(None, ["z_hop"])


def test_slicer_refuses_a_bad_profile(tmp_path):
    with pytest.raises(P3DError, match="bad slicer profile: e_mode"):
        slicer.slice_file(box_file(tmp_path), tmp_path / "x.gcode",
                          dataclasses.replace(PROFILE, e_mode="sometimes"))
