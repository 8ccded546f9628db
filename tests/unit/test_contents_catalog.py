"""Contents server: API-key auth, uploads (STL, OBJ, 3MF), hostile files and content ids."""
from __future__ import annotations

import hashlib
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh

from .contents_support import Env, box_stl, make_3mf, make_env, model_xml


@pytest.fixture
def env(tmp_path) -> Env:
    return make_env(tmp_path)


def error_name(response) -> str:
    return response.json["error"]["name"]


# --- authentication -------------------------------------------------------------------

@pytest.mark.parametrize("key", [None, "", "wrong-key", "x" * 500])
def test_missing_or_wrong_key_is_401(env, key):
    headers = {} if key is None else {"X-Api-Key": key}
    r = env.client.get("/api/contents", headers=headers)
    assert r.status_code == 401 and error_name(r) == "CONTENTS_AUTH"


def test_key_in_query_string_is_refused(env):
    r = env.client.get(f"/api/contents?apikey={env.key}", headers=env.headers())
    assert r.status_code == 401


def test_api_key_is_stored_only_as_hash(env):
    raw = (env.data_dir / "contents.sqlite3").read_bytes()
    wal = env.data_dir / "contents.sqlite3-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert env.key.encode() not in raw
    assert hashlib.sha256(env.key.encode()).digest() in raw


# --- happy path -----------------------------------------------------------------------

def test_upload_stl_list_and_get(env):
    data = box_stl()
    r = env.upload(data, "box.stl", name="My box", prints="2")
    assert r.status_code == 201, r.json
    content = r.json
    assert content["format"] == "stl" and content["bytes"] == len(data)
    assert content["sha256"] == hashlib.sha256(data).hexdigest()
    assert content["name"] == "My box" and content["prints"] == 2
    listed = env.client.get("/api/contents", headers=env.headers()).json["contents"]
    assert [c["id"] for c in listed] == [content["id"]]
    got = env.client.get(f"/api/contents/{content['id']}", headers=env.headers())
    assert got.status_code == 200 and got.json == content


def test_upload_3mf_and_obj_and_ascii_stl(env):
    r = env.upload(make_3mf(), "part.3mf")
    assert r.status_code == 201 and r.json["format"] == "3mf", r.json
    obj = trimesh.creation.box().export(file_type="obj").encode()
    r = env.upload(obj, "part.obj")
    assert r.status_code == 201 and r.json["format"] == "obj", r.json
    ascii_stl = trimesh.creation.icosphere().export(file_type="stl_ascii").encode()
    r = env.upload(ascii_stl, "sphere.stl")
    assert r.status_code == 201 and r.json["format"] == "stl", r.json


def test_format_is_sniffed_not_taken_from_the_name(env):
    r = env.upload(make_3mf(), "looks-like.stl")
    assert r.status_code == 201 and r.json["format"] == "3mf"


def test_binary_stl_with_solid_header_is_binary(env):
    data = bytearray(box_stl())
    data[:5] = b"solid"
    r = env.upload(bytes(data), "solid.stl")
    assert r.status_code == 201 and r.json["format"] == "stl"


def test_same_bytes_twice_give_the_same_content(env):
    first = env.upload(box_stl(), "a.stl")
    second = env.upload(box_stl(), "b.stl")
    assert first.status_code == 201 and second.status_code == 200
    assert first.json["id"] == second.json["id"]
    other = env.new_account("alice")
    third = env.upload(box_stl(), "c.stl", key=other)
    assert third.status_code == 201 and third.json["id"] != first.json["id"]


def test_blob_is_content_addressed(env):
    data = box_stl()
    digest = env.upload(data).json["sha256"]
    blob = env.data_dir / "blobs" / digest[:2] / digest
    assert blob.read_bytes() == data


def test_display_name_is_a_base_name(env):
    r = env.upload(box_stl(), "../../etc/passwd\x00.stl")
    assert r.status_code == 201 and r.json["name"] == "passwd.stl"


# --- hostile content ids --------------------------------------------------------------

@pytest.mark.parametrize("bad", ["../etc/passwd", "..", "%2e%2e", "%2e%2e%2fetc", "a" * 65,
                                 "a%00b", "a.b", "%E2%80%A4%E2%80%A4"])
def test_bad_content_id_is_400(env, bad):
    r = env.client.get(f"/api/contents/{bad}", headers=env.headers())
    assert r.status_code == 400 and error_name(r) == "BAD_CONTENT_ID", (bad, r.json)


def test_other_accounts_content_is_not_found(env):
    cid = env.upload(box_stl()).json["id"]
    other = env.new_account("mallory")
    r = env.client.get(f"/api/contents/{cid}", headers=env.headers(other))
    assert r.status_code == 404 and error_name(r) == "CONTENT_NOT_FOUND"
    assert env.client.get("/api/contents", headers=env.headers(other)).json["contents"] == []


# --- hostile uploads ------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + bytes(300)


@pytest.mark.parametrize("data", [PNG, b"hello, this is not a model\n", b"", b"solid x\nnope\n",
                                  b"v 1 2 3\nv 1 2\n"])
def test_non_mesh_upload_is_422(env, data):
    r = env.upload(data, "thing.stl")
    assert r.status_code == 422 and error_name(r) == "CONTENT_INVALID", r.json
    assert r.json["error"]["message"]


def test_missing_file_field_is_400(env):
    r = env.client.post("/api/contents", headers=env.headers(), data={"name": "x"},
                        content_type="multipart/form-data")
    assert r.status_code == 400


def test_oversized_upload_is_413(tmp_path):
    env = make_env(tmp_path, max_upload_bytes=1000)
    r = env.upload(box_stl() + bytes(500), "big.stl")
    assert r.status_code == 413 and error_name(r) == "PAYLOAD_TOO_LARGE"
    r = env.upload(bytes(200_000), "huge.stl")      # over MAX_CONTENT_LENGTH as a whole
    assert r.status_code == 413 and error_name(r) == "PAYLOAD_TOO_LARGE"


def test_binary_stl_count_disagreeing_with_size_is_refused(env):
    data = bytearray(box_stl())
    struct.pack_into("<I", data, 80, 13)             # 12 triangles in the file, 13 claimed
    r = env.upload(bytes(data), "lying.stl")
    assert r.status_code == 422 and "size mismatch" in r.json["error"]["message"]
    r = env.upload(box_stl()[:-7], "truncated.stl")
    assert r.status_code == 422


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_binary_stl_with_non_finite_coordinate_is_refused(env, bad):
    data = bytearray(box_stl())
    struct.pack_into("<f", data, 84 + 12 + 4, bad)   # first triangle, first vertex, y
    r = env.upload(bytes(data), "nan.stl")
    assert r.status_code == 422 and "NaN" in r.json["error"]["message"]


def test_ascii_stl_with_nan_is_refused(env):
    text = trimesh.creation.box().export(file_type="stl_ascii")
    head, tail = text.split("vertex", 1)
    r = env.upload((head + "vertex nan" + tail.split(maxsplit=1)[1]).encode(), "nan.stl")
    assert r.status_code == 422


def test_3mf_with_traversal_member_name_is_refused(env):
    for name in ("../../evil.model", "/etc/evil.model", "3D/../../x.rels", "..\\x.model"):
        r = env.upload(make_3mf(extra={name: b"x"}), "slip.3mf")
        assert r.status_code == 422, name
        assert "leaves the archive" in r.json["error"]["message"]


def test_3mf_zip_bomb_is_refused_quickly(env):
    r = env.upload(make_3mf(extra={"Metadata/thumb.png": bytes(64 << 20)}), "bomb.3mf")
    assert r.status_code == 422 and "zip bomb" in r.json["error"]["message"]


def test_3mf_with_lying_size_header_is_refused(env):
    data = bytearray(make_3mf(extra={"Metadata/pad.bin": bytes(5000)}))
    # Make the central directory under-state the member's size: reading must not trust it.
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("Metadata/pad.bin")
    central = bytes(data).rfind(b"Metadata/pad.bin") - 46
    struct.pack_into("<I", data, central + 24, 10)
    r = env.upload(bytes(data), "liar.3mf")
    assert info.file_size == 5000
    assert r.status_code == 422 and "corrupt" in r.json["error"]["message"]


MODELS = Path(__file__).resolve().parents[3] / "shared" / "models"  # ../shared/models from the repo


@pytest.mark.skipif(not MODELS.is_dir(), reason="shared test models not present")
@pytest.mark.parametrize("name, fmt", [("3DBenchy.3mf", "3mf"), ("Voron_Design_Cube_v7.stl", "stl"),
                                       ("teapot.stl", "stl")])
def test_real_models_are_accepted(env, name, fmt):
    r = env.upload((MODELS / name).read_bytes(), name)
    assert r.status_code == 201 and r.json["format"] == fmt, r.json


@pytest.mark.parametrize("xml", [
    b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
    b"<model>&b;</model>",
    b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><model>&x;'
    b"</model>",
    b"<model><resources><object><mesh><vertices>",
])
def test_3mf_with_hostile_or_broken_xml_is_refused(env, xml):
    r = env.upload(make_3mf(model=xml), "xxe.3mf")
    assert r.status_code == 422


@pytest.mark.parametrize("vertex", ['<vertex x="nan" y="0" z="0"/>', '<vertex x="1" y="0"/>',
                                    '<vertex x="1e999" y="0" z="0"/>'])
def test_3mf_with_bad_vertex_is_refused(env, vertex):
    r = env.upload(make_3mf(model=model_xml(vertex)), "bad.3mf")
    assert r.status_code == 422


def test_3mf_triangle_index_out_of_range_is_refused(env):
    xml = model_xml().replace(b'v3="', b'v3="9999', 1)
    r = env.upload(make_3mf(model=xml), "bad.3mf")
    assert r.status_code == 422 and "does not exist" in r.json["error"]["message"]


def test_zip_that_is_not_3mf_is_refused(env):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hi")
    r = env.upload(buf.getvalue(), "x.3mf")
    assert r.status_code == 422 and ".model" in r.json["error"]["message"]


def test_errors_have_the_json_shape_and_no_trace(env):
    for r in (env.client.get("/api/nope"), env.client.delete("/api/contents"),
              env.client.get("/api/contents", headers={"X-Api-Key": "bad"})):
        assert set(r.json) == {"error"} and set(r.json["error"]) == {"code", "name", "message"}
        assert "Traceback" not in r.get_data(as_text=True)


def test_unexpected_exception_is_500_json(env, monkeypatch):
    from contents_server import catalog

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(catalog, "list_for", boom)
    r = env.client.get("/api/contents", headers=env.headers())
    assert r.status_code == 500 and r.json["error"]["name"] == "UNKNOWN"
    assert "secret internals" not in r.get_data(as_text=True)
