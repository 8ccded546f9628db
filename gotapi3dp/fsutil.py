"""Crash-safe file writes: temp file, fsync, atomic rename or link, fsync the directory."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def _write_temp(directory: Path, data: bytes, mode: int) -> Path:
    tmp = directory / f".tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def fsync_dir(directory: Path) -> None:
    """Make a rename or link inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `path` so that readers see the old content or the new one, never a part."""
    tmp = _write_temp(path.parent, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_file(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create `path` complete or not at all; False (and no change) if it already exists."""
    tmp = _write_temp(path.parent, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def read_or_create(path: Path, make: Callable[[], bytes], mode: int = 0o600) -> bytes:
    """Contents of a private file, created complete (never half-written) on first use."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        create_file(path, make(), mode)   # loses a race gracefully: then read the winner's
        return path.read_bytes()
