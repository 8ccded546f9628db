"""PNG thumbnails of contents: a shaded isometric view rendered with numpy, no OpenGL.

The surface is sampled evenly (trimesh), each sample is lit by its face normal and splatted
into a z-buffer: all samples at once, the nearest per pixel wins (one lexsort). The image is
rendered at twice the size and averaged down 2x2, then written as an RGBA PNG with zlib.
Apps show the thumbnail; they never receive the model.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import trimesh

from gotapi3dp.fsutil import replace_file
from gotapi3dp.threemf import read_3mf

SIZE = 128                         # pixels, square
SUPERSAMPLE = 2
SAMPLES = 160_000                  # surface points; enough to close the splats at 256 px
MARGIN = 0.08                      # of the image, on each side
LIGHT = np.array([-0.3, -0.5, 0.8])      # model space: from above, front-left
BASE_RGB = np.array([64.0, 132.0, 214.0])
AMBIENT = 0.35
SEED = 7                           # same bytes, same thumbnail


def load_mesh(data: bytes, fmt: str) -> trimesh.Trimesh:
    """The content's mesh. `fmt` is the catalog's format: `stl`, `obj` or `3mf`."""
    if fmt == "3mf":
        vertices, faces = read_3mf(data)
        return trimesh.Trimesh(vertices, faces, process=False)
    mesh = trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh", process=False)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError("no triangles to render")
    return mesh


def _view_rotation() -> np.ndarray:
    """(3, 3) float: an isometric-ish view from the front-left, z up on screen."""
    yaw, pitch = np.radians(-35.0), np.radians(-60.0)
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    return rx @ rz


def _sample(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """Surface points (n, 3) float in view space, and their shade (n,) float in 0..1."""
    points, face_index = trimesh.sample.sample_surface(mesh, SAMPLES, seed=SEED)
    light = LIGHT / np.linalg.norm(LIGHT)
    shade = AMBIENT + (1 - AMBIENT) * np.abs(mesh.face_normals[face_index] @ light)
    return points @ _view_rotation().T, shade


def render(mesh: trimesh.Trimesh, size: int = SIZE) -> np.ndarray:
    """Render `mesh`.

    Returns
    -------
    image : (size, size, 4) uint8, RGBA, transparent background
    """
    points, shade = _sample(mesh)
    big = size * SUPERSAMPLE
    lo, hi = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    scale = big * (1 - 2 * MARGIN) / max(float((hi - lo).max()), 1e-9)
    offset = (big - (hi - lo) * scale) / 2
    xy = ((points[:, :2] - lo) * scale + offset).astype(np.int64).clip(0, big - 1)
    cols, rows = xy[:, 0], big - 1 - xy[:, 1]
    depth = -points[:, 2]                          # camera looks down -z: larger z is nearer
    rgb = (BASE_RGB[None, :] * shade[:, None]).clip(0, 255)
    offsets = np.array([(0, 0), (0, 1), (1, 0), (1, 1)])   # 2x2 splats close the gaps
    rows = (rows[None, :] + offsets[:, :1]).clip(0, big - 1).ravel()
    cols = (cols[None, :] + offsets[:, 1:]).clip(0, big - 1).ravel()
    image = _nearest(rows * big + cols, np.tile(depth, 4), np.tile(rgb, (4, 1)), big)
    small = image.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 4).mean(axis=(1, 3))
    return small.round().astype(np.uint8)


def _nearest(pixel: np.ndarray, depth: np.ndarray, rgb: np.ndarray, side: int) -> np.ndarray:
    """Z-buffer: for each pixel (flat index, (n,) int) keep the sample of least depth.

    Returns (side, side, 4) float64 RGBA, alpha 255 where any sample landed.
    """
    order = np.lexsort((depth, pixel))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pixel[order][1:] != pixel[order][:-1]
    win = order[first]
    flat = np.zeros((side * side, 4), dtype=np.float64)
    flat[pixel[win], :3] = rgb[win]
    flat[pixel[win], 3] = 255.0
    return flat.reshape(side, side, 4)


def encode_png(image: np.ndarray) -> bytes:
    """(h, w, 4) uint8 RGBA -> PNG bytes (filter 0 on every row)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"expected (h, w, 4) uint8, got {image.shape}")
    height, width = image.shape[:2]
    raw = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9)) + chunk(b"IEND", b""))


def thumbnail_png(data: bytes, fmt: str, size: int = SIZE) -> bytes:
    return encode_png(render(load_mesh(data, fmt), size))


class ThumbnailStore:
    """PNG files by the content's SHA-256 under `<data-dir>/thumbnails/`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / f"{sha256}.png"

    def get(self, sha256: str) -> bytes | None:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None

    def make(self, sha256: str, data: bytes, fmt: str) -> bytes:
        png = thumbnail_png(data, fmt)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_file(self.path(sha256), png, 0o600)
        return png
