"""CURVE keys of the intent bus: who may connect to it, and how a plug-in host knows the server.

The bus is a TCP endpoint. Without authentication any local process (or, once it listens
beyond loopback, any machine) could connect as a plug-in host, take over the host's routing
id and answer apps' requests, contents keys included. So the GotAPI server's ROUTER is a
CURVE server (CurveZMQ: the handshake proves the client holds the secret half of its public
key, and every frame after it is encrypted) and admits only the public keys in its
allow-list directory (the ZAP handler in `gotapi_server/bus.py`).

Files, in ZeroMQ's certificate format (`zmq.auth`), under `<data-dir>`:
- `gotapi/bus/server.key` (public) and `server.key_secret`: the server's pair. A plug-in
  host must know the public half: `[plugin_host] bus_server_key`, or this file when the host
  shares the server's data dir.
- `gotapi/bus/clients/*.key`: the allow-list, one public key per plug-in host, read again
  whenever an unknown key knocks (adding a host needs no restart).
- `plugin_host/bus/client.key` and `client.key_secret`: a host's pair. A host that shares the
  server's data dir adds its own public key to the allow-list; for a host on another machine,
  copy its `client.key` into the server's `clients/` directory.
A pair is created once, atomically, by whichever process needs it first; secret files are
0600 in 0700 directories.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85

SERVER_NAME = "server"
CLIENT_NAME = "client"


@dataclass(frozen=True)
class KeyPair:
    public: bytes   # Z85, 40 characters
    secret: bytes


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def load_or_create_pair(directory: Path, name: str) -> KeyPair:
    """`<directory>/<name>.key_secret`, created if missing. Two processes racing here end
    with the same pair: the first link wins and the other reads it."""
    secret_path = _private_dir(directory) / f"{name}.key_secret"
    if not secret_path.exists():
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            public_file, secret_file = zmq.auth.create_certificates(tmp, name)
            os.chmod(secret_file, 0o600)
            try:
                os.link(secret_file, secret_path)
            except FileExistsError:
                pass
            else:
                os.replace(public_file, directory / f"{name}.key")
    public, secret = zmq.auth.load_certificate(secret_path)
    if secret is None:
        raise ValueError(f"{secret_path} holds no secret key")
    return KeyPair(public, secret)


def server_dir(gotapi_dir: Path) -> Path:
    return gotapi_dir / "bus"


def clients_dir(gotapi_dir: Path) -> Path:
    return server_dir(gotapi_dir) / "clients"


def read_public(path: Path) -> bytes:
    """The public key of a `.key` (or `.key_secret`) file; OSError or ValueError if unusable."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    public, _ = zmq.auth.load_certificate(path)
    if not public or len(public) != 40:
        raise ValueError(f"{path} holds no CURVE public key")
    return public


def allowed_keys(directory: Path) -> dict[bytes, str]:
    """The allow-list: public key -> the name of its file (what the logs call the host)."""
    keys: dict[bytes, str] = {}
    if not directory.is_dir():
        return keys
    for path in sorted(directory.glob("*.key")):
        try:
            keys[read_public(path)] = path.stem
        except (OSError, ValueError):
            continue   # a stray or half-copied file admits nobody
    return keys


def admit(directory: Path, name: str, public_file: Path) -> None:
    """Put `public_file` in the allow-list as `<name>.key` (atomic; unchanged if there)."""
    target = _private_dir(directory) / f"{name}.key"
    if target.exists() and read_public(target) == read_public(public_file):
        return
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as tmp:
        shutil.copyfile(public_file, tmp.name)
    os.replace(tmp.name, target)


def z85_of(binary_key: bytes) -> bytes:
    return zmq.utils.z85.encode(binary_key)
