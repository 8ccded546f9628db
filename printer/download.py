"""Download the model over a signed capability URL, resuming, and verify it before use.

Each request carries the printer's proof headers (X-P3T-Printer/-Time/-Proof over
`download_message`). Bytes go to `<dest>.part`; a broken connection resumes with
`Range: bytes=N-` and `If-Range: "sha256:<hex>"` (a server with other bytes answers 200 and
the file restarts). Only bytes whose SHA-256 equals the signed claim are renamed to `dest`;
a mismatch deletes the partial file. Nothing unverified is ever handed to the slicer.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import urlsplit

import requests
import urllib3

from gotapi3dp.fsutil import fsync_dir
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.token import b64e, download_message

from .keys import PrinterKeys

CHUNK = 64 * 1024
RETRIES = 4
BACKOFF = 0.5          # seconds, doubled per retry
TIMEOUT = 20.0         # connect and per-read timeout
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class _Broken(Exception):
    """The transfer stopped early; retry (resuming, unless `restart`) after a back-off."""

    def __init__(self, restart: bool = False) -> None:
        super().__init__("transfer broken")
        self.restart = restart


class DownloadCancelled(Exception):
    """The caller's cancel event was set while downloading."""


def proof_headers(url: str, keys: PrinterKeys, printer_id: str,
                  now: float | None = None) -> dict[str, str]:
    """The signed headers the contents server checks on `GET /api/download/<cap>`."""
    iat = int(time.time() if now is None else now)
    path = urlsplit(url).path
    proof = keys.sign_key.sign(download_message("GET", path, printer_id, iat)).signature
    return {"X-P3T-Printer": printer_id, "X-P3T-Time": str(iat), "X-P3T-Proof": b64e(proof)}


def download(url: str, dest: Path, expected_sha256: str, expected_size: int | None,
             keys: PrinterKeys, printer_id: str, http: requests.Session | None = None,
             retries: int = RETRIES, backoff: float = BACKOFF, timeout: float = TIMEOUT,
             cancel: threading.Event | None = None) -> Path:
    """Fetch `url` into `dest`, verified against `expected_sha256` (from the signed claims).

    `expected_size` (from the server's content record, unsigned) caps how much is accepted.
    Raises P3DError: DOWNLOAD_DENIED (4xx), DOWNLOAD_FAILED (retries exhausted),
    CONTENT_HASH (bytes differ from the claim; the partial file is deleted).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    http = http or requests.Session()
    etag = f'"sha256:{expected_sha256}"'
    for attempt in range(retries + 1):
        if cancel is not None and cancel.is_set():
            raise DownloadCancelled()
        try:
            if _fetch(http, url, part, etag, expected_size, keys, printer_id, timeout, cancel):
                break
        except _Broken as broken:
            if broken.restart:
                _discard(part)
        if attempt < retries:
            time.sleep(backoff * (2 ** attempt))
    else:
        raise P3DError(ErrorCode.DOWNLOAD_FAILED, f"download failed after {retries + 1} attempts")
    _verify(part, expected_sha256)
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


def _fetch(http: requests.Session, url: str, part: Path, etag: str, size: int | None,
           keys: PrinterKeys, printer_id: str, timeout: float,
           cancel: threading.Event | None) -> bool:
    """One request; True once `part` holds the whole body. Raises _Broken to retry."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        _discard(part)
        offset = 0
    if offset and offset == size:
        return True                      # complete from an earlier attempt
    headers = {**proof_headers(url, keys, printer_id), "Accept-Encoding": "identity"}
    if offset:
        headers.update({"Range": f"bytes={offset}-", "If-Range": etag})
    try:
        with http.get(url, headers=headers, stream=True, timeout=timeout) as resp:
            start = _start_offset(resp, offset)
            with open(part, "r+b" if start and part.exists() else "wb") as fh:
                fh.seek(start)
                fh.truncate()
                _copy(resp, fh, start, size, cancel)
                fh.flush()
                os.fsync(fh.fileno())
                written = fh.tell()
    except (requests.RequestException, urllib3.exceptions.HTTPError):
        raise _Broken() from None
    if size is not None and written < size:
        raise _Broken()
    return True


def _start_offset(resp: requests.Response, offset: int) -> int:
    """Where the body goes in the file: `offset` for a matching 206, 0 for a full 200."""
    if resp.status_code == 200:
        return 0
    if resp.status_code == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            return offset
        raise _Broken()
    if resp.status_code == 416:          # our partial file is no prefix of theirs: restart
        raise _Broken(restart=True)
    if resp.status_code >= 500 or resp.status_code == 429:
        raise _Broken()
    try:
        body = resp.json()
    except ValueError:
        body = None
    raise P3DError.from_http(body, ErrorCode.DOWNLOAD_DENIED)


def _copy(resp: requests.Response, fh: BinaryIO, start: int, size: int | None,
          cancel: threading.Event | None) -> None:
    total = start
    for chunk in _chunks(resp):
        if cancel is not None and cancel.is_set():
            raise DownloadCancelled()
        total += len(chunk)
        if size is not None and total > size:
            fh.close()
            _discard(Path(fh.name))
            raise P3DError(ErrorCode.CONTENT_HASH,
                           "the server sent more bytes than the content has")
        fh.write(chunk)


def _chunks(resp: requests.Response) -> Iterator[bytes]:
    """Body bytes as they arrive (read1), so a dropped connection loses nothing received."""
    read1 = getattr(resp.raw, "read1", None)
    if read1 is None:                       # urllib3 < 2
        yield from resp.iter_content(CHUNK)
        return
    while chunk := read1(CHUNK, decode_content=False):
        yield chunk


def _verify(part: Path, expected_sha256: str) -> None:
    digest = hashlib.sha256()
    with open(part, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected_sha256:
        _discard(part)
        raise P3DError(ErrorCode.CONTENT_HASH,
                       "downloaded bytes do not match the SHA-256 in the signed token")


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
