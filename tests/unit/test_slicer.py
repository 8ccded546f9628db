"""The FDM slicer: layer counts, placement, G-code invariants, refusals, shared test models."""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import shapely
import trimesh
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gotapi3dp.config import SliceProfile
from gotapi3dp.wire.errors import ErrorCode, P3DError
from printer import geometry, slicer

MODELS = Path(__file__).resolve().parents[2].parent / "shared" / "models"
PROFILE = SliceProfile()
NO_SKIRT = SliceProfile(skirt_loops=0)       # extents and outlines without the skirt loop
TOL = 1e-3


@dataclass
class Move:
    start: tuple[float, float]
    end: tuple[float, float]
    e0: float
    e1: float
    kind: str
    travel: bool                 # G0


@dataclass
class Layer:
    index: int
    z: float = 0.0
    moves: list[Move] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def extrusions(self) -> list[Move]:
        return [m for m in self.moves if not m.travel and m.e1 > m.e0 and m.start != m.end]

    @property
    def model(self) -> list[Move]:
        """Extrusions of the model itself (no skirt)."""
        return [m for m in self.extrusions if m.kind != "SKIRT"]


def parse(text: str) -> list[Layer]:
    """Layers of a G-code file, with every XY move and its E before and after."""
    layers: list[Layer] = []
    x = y = e = z = 0.0
    kind = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line == ";END_GCODE":
            break
        if line.startswith(";LAYER:"):
            layers.append(Layer(int(line[7:])))
        elif line.startswith(";TYPE:"):
            kind = line[6:]
        if layers:
            layers[-1].lines.append(line)
        if not line or line.startswith(";"):
            continue
        words = line.split(";")[0].split()
        args = {w[0]: float(w[1:]) for w in words[1:] if w[0] in "XYZEF"}
        if words[0] == "G92":
            e = args.get("E", e)
        elif words[0] in ("G0", "G1"):
            nx, ny, ne = args.get("X", x), args.get("Y", y), args.get("E", e)
            z = args.get("Z", z)
            if layers:
                layers[-1].z = z if "E" in args or not layers[-1].moves else layers[-1].z
                layers[-1].moves.append(Move((x, y), (nx, ny), e, ne, kind, words[0] == "G0"))
            x, y, e = nx, ny, ne
    return layers


def box_file(tmp_path: Path, extents=(20.0, 20.0, 10.0), name="box.stl") -> Path:
    path = tmp_path / name
    trimesh.creation.box(extents).export(path)
    return path


def slice_to_text(tmp_path: Path, model: Path, profile: SliceProfile = PROFILE):
    out = tmp_path / "out.gcode"
    result = slicer.slice_file(model, out, profile)
    return result, out.read_text()


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("box")
    result, text = slice_to_text(tmp, box_file(tmp))
    return result, text, parse(text)


def footprint(profile: SliceProfile, sx: float, sy: float) -> shapely.Polygon:
    cx, cy = profile.bed_x / 2, profile.bed_y / 2
    return shapely.box(cx - sx / 2, cy - sy / 2, cx + sx / 2, cy + sy / 2)


# ---------------------------------------------------------------- the 20 x 20 x 10 box


def test_box_layer_count_and_height(box):
    result, text, layers = box
    assert result.layers == round(10 / 0.2) == len(layers)
    assert [layer.index for layer in layers] == list(range(result.layers))
    assert f";LAYER_COUNT:{result.layers}" in text
    assert layers[0].z == pytest.approx(PROFILE.first_layer_height)
    assert abs(layers[-1].z - 10.0) <= PROFILE.layer_height
    assert result.height == pytest.approx(layers[-1].z)


def test_box_extent_matches_footprint(box):
    result, _, layers = box
    points = np.array([p for layer in layers for m in layer.model for p in (m.start, m.end)])
    low, high = points.min(axis=0), points.max(axis=0)
    fp = np.array(footprint(PROFILE, 20, 20).bounds)
    assert np.all(np.abs(low - fp[:2]) <= PROFILE.line_width)
    assert np.all(np.abs(high - fp[2:]) <= PROFILE.line_width)
    skirt = np.array([p for m in layers[0].extrusions if m.kind == "SKIRT" for p in (m.start, m.end)])
    assert np.allclose(result.bounds, (tuple(skirt.min(axis=0)), tuple(skirt.max(axis=0))), atol=TOL)


def test_box_extrusions_stay_inside_outline(box):
    _, _, layers = box
    grown = footprint(PROFILE, 20, 20).buffer(0.01)
    for layer in layers:
        segments = shapely.linestrings([[m.start, m.end] for m in layer.model])
        assert shapely.within(segments, grown).all(), f"layer {layer.index} leaves the outline"


def test_box_e_absolute_and_monotonic_per_layer(box):
    _, text, layers = box
    assert "M82" in text.split(";LAYER:0")[0]
    for layer in layers:
        assert "G92 E0" in layer.lines[:6]
        top = 0.0
        for move in layer.moves:
            if move.start != move.end and not move.travel:
                assert move.e1 >= top - 1e-9, f"layer {layer.index}: E went back while printing"
                assert move.e0 >= top - 1e-9, "printing while retracted"
                top = move.e1
            assert move.e1 >= top - PROFILE.retract_length - 1e-9


def crossing_travels(layer: Layer, outline) -> list[int]:
    """Indices of the XY travels of a layer that leave `outline` (grown by 0.01 mm)."""
    grown = outline.buffer(0.01)
    return [i for i, m in enumerate(layer.moves) if m.travel and m.start != m.end
            and not shapely.within(shapely.LineString([m.start, m.end]), grown)]


def assert_retracted_around(layer: Layer, i: int, profile: SliceProfile = PROFILE) -> None:
    """moves[i] is a travel wrapped in retract, lift ... lower, unretract."""
    m = layer.moves
    retract, lift, lower, undo = m[i - 2], m[i - 1], m[i + 1], m[i + 2]
    assert retract.start == retract.end and retract.e0 - retract.e1 == pytest.approx(
        profile.retract_length), "no retraction before a crossing travel"
    assert lift.travel and lift.start == lift.end == m[i].start, "no lift before the travel"
    assert undo.e1 == pytest.approx(retract.e0), "not unretracted after the travel"
    assert lower.start == lower.end == m[i].end


def test_box_retracts_and_lifts_only_on_crossing_travels(box):
    _, text, layers = box
    outline = footprint(PROFILE, 20, 20)
    crossings = 0
    for layer in layers:
        crossing = crossing_travels(layer, outline)
        crossings += len(crossing)
        for i in crossing:
            assert_retracted_around(layer, i)
        inside = [i for i, m in enumerate(layer.moves) if m.travel and m.start != m.end
                  and i not in crossing and i >= 2]
        for i in inside:       # combing-lite: a travel inside the island does not retract
            assert not (layer.moves[i - 1].start == layer.moves[i - 1].end
                        and layer.moves[i - 2].e1 < layer.moves[i - 2].e0)
    assert crossings >= 1                      # the skirt -> the model on layer 0
    hops = [line for line in text.splitlines() if line.startswith("G0 F600 Z0.400")]
    assert hops, "z-hop of 0.2 mm on layer 0"


def test_box_order_of_kinds_skin_and_speeds(box):
    _, text, layers = box
    for layer in layers:
        kinds = list(dict.fromkeys(line[6:] for line in layer.lines if line.startswith(";TYPE:")))
        solid = layer.index < PROFILE.bottom_layers or layer.index >= len(layers) - PROFILE.top_layers
        walls = ["WALL-INNER", "WALL-OUTER"]
        expected = (["SKIRT"] if layer.index == 0 else []) + walls + (["SKIN"] if solid else ["FILL"])
        assert kinds == expected, (layer.index, kinds)
    first = [line for line in layers[0].lines if line.startswith("G1 F") and " X" in line]
    other = [line for line in layers[5].lines if line.startswith("G1 F") and " X" in line]
    assert all(f"F{PROFILE.first_layer_speed * 60:.0f} " in line for line in first)
    assert all(f"F{PROFILE.print_speed * 60:.0f} " in line for line in other)


def test_box_infill_alternates_angle(box):
    _, _, layers = box
    for layer in layers[5:10]:
        fill = [m for m in layer.extrusions if m.kind == "FILL"]
        dx, dy = np.subtract(fill[0].end, fill[0].start)
        expected = 1.0 if layer.index % 2 == 0 else -1.0          # +45 or -45 degrees
        assert dx * dy * expected > 0
        assert abs(abs(dx) - abs(dy)) < 0.01


def test_box_header_start_end(box):
    result, text, layers = box
    lines = text.splitlines()
    assert lines[0] == ";FLAVOR:Marlin"
    assert f";TIME:{round(result.estimated_seconds)}" in lines
    assert f";Filament used: {result.filament_mm / 1000:.5f}m" in lines
    start = lines[:lines.index(";LAYER:0")]
    for word in ("M140 S60", "M104 S215", "M190 S60", "M109 S215", "G28", "G90", "M82", "G92 E0"):
        assert word in start
    assert start.index("M190 S60") < start.index("G28")
    assert f";Filament used [g]: {result.filament_g:.2f}" in lines
    assert result.filament_g == pytest.approx(
        result.filament_mm * math.pi * (1.75 / 2) ** 2 / 1000 * PROFILE.filament_density)
    assert lines[-10:] == [";END_GCODE", "G92 E0", "G1 F2100 E-0.80000", "M104 S0", "M140 S0",
                           "M107", "G91", "G1 Z10 F600", "G90", "M84"]
    assert "M104 S210" in layers[1].lines and "M106 S255" in layers[1].lines
    assert result.lines == len(lines)
    # filament: 50 layers of 2 perimeters of 80 mm, 20 % infill, 8 solid layers, 0.037 E/mm
    assert 600 < result.filament_mm < 1600
    assert result.estimated_seconds > 0


def test_progress_and_atomic_write(tmp_path):
    calls = []
    out = tmp_path / "job.gcode"
    result = slicer.slice_file(box_file(tmp_path, (10, 10, 2)), out, PROFILE,
                               progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i + 1, result.layers) for i in range(result.layers)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.stl", "job.gcode"]


def test_iter_layers_is_lazy(tmp_path):
    mesh = slicer.load_mesh(box_file(tmp_path), PROFILE)
    layers = slicer.iter_layers(mesh, PROFILE)
    index, z, lines = next(layers)
    assert (index, z) == (0, pytest.approx(0.2)) and lines[0] == ";LAYER:0"
    assert sum(1 for _ in layers) == 49


def test_count_layers():
    assert slicer.count_layers(10.0, PROFILE) == 50
    assert slicer.count_layers(0.2, PROFILE) == 1
    assert slicer.count_layers(0.0, PROFILE) == 0
    thick_first = SliceProfile(first_layer_height=0.3, layer_height=0.1)
    assert slicer.count_layers(1.0, thick_first) == 8


def test_load_mesh_places_on_bed_centre(tmp_path):
    mesh = trimesh.creation.box((10, 20, 5))
    mesh.apply_translation([-300, 40, 17])
    path = tmp_path / "off.stl"
    mesh.export(path)
    placed = slicer.load_mesh(path, PROFILE)
    assert np.allclose(placed.bounds, [[105, 100, 0], [115, 120, 5]])


# ---------------------------------------------------------------- outline semantics


def outlines(mesh: trimesh.Trimesh, z: float):
    rings = geometry.section(mesh.vertices, mesh.faces, mesh.edges_unique,
                             mesh.faces_unique_edges, np.array([z]))
    return geometry.outline(*rings.of_layer(0))


def test_overlapping_shells_give_their_union():
    a = trimesh.creation.box((10, 10, 10))
    b = trimesh.creation.box((10, 10, 10))
    b.apply_translation([5, 5, 0])
    region = outlines(trimesh.util.concatenate([a, b]), 0.3)
    assert region.area == pytest.approx(175.0, rel=1e-6)
    assert sum(len(p.interiors) for p in shapely.get_parts(region)) == 0


def test_cavity_stays_a_hole_and_inside_out_still_prints():
    outer = trimesh.creation.box((20, 20, 10))
    inner = trimesh.creation.box((10, 10, 4))
    inner.invert()
    hollow = trimesh.util.concatenate([outer, inner])
    region = outlines(hollow, 0.5)
    assert region.area == pytest.approx(300.0, rel=1e-6)
    outer.invert()
    assert outlines(outer, 0.5).area == pytest.approx(400.0, rel=1e-6)


def test_open_chains_are_dropped():
    tube = trimesh.creation.box((10, 10, 10))
    side = np.flatnonzero(np.abs(tube.face_normals[:, 2]) < 0.5)[0]
    tube.update_faces(np.arange(len(tube.faces)) != side)   # a hole in one side wall
    other = trimesh.creation.box((4, 4, 10))
    other.apply_translation([20, 0, 0])
    region = outlines(trimesh.util.concatenate([tube, other]), 0.5)
    assert region.area == pytest.approx(16.0, rel=1e-6)     # only the closed box remains


# ---------------------------------------------------------------- other shapes, shared models


def test_cylinder(tmp_path):
    path = tmp_path / "cyl.stl"
    trimesh.creation.cylinder(radius=8, height=5, sections=64).export(path)
    result, text = slice_to_text(tmp_path, path, NO_SKIRT)
    assert result.layers == 25
    (x0, y0), (x1, y1) = result.bounds
    assert x1 - x0 == pytest.approx(16 - PROFILE.line_width, abs=PROFILE.line_width / 2)
    assert y1 - y0 == pytest.approx(16 - PROFILE.line_width, abs=PROFILE.line_width / 2)


def test_voron_cube(tmp_path):
    result, _ = slice_to_text(tmp_path, MODELS / "Voron_Design_Cube_v7.stl", NO_SKIRT)
    assert result.layers == 150
    (x0, y0), (x1, y1) = result.bounds
    assert x1 - x0 == pytest.approx(30 - PROFILE.line_width, abs=0.05)


def test_teapot_floats_but_first_layer_is_on_the_bed(tmp_path):
    result, text = slice_to_text(tmp_path, MODELS / "teapot.stl")
    layers = parse(text)
    assert layers[0].z == pytest.approx(PROFILE.first_layer_height)
    assert layers[0].extrusions, "the first layer prints something"
    assert result.height == pytest.approx(29.4, abs=PROFILE.layer_height)


def test_benchy_3mf(tmp_path):
    result, _ = slice_to_text(tmp_path, MODELS / "3DBenchy.3mf", NO_SKIRT)
    assert result.layers == 240
    (x0, y0), (x1, y1) = result.bounds
    assert x1 - x0 == pytest.approx(60.0 - PROFILE.line_width, abs=0.2)
    assert y1 - y0 == pytest.approx(31.0 - PROFILE.line_width, abs=0.2)


def test_obj_and_3mf_load_and_sit_on_the_bed(tmp_path):
    obj = tmp_path / "box.obj"
    trimesh.creation.box((12, 8, 4)).export(obj)
    assert np.allclose(slicer.load_mesh(obj, PROFILE).extents, [12, 8, 4])
    # The 3MF itself (components, transforms, units) is read by gotapi3dp.threemf, tested
    # in test_threemf.py; here only that the slicer uses it and places the result.
    box = trimesh.creation.box((1, 2, 0.5))              # centimetres in the 3MF below
    verts = "".join(f'<vertex x="{x}" y="{y}" z="{z}"/>' for x, y, z in box.vertices)
    tris = "".join(f'<triangle v1="{a}" v2="{b}" v3="{c}"/>' for a, b, c in box.faces)
    ns = "http://schemas.microsoft.com/3dmanufacturing/core/2015/02"
    model = (f'<?xml version="1.0"?><model unit="centimeter" xmlns="{ns}"><resources>'
             f'<object id="1" type="model"><mesh><vertices>{verts}</vertices>'
             f'<triangles>{tris}</triangles></mesh></object></resources>'
             '<build><item objectid="1" transform="0 1 0 -1 0 0 0 0 1 0 0 0"/></build></model>')
    path = tmp_path / "box.3mf"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("3D/3dmodel.model", model)
    mesh = slicer.load_mesh(path, PROFILE)
    assert np.allclose(mesh.extents, [20, 10, 5])        # 1 x 2 cm turned 90 degrees
    assert np.allclose(mesh.bounds[0], [PROFILE.bed_x / 2 - 10, PROFILE.bed_y / 2 - 5, 0])


@pytest.mark.parametrize("member, message", [
    ("../evil.model", "leaves the archive"),
    ("3D/3dmodel.model", "not acceptable XML"),
])
def test_unreadable_3mf_is_model_invalid(tmp_path, member, message):
    path = tmp_path / "bad.3mf"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, '<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                                 "<model>&x;</model>")
    text = refused(path)
    assert text.startswith("bad.3mf: ") and message in text


# ---------------------------------------------------------------- refusals


def refused(path: Path, profile: SliceProfile = PROFILE) -> str:
    with pytest.raises(P3DError) as info:
        slicer.load_mesh(path, profile)
    assert info.value.code == ErrorCode.MODEL_INVALID
    return info.value.message


def test_refuses_empty_file(tmp_path):
    path = tmp_path / "empty.stl"
    path.write_bytes(b"")
    assert "empty" in refused(path)


def test_refuses_non_mesh_file(tmp_path):
    path = tmp_path / "notes.stl"
    path.write_text("this is a shopping list, not a mesh\n" * 4)
    assert "notes.stl" in refused(path)
    other = tmp_path / "notes.bin"
    other.write_bytes(bytes(range(256)) * 3)
    assert "not an STL, OBJ or 3MF" in refused(other)


def test_refuses_nan_coordinate(tmp_path):
    path = box_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[84 + 12:84 + 16] = np.float32(np.nan).tobytes()     # first vertex x of the first facet
    path.write_bytes(bytes(data))
    assert "NaN" in refused(path)


def test_refuses_model_bigger_than_bed(tmp_path):
    message = refused(box_file(tmp_path, (300, 300, 10), "big.stl"))
    assert "X 300.0 mm > 220.0 mm" in message and "Y 300.0 mm > 220.0 mm" in message
    assert "Z" not in message.split(":", 1)[1]


def test_refuses_flat_model(tmp_path):
    path = tmp_path / "flat.stl"
    trimesh.Trimesh([[0, 0, 0], [10, 0, 0], [0, 10, 0]], [[0, 1, 2]]).export(path)
    assert "flat" in refused(path)


def test_nothing_printable_is_model_invalid(tmp_path):
    path = box_file(tmp_path, (20, 20, 0.05), "thin.stl")       # below the first mid-plane
    with pytest.raises(P3DError) as info:
        slicer.slice_file(path, tmp_path / "out.gcode", PROFILE)
    assert info.value.code == ErrorCode.MODEL_INVALID
    assert not (tmp_path / "out.gcode").exists()
    with pytest.raises(P3DError, match="nothing printable"):
        slicer.stream_gcode(path, PROFILE)                       # before any chunk


# ---------------------------------------------------------------- topology and streaming


def test_merged_joins_identical_vertices_in_first_use_order():
    soup = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0],          # face 0
                            [1, 0, 0], [-0.0, 0, 0], [0, 0, 1],       # face 1: two repeats
                            [5, 5, 5]],                               # never used
                           [[0, 1, 2], [3, 4, 5]], process=False)
    merged = slicer._merged(soup)
    assert merged.vertices.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert merged.faces.tolist() == [[0, 1, 2], [1, 0, 3]]


def test_merged_closes_a_crack_below_the_merge_tolerance():
    sphere = trimesh.creation.icosphere(2)
    soup = trimesh.Trimesh(sphere.triangles.reshape(-1, 3).copy(),
                           np.arange(len(sphere.faces) * 3).reshape(-1, 3), process=False)
    soup.vertices[5] += 1e-12                               # one copy a hair off
    merged = slicer._merged(soup)
    assert len(merged.vertices) == len(sphere.vertices)
    assert merged.is_watertight


def test_merged_keeps_an_indexed_mesh_as_it_is():
    mesh = trimesh.creation.icosphere(2)
    merged = slicer._merged(mesh)
    assert np.array_equal(merged.vertices, mesh.vertices)
    assert np.array_equal(merged.faces, mesh.faces)


def test_edge_topology_matches_trimesh():
    mesh = trimesh.util.concatenate([trimesh.creation.icosphere(2),
                                     trimesh.creation.box((3, 3, 3))])
    edges, face_edges = geometry.edge_topology(mesh.faces)
    assert (edges[:, 0] <= edges[:, 1]).all()
    assert len(edges) == len(mesh.edges_unique)
    sides = np.sort(mesh.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 3, 2), axis=2)
    assert np.array_equal(edges[face_edges], sides)              # side j of face i


def mesh_checks(mesh: trimesh.Trimesh) -> tuple[bool, bool]:
    faces = np.asarray(mesh.faces)
    edges, face_edges = geometry.edge_topology(faces)
    return slicer._edge_checks(edges, faces, face_edges)


def test_edge_checks_agree_with_trimesh():
    box = trimesh.creation.box((10, 10, 10))
    assert mesh_checks(box) == (True, True)
    flipped = box.copy()
    flipped.faces[3] = flipped.faces[3][::-1]
    assert mesh_checks(flipped) == (flipped.is_watertight, flipped.is_winding_consistent)
    assert mesh_checks(flipped) == (True, False)
    holed = trimesh.Trimesh(box.vertices, box.faces[1:], process=False)
    assert mesh_checks(holed) == (False, True)
    collapsed = trimesh.Trimesh(box.vertices, np.vstack([box.faces, [[0, 0, 1], [0, 1, 0]]]),
                                process=False)                  # zero-area slivers
    assert mesh_checks(collapsed)[1]


def test_inconsistent_winding_is_repaired(tmp_path):
    box = trimesh.creation.box((10, 10, 10))
    box.faces[3] = box.faces[3][::-1]
    path = tmp_path / "flipped.stl"
    box.export(path)
    result, _ = slice_to_text(tmp_path, path, NO_SKIRT)
    (x0, y0), (x1, y1) = result.bounds
    assert x1 - x0 == pytest.approx(10 - PROFILE.line_width, abs=PROFILE.line_width / 2)


@pytest.mark.parametrize("workers", [1, 2])
def test_streamed_first_layer_equals_full_sectioning(workers):
    """Layer 0 is planned from the first planes while the rest are sectioned on a thread:
    the G-code must be what sectioning everything first gives."""
    profile = SliceProfile(workers=workers)
    model = MODELS / "teapot.stl"
    with slicer.stream_gcode(model, profile) as stream:
        streamed = [c.lines for c in stream]
    mesh = slicer.load_mesh(model, profile)
    rings, tops = slicer.section_layers(mesh, profile)
    with slicer.SliceStream(rings, tops, profile) as whole:
        assert streamed == [c.lines for c in whole]


def test_model_whose_first_planes_are_empty_still_slices(tmp_path):
    """An open sliver at the bottom: the planes layer 0 needs hold no ring at all."""
    sliver = trimesh.Trimesh([[0, 0, 0], [8, 0, 0.05], [0, 8, 0.05]], [[0, 1, 2]])
    box = trimesh.creation.box((10, 10, 5))
    box.apply_translation([0, 0, 2.5 + 1.5])
    path = tmp_path / "lifted.stl"
    trimesh.util.concatenate([sliver, box]).export(path)
    result, text = slice_to_text(tmp_path, path, NO_SKIRT)
    layers = parse(text)
    assert not layers[0].extrusions and layers[-1].extrusions
    assert result.layers == slicer.count_layers(6.5, PROFILE)


# ---------------------------------------------------------------- property


@settings(max_examples=6, deadline=None)
@given(sx=st.floats(3, 60), sy=st.floats(3, 60), sz=st.floats(0.5, 4))
@example(sx=3.0, sy=3.0, sz=1.1)  # the last mid-plane falls exactly on the top face
def test_random_boxes(tmp_path_factory, sx, sy, sz):
    tmp = tmp_path_factory.mktemp("prop")
    result, text = slice_to_text(tmp, box_file(tmp, (sx, sy, sz)), NO_SKIRT)
    layers = parse(text)
    assert result.layers == len(layers) == slicer.count_layers(sz, PROFILE)
    assert abs(layers[-1].z - sz) <= PROFILE.layer_height / 2 + 1e-6
    grown = footprint(PROFILE, sx, sy).buffer(0.01)
    segments = shapely.linestrings([[m.start, m.end] for layer in layers for m in layer.extrusions])
    assert shapely.within(segments, grown).all()
    (x0, y0), (x1, y1) = result.bounds
    assert x1 - x0 == pytest.approx(sx - PROFILE.line_width, abs=PROFILE.line_width / 2)
    assert y1 - y0 == pytest.approx(sy - PROFILE.line_width, abs=PROFILE.line_width / 2)


def test_open_inverted_shell_still_adds_its_area():
    tube = trimesh.creation.box((10, 10, 10))
    tube.update_faces(np.abs(tube.face_normals[:, 2]) < 0.5)   # no top, no bottom: open
    tube.invert()
    solid = trimesh.creation.box((10, 10, 10))
    solid.apply_translation([5, 0, 0])
    region = outlines(trimesh.util.concatenate([tube, solid]), 0.5)
    assert region.area == pytest.approx(150.0, rel=1e-6)
