"""Download: signed headers, resume after a broken connection, hash checked against the claim."""
from __future__ import annotations

import threading

import pytest
import requests

from gotapi3dp.wire.errors import ErrorCode, P3DError
from printer.download import DownloadCancelled, download



def _get(cs, keys, dest, **kw):
    url = f"{cs.url}/api/download/{cs.cap}"
    with requests.Session() as http:
        return download(url, dest, kw.pop("sha", cs.sha256), kw.pop("size", len(cs.content)),
                        keys, "printer-1", http=http, backoff=0.01, **kw)


def test_plain_download(cs, keys, tmp_path):
    dest = _get(cs, keys, tmp_path / "model.stl")
    assert dest.read_bytes() == cs.content
    assert not (tmp_path / "model.stl.part").exists()
    (_, _, headers), = [e for e in cs.log if e[0] == "GET"]
    assert headers["X-P3T-Printer"] == "printer-1" and "Range" not in headers


def test_resumes_after_a_broken_connection(cs, keys, tmp_path):
    cs.break_after, cs.breaks = 50_000, 2          # two drops, each after 50 kB
    dest = _get(cs, keys, tmp_path / "model.stl")
    assert dest.read_bytes() == cs.content
    gets = [h for m, _, h in cs.log if m == "GET"]
    assert len(gets) == 3
    assert "Range" not in gets[0]
    assert gets[1]["Range"] == "bytes=50000-" and gets[2]["Range"] == "bytes=100000-"
    assert gets[1]["If-Range"] == f'"sha256:{cs.sha256}"'
    assert len({h["X-P3T-Proof"] for h in gets}) >= 1


def test_changed_bytes_restart_from_zero_and_fail_the_hash(cs, keys, tmp_path):
    """If-Range no longer matches: the server sends everything; the claim still decides."""
    cs.break_after, cs.breaks = 50_000, 1
    cs.served = b"Y" * len(cs.content)
    with pytest.raises(P3DError) as err:
        _get(cs, keys, tmp_path / "model.stl")
    assert err.value.code == ErrorCode.CONTENT_HASH
    gets = [h for m, _, h in cs.log if m == "GET"]
    assert len(gets) == 2 and "Range" in gets[1]
    assert list(tmp_path.glob("model.stl*")) == []


def test_hash_mismatch_leaves_no_file(cs, keys, tmp_path):
    tampered = bytearray(cs.content)
    tampered[1000] ^= 1
    cs.served = bytes(tampered)
    with pytest.raises(P3DError) as err:
        _get(cs, keys, tmp_path / "model.stl")
    assert err.value.code == ErrorCode.CONTENT_HASH
    assert list(tmp_path.glob("model.stl*")) == []


def test_more_bytes_than_announced_is_refused(cs, keys, tmp_path):
    cs.served = cs.content + b"extra"
    with pytest.raises(P3DError) as err:
        _get(cs, keys, tmp_path / "model.stl")
    assert err.value.code == ErrorCode.CONTENT_HASH
    assert list(tmp_path.glob("model.stl*")) == []


def test_denied_is_not_retried(cs, keys, tmp_path):
    url = f"{cs.url}/api/download/not-the-cap"
    with requests.Session() as http, pytest.raises(P3DError) as err:
        download(url, tmp_path / "m.stl", cs.sha256, None, keys, "printer-1", http=http)
    assert err.value.code == ErrorCode.DOWNLOAD_DENIED
    assert len(cs.log) == 1


def test_gives_up_after_retries(cs, keys, tmp_path):
    cs.break_after, cs.breaks = 10, 100
    with pytest.raises(P3DError) as err:
        _get(cs, keys, tmp_path / "model.stl", retries=2)
    assert err.value.code == ErrorCode.DOWNLOAD_FAILED
    assert len([e for e in cs.log if e[0] == "GET"]) == 3
    assert not (tmp_path / "model.stl").exists()


def test_cancel(cs, keys, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DownloadCancelled):
        _get(cs, keys, tmp_path / "model.stl", cancel=cancel)
    assert not (tmp_path / "model.stl").exists()
