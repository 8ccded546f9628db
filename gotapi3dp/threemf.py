"""3MF reading: one hardened reader from zip bytes to a triangle mesh in millimetres.

A 3MF is a zip of XML parts. The zip is never extracted to disk: every member is inflated
in memory under caps on member count, total size and compression ratio, counted on the
bytes actually produced (headers can lie); names with `..`, absolute paths, symlink bits,
encryption or duplicates are refused. XML is parsed with expat, DTDs and entity declarations
refused as defusedxml does, so XXE and "billion laughs" cannot work; no tree is built. Mesh
blocks in the plain form every exporter writes are cut out of what expat sees and read in C
(split on quotes, every separator and value character checked, `np.fromstring`), which makes
Benchy's 225k triangles ~5x faster to load; any other form goes through expat element by
element, with the same results and the same errors.

Geometry follows the 3MF core spec: objects hold a `<mesh>` or `<components>` (nested,
each with a transform, possibly in another part via the production extension's `p:path`),
the `<build>` items place objects with their transforms, and the root model's `unit` is
converted to millimetres. Every problem raises `ModelError` with a message for the user.
"""
from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from typing import IO
from xml.etree.ElementTree import ParseError
from xml.parsers import expat
from xml.parsers.expat import ExpatError

import numpy as np
from defusedxml import (
    DefusedXmlException,
    DTDForbidden,
    EntitiesForbidden,
    ExternalReferenceForbidden,
)
from defusedxml.ElementTree import fromstring

MAX_MEMBERS = 1000
MAX_TOTAL_BYTES = 1 << 30          # inflated, all members together
MAX_RATIO = 100                    # inflated / compressed, checked once past RATIO_FLOOR
RATIO_FLOOR = 1 << 20              # small members may compress well; they cannot hurt
MAX_VERTICES = 20_000_000          # per mesh, and in the assembled model
MAX_TRIANGLES = 20_000_000
MAX_INSTANCES = 100_000            # object placements once components are expanded
MAX_DEPTH = 16                     # component nesting; deeper means a cycle
CHUNK = 1 << 16                    # bytes inflated per read
ROWS = 1 << 16                     # XML rows collected before converting to numpy

CORE_NS = "http://schemas.microsoft.com/3dmanufacturing/core/2015/02"
PATH_ATTR = "http://schemas.microsoft.com/3dmanufacturing/production/2015/06}path"   # expat
MODEL_REL = "http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"
UNIT_MM = {"micron": 0.001, "millimeter": 1.0, "centimeter": 10.0, "meter": 1000.0,
           "inch": 25.4, "foot": 304.8}
IDENTITY = np.vstack([np.eye(3), np.zeros(3)])        # (4, 3): p' = p @ m[:3] + m[3]

Source = bytes | str | os.PathLike[str] | IO[bytes]


class ModelError(ValueError):
    """The file is not a usable 3MF; the message says why, for the user."""


def read_3mf(source: Source) -> tuple[np.ndarray, np.ndarray]:
    """Every built object of a 3MF, placed and in millimetres, as one mesh.

    Parameters
    ----------
    source : bytes, path or binary file object of the 3MF archive

    Returns
    -------
    vertices : (n, 3) float64, millimetres, all finite
    faces : (m, 3) int64, indices into `vertices`, m > 0
    """
    members = read_members(source)
    return _Assembly(members).build(_root_part(members))


# ---------------------------------------------------------------------------- zip


def read_members(source: Source) -> dict[str, bytes]:
    """Inflate every member under the caps; keep the XML parts (.model, .rels)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise ModelError(f"not a readable zip archive: {exc}") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ModelError(f"3MF archive has {len(infos)} members, limit {MAX_MEMBERS}")
        kept: dict[str, bytes] = {}
        seen: set[str] = set()
        budget = [MAX_TOTAL_BYTES]
        for info in infos:
            _check_name(info, seen)
            keep = info.filename.lower().endswith((".model", ".rels"))
            body = _inflate(archive, info, budget, keep)
            if keep:
                kept[info.filename] = body
    return kept


def _check_name(info: zipfile.ZipInfo, seen: set[str]) -> None:
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if (name.startswith(("/", "\\")) or "\x00" in name or ".." in parts
            or (len(name) > 1 and name[1] == ":")):
        raise ModelError(f"3MF member name {name[:80]!r} is absolute or leaves the archive")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ModelError(f"3MF member {name[:80]!r} is a symbolic link")
    if info.flag_bits & 0x1:
        raise ModelError(f"3MF member {name[:80]!r} is encrypted")
    if name.lower() in seen:
        raise ModelError(f"3MF archive holds member {name[:80]!r} twice")
    seen.add(name.lower())


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: list[int],
             keep: bool) -> bytes:
    """Read one member, counting real output; stop at the first cap it would cross."""
    out = bytearray()
    produced = 0
    compressed = max(info.compress_size, 1)
    try:
        with archive.open(info) as fh:
            while chunk := fh.read(CHUNK):
                produced += len(chunk)
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise ModelError("3MF archive inflates beyond the size limit")
                if produced > RATIO_FLOOR and produced / compressed > MAX_RATIO:
                    raise ModelError(f"3MF member {info.filename[:80]!r} compresses more "
                                     f"than {MAX_RATIO}:1 (zip bomb?)")
                if keep:
                    out += chunk
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise ModelError(f"3MF member {info.filename[:80]!r} is corrupt: {exc}") from None
    return bytes(out)


def _root_part(members: dict[str, bytes]) -> str:
    """The model part `_rels/.rels` names, else `3D/3dmodel.model`, else the first."""
    models = sorted(n for n in members if n.lower().endswith(".model"))
    if not models:
        raise ModelError("3MF archive has no .model part")
    by_lower = {n.lower(): n for n in models}
    rels = members.get("_rels/.rels")
    target = _rels_target(rels) if rels is not None else None
    for candidate in (target, "3d/3dmodel.model"):
        if candidate and candidate.lstrip("/").lower() in by_lower:
            return by_lower[candidate.lstrip("/").lower()]
    return models[0]


def _rels_target(body: bytes) -> str | None:
    try:
        root = fromstring(body, forbid_dtd=True)
    except (ParseError, DefusedXmlException) as exc:
        raise ModelError(f"_rels/.rels is not acceptable XML: {exc}") from None
    for rel in root.iter():
        if rel.tag.endswith("Relationship") and rel.get("Type") == MODEL_REL:
            return rel.get("Target")
    return None


# ---------------------------------------------------------------------------- XML


@dataclass(frozen=True)
class _Ref:
    """A build item or component: an object, its part (None: this one), a (4, 3) transform."""

    part: str | None
    objectid: str
    transform: np.ndarray


@dataclass
class _Object:
    mesh: tuple[np.ndarray, np.ndarray] | None = None     # (n, 3) float64, (m, 3) int64
    components: list[_Ref] = field(default_factory=list)


@dataclass
class _Part:
    unit: str = "millimeter"
    objects: dict[str, _Object] = field(default_factory=dict)
    items: list[_Ref] = field(default_factory=list)


class _Rows:
    """Attribute triples collected into an `(n, 3)` array, converted every ROWS rows."""

    def __init__(self, dtype: type, limit: int, where: str) -> None:
        self.dtype, self.limit, self.where = dtype, limit, where
        self.rows: list[tuple[str, str, str]] = []
        self.chunks: list[np.ndarray] = []
        self.count = 0

    def add(self, row: tuple[str, str, str]) -> None:
        self.rows.append(row)
        if len(self.rows) >= ROWS:
            self._flush()

    def add_array(self, rows: np.ndarray) -> None:
        self._flush()
        self.chunks.append(rows)
        self._counted(len(rows))

    def room(self) -> int:
        return self.limit - self.count - len(self.rows)

    def take(self) -> np.ndarray:
        self._flush()
        out = np.concatenate(self.chunks) if self.chunks else np.zeros((0, 3), self.dtype)
        self.chunks, self.count = [], 0
        return out

    def _flush(self) -> None:
        if not self.rows:
            return
        try:
            self.chunks.append(np.array(self.rows, dtype=self.dtype).reshape(-1, 3))
        except (ValueError, OverflowError):
            raise ModelError(f"{self.where}: a vertex or triangle has a missing or "
                             "non-numeric value") from None
        self._counted(len(self.rows))
        self.rows = []

    def _counted(self, n: int) -> None:
        self.count += n
        if self.count > self.limit:
            raise ModelError(f"{self.where}: too many vertices or triangles")


def _local(name: str) -> str | None:
    """The local name of an expat `uri}local` (or un-namespaced) name in the core, else None."""
    ns, sep, local = name.rpartition("}")
    return local if not sep or ns == CORE_NS else None


# The fast path. A `<vertices>` / `<triangles>` block written in the usual plain form -- only
# `<vertex x="" y="" z=""/>` (`<triangle v1="" v2="" v3=""/>`) tags, double-quoted values of
# ASCII number characters, XML whitespace between -- is cut out of the bytes fed to expat and
# read here by splitting on `"`: every separator is checked against the exact form (there are
# only a handful of distinct ones) and every value's characters, so such a block is proven
# well-formed, free of entities, comments, CDATA and namespace declarations, and meaning
# exactly what expat would have reported. A block in any other form is simply fed to expat.
_WS = rb"[ \t\r\n]"
_BLOCK_START = re.compile(rb"<(vertices|triangles)" + _WS + rb"*>")
_BLOCK_END = {b"vertices": re.compile(rb"</vertices" + _WS + rb"*>"),
              b"triangles": re.compile(rb"</triangles" + _WS + rb"*>")}
_VALUE_CHARS = b"-+._0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ \t\r\n"
_FORMS = {
    b"vertices": (np.float64, b"vertex", (b"x", b"y", b"z")),
    b"triangles": (np.int64, b"triangle", (b"v1", b"v2", b"v3")),
}
BLOCK_PIECE = 1 << 16              # bytes of a block split and converted at a time (cache-sized)


def _separators(tag: bytes, names: tuple[bytes, bytes, bytes]) -> tuple[re.Pattern, ...]:
    eq = _WS + rb"*=" + _WS + rb"*"
    open_ = rb"<" + tag + _WS + rb"+" + names[0] + eq
    return (re.compile(_WS + rb"*" + open_),                         # before the first value
            re.compile(_WS + rb"+" + names[1] + eq),
            re.compile(_WS + rb"+" + names[2] + eq),
            re.compile(_WS + rb"*/>" + _WS + rb"*" + open_),         # between two tags
            re.compile(_WS + rb"*/>" + _WS + rb"*"))                 # after the last


_SEPARATORS = {kind: _separators(tag, names) for kind, (_, tag, names) in _FORMS.items()}


def _plain_block(kind: bytes, block: bytes, where: str) -> list[np.ndarray] | None:
    """The `(n, 3)` rows of a block in the plain form, in pieces; None if it is not."""
    dtype = _FORMS[kind][0]
    first, second, third, between, last = _SEPARATORS[kind]
    out = []
    start = 0
    while start < len(block):
        cut = block.find(b"<", start + BLOCK_PIECE)
        piece = block[start:] if cut < 0 else block[start:cut]
        start = len(block) if cut < 0 else cut
        parts = piece.split(b'"')
        tags = len(parts) // 6
        if len(parts) % 6 != 1:
            return None
        if not tags:                                         # whitespace only
            if piece.strip(b" \t\r\n"):
                return None
            continue
        seps, values = parts[0::2], parts[1::2]
        # Without value characters each tag is `<=""=""=""/>`: values hold nothing else.
        if (piece.translate(None, _VALUE_CHARS) != _MARKUP * tags
                or not (first.fullmatch(seps[0]) and last.fullmatch(seps[-1])
                        and _all_match(second, seps[1::3]) and _all_match(third, seps[2::3])
                        and _all_match(between, seps[3:-1:3]))):
            return None
        out.append(_numbers(values, dtype, where).reshape(-1, 3))
    return out


def _all_match(form: re.Pattern, seps: list[bytes]) -> bool:
    """Every separator has the form; usually they are all one and the same."""
    distinct = seps[:1] if seps.count(seps[:1][0] if seps else b"") == len(seps) else set(seps)
    return all(form.fullmatch(s) for s in distinct)


def _numbers(values: list[bytes], dtype: type, where: str) -> np.ndarray:
    """`float` / `int` of every value, as the slow path would parse them, in C when plain."""
    joined = b" ".join(values)
    if not joined.translate(None, _PLAIN_FLOAT if dtype is np.float64 else _PLAIN_INT):
        try:                       # ValueError below: an empty value or a stray sign or dot
            out = np.fromstring(joined, dtype=dtype, sep=" ")
        except ValueError:
            out = None
        if (out is not None and len(out) == len(values)
                and (dtype is np.float64 or not out.size or out.max() < _INT_SATURATED)):
            return out
    convert = float if dtype is np.float64 else int
    try:
        return np.fromiter(map(convert, values), dtype, len(values))
    except (ValueError, OverflowError):
        raise ModelError(f"{where}: a vertex or triangle has a missing or "
                         "non-numeric value") from None


_MARKUP = b'<=""=""=""/>'
_PLAIN_FLOAT = b"0123456789.eE+- "       # np.fromstring and float() agree on these
_PLAIN_INT = b"0123456789 "
_INT_SATURATED = np.iinfo(np.int64).max  # np.fromstring's answer for a too-large integer


class _Fallback(Exception):
    """expat did not see a cut block as expected: parse the part again without cutting."""


class _PartParser:
    """Streams one .model part into its objects and build items with expat (DTDs refused)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def parse(self, body: bytes) -> _Part:
        try:
            try:
                return self._parse(body, fast=True)
            except _Fallback:
                return self._parse(body, fast=False)
        except (ExpatError, DefusedXmlException) as exc:
            raise ModelError(f"{self.name} is not acceptable XML: {exc}") from None

    def _parse(self, body: bytes, fast: bool) -> _Part:
        self.part = _Part()
        self.object: _Object | None = None
        self.object_id: str | None = None
        self.depth = 0
        self.vertices = _Rows(np.float64, MAX_VERTICES, self.name)
        self.triangles = _Rows(np.int64, MAX_TRIANGLES, self.name)
        self.last_start: tuple[str | None, int] = (None, -1)
        self.expect_end: tuple[str, int] | None = None
        self.encoding_ok = body[:2] not in (b"\xff\xfe", b"\xfe\xff") and b"\0" not in body[:4]
        parser = self.parser = expat.ParserCreate(namespace_separator="}")
        parser.StartDoctypeDeclHandler = _refuse_dtd
        parser.EntityDeclHandler = _refuse_entity
        parser.UnparsedEntityDeclHandler = _refuse_unparsed_entity
        parser.ExternalEntityRefHandler = _refuse_external
        parser.XmlDeclHandler = self._xml_decl
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        pos = fed = 0
        while fast and (m := _BLOCK_START.search(body, pos)):
            parser.Parse(body[pos:m.end()], False)
            fed += m.end() - pos
            pos = m.end()
            kind = m.group(1)
            close = body.find(b"</", pos)
            end = _BLOCK_END[kind].match(body, close) if close >= 0 else None
            rows = self.vertices if kind == b"vertices" else self.triangles
            if (end is None or not self.encoding_ok
                    or self.last_start != (kind.decode(), fed - (m.end() - m.start()))
                    or body.count(b"<", pos, close) > rows.room()):
                continue
            pieces = _plain_block(kind, body[pos:close], self.name)
            if pieces is None:
                continue
            for piece in pieces:
                rows.add_array(piece)
            self.expect_end = (kind.decode(), fed)
            pos = close                                     # the block is never fed
        parser.Parse(body[pos:], True)
        return self.part

    def _xml_decl(self, version: str, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.lower() not in ("utf-8", "us-ascii", "ascii"):
            self.encoding_ok = False

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        if self.expect_end is not None:
            raise _Fallback
        tag = _local(name)
        self.last_start = (tag, self.parser.CurrentByteIndex)
        depth, self.depth = self.depth, self.depth + 1
        if tag == "vertex":
            self.vertices.add((attrs.get("x", ""), attrs.get("y", ""), attrs.get("z", "")))
        elif tag == "triangle":
            self.triangles.add((attrs.get("v1", ""), attrs.get("v2", ""), attrs.get("v3", "")))
        elif tag == "model" and depth == 0:
            self.part.unit = attrs.get("unit", "millimeter")
        elif tag == "object":
            self.object, self.object_id = _Object(), attrs.get("id")
        elif tag == "component":
            self._inside("component").components.append(self._ref(attrs, "component"))
        elif tag == "item":
            self.part.items.append(self._ref(attrs, "item"))

    def _end(self, name: str) -> None:
        tag = _local(name)
        self.depth -= 1
        self.last_start = (None, -1)
        if self.expect_end is not None:
            if self.expect_end != (tag, self.parser.CurrentByteIndex):
                raise _Fallback
            self.expect_end = None
        if tag == "mesh":
            self._inside("mesh").mesh = _check_mesh(self.vertices.take(),
                                                    self.triangles.take(), self.name)
        elif tag == "object":
            self._end_object()

    def _inside(self, what: str) -> _Object:
        if self.object is None:
            raise ModelError(f"{self.name}: a <{what}> outside any <object>")
        return self.object

    def _end_object(self) -> None:
        oid = self.object_id
        if not oid:
            raise ModelError(f"{self.name}: an <object> without an id")
        if oid in self.part.objects:
            raise ModelError(f"{self.name}: object id {oid[:40]!r} is used twice")
        self.part.objects[oid] = self._inside("object")
        self.object = self.object_id = None

    def _ref(self, attrs: dict[str, str], what: str) -> _Ref:
        oid = attrs.get("objectid")
        if not oid:
            raise ModelError(f"{self.name}: a <{what}> without an objectid")
        where = f"{self.name}: <{what}> of object {oid[:40]!r}"
        return _Ref(attrs.get(PATH_ATTR), oid, _transform(attrs.get("transform"), where))


def _refuse_dtd(name, sysid, pubid, has_internal_subset):            # as defusedxml does
    raise DTDForbidden(name, sysid, pubid)


def _refuse_entity(name, is_parameter_entity, value, base, sysid, pubid, notation_name):
    raise EntitiesForbidden(name, value, base, sysid, pubid, notation_name)


def _refuse_unparsed_entity(name, base, sysid, pubid, notation_name):
    raise EntitiesForbidden(name, None, base, sysid, pubid, notation_name)


def _refuse_external(context, base, sysid, pubid):
    raise ExternalReferenceForbidden(context, base, sysid, pubid)


def _transform(text: str | None, where: str) -> np.ndarray:
    """`(4, 3) float64` from the 12 numbers of a 3MF transform; identity when absent."""
    if text is None:
        return IDENTITY
    try:
        m = np.array(text.split(), dtype=np.float64)
    except ValueError:
        m = np.zeros(0)
    if m.size != 12 or not np.isfinite(m).all():
        raise ModelError(f"{where}: transform {text[:80]!r} is not 12 finite numbers")
    return m.reshape(4, 3)


def _check_mesh(v: np.ndarray, f: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates are finite and every index names a vertex of this mesh."""
    if len(v) == 0 or len(f) == 0:
        raise ModelError(f"{name}: a <mesh> without vertices or triangles")
    if not np.isfinite(v).all():
        raise ModelError(f"{name}: a vertex coordinate is NaN or infinite")
    if f.min() < 0 or f.max() >= len(v):
        raise ModelError(f"{name}: a triangle refers to a vertex that does not exist")
    return v, f


# ---------------------------------------------------------------------------- geometry


class _Assembly:
    """Places the build items' objects, expanding components, after checking the totals."""

    def __init__(self, members: dict[str, bytes]) -> None:
        self.members = members
        self.by_lower = {n.lower(): n for n in members if n.lower().endswith(".model")}
        self.parsed: dict[str, _Part] = {}
        self.sizes: dict[tuple[str, str], tuple[int, int, int]] = {}
        self.placed: list[tuple[np.ndarray, np.ndarray]] = []

    def build(self, root: str) -> tuple[np.ndarray, np.ndarray]:
        model = self.part(root)
        if model.unit not in UNIT_MM:
            raise ModelError(f"{root}: unknown unit {model.unit[:40]!r}")
        items = model.items or [_Ref(None, oid, IDENTITY)
                                for oid, obj in model.objects.items() if obj.mesh is not None]
        totals = [sum(n) for n in zip((0, 0, 0), *(self.size(root, i, 0) for i in items))]
        if (totals[0] > MAX_INSTANCES or totals[1] > MAX_VERTICES
                or totals[2] > MAX_TRIANGLES):
            raise ModelError("3MF model expands to too many objects, vertices or triangles")
        for item in items:
            self.place(root, item, IDENTITY, depth=0)
        if not self.placed:
            raise ModelError("3MF archive holds no triangles")
        return _merge(self.placed, UNIT_MM[model.unit])

    def part(self, path: str) -> _Part:
        name = self.by_lower.get(path.lstrip("/").lower())
        if name is None:
            raise ModelError(f"3MF refers to a missing model part {path[:80]!r}")
        if name not in self.parsed:
            self.parsed[name] = _PartParser(name).parse(self.members[name])
        return self.parsed[name]

    def resolve(self, path: str, ref: _Ref, depth: int) -> tuple[str, _Object]:
        path = ref.part or path
        obj = self.part(path).objects.get(ref.objectid)
        if obj is None:
            raise ModelError(f"{path}: refers to a missing object {ref.objectid[:40]!r}")
        if depth > MAX_DEPTH:
            raise ModelError(f"{path}: components nest deeper than {MAX_DEPTH} (a cycle?)")
        return path, obj

    def size(self, path: str, ref: _Ref, depth: int) -> tuple[int, int, int]:
        """(placements, vertices, triangles) once expanded; memoised, so bombs cost nothing."""
        path, obj = self.resolve(path, ref, depth)
        key = (path, ref.objectid)
        if key not in self.sizes:
            own = (1, len(obj.mesh[0]), len(obj.mesh[1])) if obj.mesh else (1, 0, 0)
            children = (self.size(path, c, depth + 1) for c in obj.components)
            self.sizes[key] = tuple(sum(n) for n in zip(own, *children))   # type: ignore
        return self.sizes[key]

    def place(self, path: str, ref: _Ref, parent: np.ndarray, depth: int) -> None:
        path, obj = self.resolve(path, ref, depth)
        transform = _compose(ref.transform, parent)
        if obj.mesh is not None:
            v, f = obj.mesh
            flip = np.linalg.det(transform[:3]) < 0      # a mirror turns faces inside out
            self.placed.append((v @ transform[:3] + transform[3], f[:, ::-1] if flip else f))
        for child in obj.components:
            self.place(path, child, transform, depth + 1)


def _compose(child: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """`(4, 3)`: apply `child`, then `parent`."""
    return np.vstack([child[:3] @ parent[:3], child[3] @ parent[:3] + parent[3]])


def _merge(placed: list[tuple[np.ndarray, np.ndarray]],
           scale: float) -> tuple[np.ndarray, np.ndarray]:
    """One `(n, 3) float64` vertex array in mm and `(m, 3) int64` faces, re-indexed."""
    offsets = np.cumsum([0] + [len(v) for v, _ in placed[:-1]])
    vertices = np.concatenate([v for v, _ in placed]) * scale
    faces = np.concatenate([f + o for (_, f), o in zip(placed, offsets)]).astype(np.int64)
    if not np.isfinite(vertices).all():
        raise ModelError("3MF coordinates overflow once transforms and units are applied")
    return vertices, faces
