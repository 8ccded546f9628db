"""Printer keys (made once, private, stable) and the pinned contents-server trust."""
from __future__ import annotations

import json
import stat

import pytest
from nacl.signing import SigningKey

from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.token import b64d, b64e, fingerprint, key_id
from printer.keys import load_or_create
from printer.trust import TrustStore, trust_from_map


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_made_once_private_and_stable(tmp_path):
    data = tmp_path / "printer"
    keys = load_or_create(data, "printer-1", "P1")
    assert _mode(data) == 0o700
    for name in ("sign.key", "box.key", "api.key"):
        assert _mode(data / name) == 0o600, name
    again = load_or_create(data, "printer-1", "P1")
    assert again.sign_public == keys.sign_public
    assert again.box_public == keys.box_public
    assert again.api_key == keys.api_key and len(keys.api_key) >= 40
    assert keys.sign_public != keys.box_public          # two separate keys
    other = load_or_create(tmp_path / "other", "printer-1", "P1")
    assert other.sign_public != keys.sign_public and other.api_key != keys.api_key


def test_identity_is_public_only(tmp_path):
    keys = load_or_create(tmp_path, "printer-1", "P1")
    ident = keys.identity()
    assert ident["printerId"] == "printer-1" and ident["name"] == "P1"
    assert b64d(ident["signKey"]) == keys.sign_public
    assert b64d(ident["boxKey"]) == keys.box_public
    assert ident["fingerprint"] == fingerprint(keys.sign_public, keys.box_public)
    assert keys.api_key not in json.dumps(ident) and keys.api_key not in repr(keys)


def test_corrupt_key_file_is_refused(tmp_path):
    load_or_create(tmp_path, "p", "P")
    (tmp_path / "sign.key").write_bytes(b"short")
    with pytest.raises(ValueError):
        load_or_create(tmp_path, "p", "P")


def _trust_map(n: int = 1) -> dict:
    keys = [SigningKey.generate().verify_key for _ in range(n)]
    return {"issuer": "cs", "contentsUrl": "http://127.0.0.1:4050/",
            "keys": [{"kid": key_id(bytes(k)), "publicKey": b64e(bytes(k))} for k in keys]}


def test_trust_persists_atomically(tmp_path):
    store = TrustStore(tmp_path / "trust.json")
    assert store.get() is None
    m = _trust_map(2)
    store.set(trust_from_map(m))
    assert _mode(tmp_path / "trust.json") == 0o600
    assert not (tmp_path / "trust.json.tmp").exists()
    reloaded = TrustStore(tmp_path / "trust.json").get()
    assert reloaded is not None
    assert reloaded.issuer == "cs" and reloaded.contents_url == "http://127.0.0.1:4050"
    assert set(reloaded.keys) == {k["kid"] for k in m["keys"]}


@pytest.mark.parametrize("mutate", [
    lambda m: m["keys"][0].update(kid="00" * 8),                 # kid does not name the key
    lambda m: m["keys"][0].update(publicKey="not base64!"),
    lambda m: m["keys"][0].update(publicKey=b64e(b"x" * 31)),
    lambda m: m.update(keys=[]),
    lambda m: m.update(contentsUrl="file:///etc/passwd"),
    lambda m: m.update(issuer=""),
    lambda m: m.update(keys=[{"kid": "../../etc"}]),
])
def test_trust_validation(mutate):
    m = _trust_map()
    mutate(m)
    with pytest.raises(P3DError) as err:
        trust_from_map(m)
    assert err.value.code == ErrorCode.INVALID_REQUEST_PARAMETER
