"""Which mesh format an upload is, and whether it is a printable mesh at all.

Sniffed from the bytes, never from the file name: zip magic means 3MF; a size of exactly
84 + 50 * count means binary STL (even if the header starts with "solid", as some
exporters write); text starting with "solid" is ASCII STL; text with `v` and `f` lines is
OBJ. Everything else (images, documents, truncated files) is CONTENT_INVALID.
"""
from __future__ import annotations

import io
import re

import numpy as np
import trimesh

from gotapi3dp.threemf import ModelError, read_3mf
from gotapi3dp.wire.errors import ErrorCode, P3DError

STL_HEADER = 84
STL_RECORD = np.dtype([("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attr", "<u2")])
_OBJ_VERTEX = re.compile(rb"^\s*v\s", re.MULTILINE)
_OBJ_FACE = re.compile(rb"^\s*f\s", re.MULTILINE)


def check_model(data: bytes) -> str:
    """The format (`stl`, `obj`, `3mf`) of a valid mesh, else P3DError(CONTENT_INVALID)."""
    try:
        fmt = sniff(data)
        {"stl-binary": check_binary_stl, "stl-ascii": check_text_mesh_stl,
         "obj": check_text_mesh_obj, "3mf": read_3mf}[fmt](data)
    except ModelError as exc:
        raise P3DError(ErrorCode.CONTENT_INVALID, str(exc)) from None
    return fmt.split("-")[0]


def sniff(data: bytes) -> str:
    if data.startswith(b"PK\x03\x04"):
        return "3mf"
    if _binary_stl_size_ok(data):
        return "stl-binary"
    text = _as_text(data)
    if text is not None and text.lstrip()[:5].lower() == b"solid":
        return "stl-ascii"
    if text is not None and _OBJ_VERTEX.search(text) and _OBJ_FACE.search(text):
        return "obj"
    if text is None and len(data) >= STL_HEADER and not _known_non_mesh(data):
        count = int.from_bytes(data[80:84], "little")
        raise ModelError(f"binary STL size mismatch: the header says {count} triangles "
                         f"({STL_HEADER + 50 * count} bytes) but the file has {len(data)} bytes")
    raise ModelError("not a printable mesh: expected binary or ASCII STL, OBJ or 3MF")


def _binary_stl_size_ok(data: bytes) -> bool:
    if len(data) < STL_HEADER + 50:
        return False
    count = int.from_bytes(data[80:84], "little")
    return STL_HEADER + 50 * count == len(data)


def _as_text(data: bytes) -> bytes | None:
    """The bytes if they look like a text file (no NUL, valid UTF-8), else None."""
    if b"\x00" in data[:65536]:
        return None
    try:
        data[:65536].decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < 65536 - 4:      # not just a character cut at the sample's end
            return None
    return data


_NON_MESH_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"%PDF", b"\x1f\x8b", b"BM",
                   b"RIFF", b"\x7fELF", b"7z\xbc\xaf", b"Rar!")


def _known_non_mesh(data: bytes) -> bool:
    return data.startswith(_NON_MESH_MAGIC)


def check_binary_stl(data: bytes) -> None:
    """Size already matched the count; all vertex coordinates must be finite.

    Parsed as one numpy structured array, `(n,)` records of normal `(3,) f4`,
    vertices `(3, 3) f4`, attribute `u2`.
    """
    records = np.frombuffer(data, dtype=STL_RECORD, offset=STL_HEADER)
    if len(records) == 0:
        raise ModelError("binary STL has no triangles")
    if not np.isfinite(records["vertices"]).all():
        raise ModelError("binary STL has a NaN or infinite vertex coordinate")


def check_text_mesh_stl(data: bytes) -> None:
    _check_trimesh(data, "stl", "ASCII STL")


def check_text_mesh_obj(data: bytes) -> None:
    _check_trimesh(data, "obj", "OBJ")


def _check_trimesh(data: bytes, file_type: str, label: str) -> None:
    """Load a text mesh with trimesh, from memory only (no resolver: no side files)."""
    try:
        mesh = trimesh.load(io.BytesIO(data), file_type=file_type, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for malformed text
        raise ModelError(f"{label} could not be read: {type(exc).__name__}") from None
    faces = getattr(mesh, "faces", None)
    vertices = getattr(mesh, "vertices", None)
    if faces is None or vertices is None or len(faces) == 0:
        raise ModelError(f"{label} has no triangles")
    if not np.isfinite(np.asarray(vertices, dtype=np.float64)).all():
        raise ModelError(f"{label} has a NaN or infinite vertex coordinate")
