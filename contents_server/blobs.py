"""Content bytes on disk, addressed by SHA-256 (`blobs/ab/abcdef...`), written crash-safe."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from gotapi3dp.fsutil import fsync_dir, replace_file

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    """Immutable blobs: a name is a hash we computed, never anything a client sent."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, sha256: str) -> Path:
        if not _SHA256_RE.fullmatch(sha256):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store `data` (temp file, fsync, rename) and return its SHA-256 hex."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        if path.is_file() and path.stat().st_size == len(data):
            return digest
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fsync_dir(self.root)
        replace_file(path, data, 0o600)
        return digest

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        return os.stat(self.path(sha256)).st_size
