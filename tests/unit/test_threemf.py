"""The shared 3MF reader: hostile zips and XML refused, geometry placed and in millimetres."""
from __future__ import annotations

import io
import stat
import struct
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh

from gotapi3dp import threemf
from gotapi3dp.threemf import ModelError, read_3mf

MODELS = Path(__file__).resolve().parents[2].parent / "shared" / "models"
NS = "http://schemas.microsoft.com/3dmanufacturing/core/2015/02"
PROD = "http://schemas.microsoft.com/3dmanufacturing/production/2015/06"
RELS = ('<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
        'openxmlformats.org/package/2006/relationships"><Relationship Target="{target}"'
        ' Id="rel0" Type="http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"/>'
        '</Relationships>')


def mesh_xml(mesh: trimesh.Trimesh) -> str:
    verts = "".join(f'<vertex x="{x}" y="{y}" z="{z}"/>' for x, y, z in mesh.vertices)
    tris = "".join(f'<triangle v1="{a}" v2="{b}" v3="{c}"/>' for a, b, c in mesh.faces)
    return f"<mesh><vertices>{verts}</vertices><triangles>{tris}</triangles></mesh>"


def model(resources: str, build: str = '<item objectid="1"/>', unit: str = "millimeter",
          extra_ns: str = "") -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?><model unit="{unit}" xmlns="{NS}"'
            f"{extra_ns}><resources>{resources}</resources><build>{build}</build></model>")


def box_model(extents=(20, 20, 10), unit: str = "millimeter", vertex: str | None = None,
              build: str = '<item objectid="1"/>') -> str:
    body = mesh_xml(trimesh.creation.box(extents))
    if vertex is not None:
        body = body.replace(body[body.index("<vertex "):body.index("/>") + 2], vertex, 1)
    return model(f'<object id="1" type="model">{body}</object>', build, unit)


def make_3mf(model_text: str | bytes | None = None, extra: dict[str, bytes] | None = None,
             root: str = "3D/3dmodel.model") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("_rels/.rels", RELS.format(target="/" + root))
        zf.writestr(root, box_model() if model_text is None else model_text)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def refused(data: bytes) -> str:
    with pytest.raises(ModelError) as info:
        read_3mf(data)
    return str(info.value)


# ---------------------------------------------------------------------------- geometry


@pytest.mark.skipif(not MODELS.is_dir(), reason="shared test models not present")
def test_benchy_loads_with_its_faces_and_bounds():
    start = time.perf_counter()
    vertices, faces = read_3mf(MODELS / "3DBenchy.3mf")
    assert time.perf_counter() - start < 10.0
    assert vertices.dtype == np.float64 and vertices.shape[1] == 3
    assert faces.dtype == np.int64 and faces.shape == (225_154, 3)
    assert np.allclose(vertices.max(axis=0) - vertices.min(axis=0), [60, 31, 48], atol=0.01)
    assert vertices[:, 2].min() == pytest.approx(0.0)


def test_source_may_be_bytes_path_or_file(tmp_path):
    data = make_3mf()
    path = tmp_path / "box.3mf"
    path.write_bytes(data)
    for source in (data, path, str(path), io.BytesIO(data)):
        vertices, faces = read_3mf(source)
        assert faces.shape == (12, 3) and np.allclose(np.ptp(vertices, axis=0), [20, 20, 10])


def test_components_build_transforms_and_units():
    box = trimesh.creation.box((1, 2, 0.5))                 # centimetres in the model below
    text = model(f'<object id="1" type="model">{mesh_xml(box)}</object>'
                 '<object id="2" type="model"><components>'
                 '<component objectid="1"/>'
                 '<component objectid="1" transform="1 0 0 0 1 0 0 0 1 3 0 0"/>'
                 '</components></object>',
                 '<item objectid="2" transform="0 1 0 -1 0 0 0 0 1 0 0 0"/>', unit="centimeter")
    vertices, faces = read_3mf(make_3mf(text))
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert faces.shape == (24, 3) and faces.max() == len(vertices) - 1
    assert np.allclose(mesh.extents, [20, 40, 5])       # two 1 x 2 cm boxes 3 cm apart, turned 90
    assert len(mesh.split(only_watertight=False)) == 2
    assert mesh.volume == pytest.approx(2 * 10 * 20 * 5)


@pytest.mark.parametrize("unit, scale", [("inch", 25.4), ("micron", 0.001), ("foot", 304.8),
                                         ("meter", 1000.0), ("millimeter", 1.0)])
def test_units_are_converted_to_millimetres(unit, scale):
    vertices, _ = read_3mf(make_3mf(box_model((1, 2, 3), unit=unit)))
    assert np.allclose(np.ptp(vertices, axis=0), np.array([1, 2, 3]) * scale)


def test_unknown_unit_is_refused():
    assert "unknown unit" in refused(make_3mf(box_model(unit="cubit")))


def test_mirror_transform_keeps_faces_outward():
    text = box_model(build='<item objectid="1" transform="-1 0 0 0 1 0 0 0 1 0 0 0"/>')
    mesh = trimesh.Trimesh(*read_3mf(make_3mf(text)), process=False)
    assert mesh.volume == pytest.approx(20 * 20 * 10)


def test_without_build_items_every_mesh_object_is_used():
    text = model(f'<object id="1">{mesh_xml(trimesh.creation.box((1, 1, 1)))}</object>'
                 f'<object id="2">{mesh_xml(trimesh.creation.box((2, 2, 2)))}</object>', "")
    _, faces = read_3mf(make_3mf(text))
    assert len(faces) == 24


def test_production_path_component_and_rels_root():
    child = box_model((5, 5, 5))
    root = model('<object id="9"><components><component objectid="1" p:path='
                 '"/3D/Objects/part.model" transform="1 0 0 0 1 0 0 0 1 0 0 7"/></components>'
                 '</object>', '<item objectid="9"/>', extra_ns=f' xmlns:p="{PROD}"')
    data = make_3mf(root, extra={"3D/Objects/part.model": child.encode()}, root="3D/main.model")
    vertices, faces = read_3mf(data)
    assert len(faces) == 12 and vertices[:, 2].max() == pytest.approx(9.5)


# ---------------------------------------------------------------------------- zip


@pytest.mark.parametrize("name", ["../../evil.model", "/etc/evil.model", "3D/../../x.rels",
                                  "..\\x.model", "C:/x.model"])
def test_member_names_leaving_the_archive_are_refused(name):
    assert "leaves the archive" in refused(make_3mf(extra={name: b"x"}))


def test_zip_bomb_is_refused_quickly():
    start = time.perf_counter()
    assert "zip bomb" in refused(make_3mf(extra={"Metadata/thumb.png": bytes(64 << 20)}))
    assert time.perf_counter() - start < 5.0


def test_total_inflated_size_is_capped(monkeypatch):
    monkeypatch.setattr(threemf, "MAX_TOTAL_BYTES", 100_000)
    data = make_3mf(extra={"Metadata/a.bin": np.random.default_rng(1).bytes(200_000)})
    assert "size limit" in refused(data)


def test_too_many_members_are_refused():
    extra = {f"Metadata/{i}.txt": b"" for i in range(threemf.MAX_MEMBERS)}
    assert "members, limit" in refused(make_3mf(extra=extra))


def test_symlink_and_duplicate_members_are_refused():
    buf = io.BytesIO(make_3mf())
    with zipfile.ZipFile(buf, "a") as zf:
        link = zipfile.ZipInfo("Metadata/link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    assert "symbolic link" in refused(buf.getvalue())
    buf = io.BytesIO(make_3mf())
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "a") as zf:
        warnings.simplefilter("ignore")
        zf.writestr("3D/3dmodel.model", box_model((1, 1, 1)))
    assert "twice" in refused(buf.getvalue())


def test_lying_size_header_is_refused():
    data = bytearray(make_3mf(extra={"Metadata/pad.bin": bytes(5000)}))
    central = bytes(data).rfind(b"Metadata/pad.bin") - 46
    struct.pack_into("<I", data, central + 24, 10)        # central directory: 10 bytes
    assert "corrupt" in refused(bytes(data))


def test_not_a_zip_and_zip_without_model_are_refused():
    assert "not a readable zip" in refused(b"PK\x03\x04 but nothing else")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hi")
    assert ".model" in refused(buf.getvalue())


# ---------------------------------------------------------------------------- XML


HOSTILE = [
    (b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
     b"<model>&b;</model>"),
    (b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><model>&x;'
     b"</model>"),
    b'<?xml version="1.0"?><!DOCTYPE m SYSTEM "http://example.invalid/m.dtd"><model/>',
]


@pytest.mark.parametrize("xml", HOSTILE)
def test_dtd_entities_and_xxe_are_refused(xml):
    assert "not acceptable XML" in refused(make_3mf(xml))


def test_hostile_rels_is_refused():
    data = make_3mf(extra={})
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            body = HOSTILE[1] if info.filename == "_rels/.rels" else src.read(info)
            dst.writestr(info.filename, body)
    assert "_rels/.rels" in refused(buf.getvalue())


def test_broken_xml_is_refused():
    assert "not acceptable XML" in refused(make_3mf(b"<model><resources><object><mesh>"))


@pytest.mark.parametrize("vertex", ['<vertex x="nan" y="0" z="0"/>', '<vertex x="1" y="0"/>',
                                    '<vertex x="1e999" y="0" z="0"/>'])
def test_bad_vertex_is_refused(vertex):
    message = refused(make_3mf(box_model(vertex=vertex)))
    assert "non-numeric" in message or "NaN or infinite" in message


def test_triangle_index_out_of_range_is_refused():
    text = box_model().replace('v3="', 'v3="9999', 1)
    assert "does not exist" in refused(make_3mf(text))


def test_missing_object_cycle_and_bad_transform_are_refused():
    assert "missing object" in refused(make_3mf(box_model(build='<item objectid="7"/>')))
    cycle = model('<object id="1"><components><component objectid="1"/></components></object>')
    assert "deeper" in refused(make_3mf(cycle))
    bad = box_model(build='<item objectid="1" transform="1 0 0 1"/>')
    assert "12 finite numbers" in refused(make_3mf(bad))


def test_component_fan_out_is_capped():
    cube = trimesh.creation.box((1, 1, 1))
    objects = [f'<object id="0">{mesh_xml(cube)}</object>']
    for level in range(1, 17):                                # 10 ** 16 placements
        comps = f'<component objectid="{level - 1}"/>' * 10
        objects.append(f'<object id="{level}"><components>{comps}</components></object>')
    start = time.perf_counter()
    assert "too many" in refused(make_3mf(model("".join(objects), '<item objectid="6"/>')))
    assert time.perf_counter() - start < 1.0


def test_no_triangles_is_refused():
    empty = model('<object id="1"><mesh><vertices><vertex x="0" y="0" z="0"/></vertices>'
                  "<triangles/></mesh></object>")
    assert "without vertices or triangles" in refused(make_3mf(empty))
    assert "no triangles" in refused(make_3mf(model("", "")))


# ---------------------------------------------------------------------------- fast path


def outcome(read):
    try:
        return read()
    except ModelError as exc:
        return str(exc)


def plain_and_read(text: str):
    """The model read as written, checked against the same model with expat seeing it all."""
    fast = outcome(lambda: read_3mf(make_3mf(text)))
    name, slow = "3D/3dmodel.model", threemf._Assembly({"3D/3dmodel.model": text.encode()})

    def read_slowly():
        slow.parsed[name] = threemf._PartParser(name)._parse(text.encode(), fast=False)
        return slow.build(name)

    expected = outcome(read_slowly)
    if isinstance(expected, str):
        assert fast == expected
    else:
        assert all(np.array_equal(a, b) for a, b in zip(fast, expected))
    return fast


@pytest.mark.parametrize("edit", [
    lambda t: t,                                                          # the plain form
    lambda t: t.replace('x="', "x='", 1).replace('" y=', "' y=", 1),      # single quotes
    lambda t: t.replace('x="', 'x="&#32;', 1),                            # a character reference
    lambda t: t.replace("<vertices>", "<vertices><!-- <vertex x='9' y='9' z='9'/> -->"),
    lambda t: t.replace("<!--", "<![CDATA[").replace("-->", "]]>") if "<!--" in t else t,
    lambda t: t.replace('"/></triangles>', '" p1="0" pid="3"/></triangles>'),
    lambda t: t.replace("<resources>", "<resources><!-- <vertices></vertices> -->"),
    lambda t: t.replace("<triangles>", '<triangles xmlns:q="urn:q">'),
    lambda t: t.replace("<vertex ", '<vertex xmlns="urn:other" ', 1),  # not a core vertex
    lambda t: t.replace("<vertices>", "<vertices>\n\t ").replace("/><vertex", " />\r\n<vertex"),
    lambda t: t.replace('y="', 'y="nan', 1),
    lambda t: t.replace('y="', 'y="1e999', 1),
])
def test_every_form_of_a_mesh_block_reads_as_expat_sees_it(edit):
    mesh = trimesh.creation.icosphere(2)
    plain_and_read(edit(model(f'<object id="1">{mesh_xml(mesh)}</object>')))


def test_prefixed_and_foreign_namespace_blocks():
    mesh = mesh_xml(trimesh.creation.box((1, 2, 3)))
    prefixed = (f'<?xml version="1.0"?><c:model xmlns:c="{NS}"><c:resources><c:object id="1">'
                + mesh.replace("<", "<c:").replace("<c:/", "</c:")
                + '</c:object></c:resources><c:build><c:item objectid="1"/></c:build></c:model>')
    assert plain_and_read(prefixed)[1].shape == (12, 3)
    foreign = model(f'<object id="1"><mesh xmlns="urn:x"><vertices><vertex x="0" y="0" z="0"/>'
                    f'</vertices></mesh></object><object id="2">{mesh}</object>',
                    '<item objectid="2"/>')
    assert plain_and_read(foreign)[1].shape == (12, 3)


def test_blocks_are_read_in_pieces(monkeypatch):
    monkeypatch.setattr(threemf, "BLOCK_PIECE", 100)
    mesh = trimesh.creation.icosphere(3)
    vertices, faces = read_3mf(make_3mf(model(f'<object id="1">{mesh_xml(mesh)}</object>')))
    assert np.allclose(vertices, mesh.vertices) and np.array_equal(faces, mesh.faces)


@pytest.mark.parametrize("value, message", [
    ("99999999999999999999", "non-numeric"), ("-1", "does not exist"), ("", "non-numeric"),
    ("1.0", "non-numeric"), ("+", "non-numeric"), ("1_0", "does not exist"),
])
def test_odd_triangle_indices_fail_as_before(value, message):
    text = box_model()
    first = text.index('v3="') + 4
    text = text[:first] + value + text[text.index('"', first):]
    assert message in refused(make_3mf(text))


def test_fast_path_caps_vertices(monkeypatch):
    monkeypatch.setattr(threemf, "MAX_VERTICES", 7)
    assert "too many" in refused(make_3mf())
