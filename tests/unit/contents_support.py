"""Shared helpers for the contents server tests: an app on tmp_path, a simulated printer."""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trimesh
from flask.testing import FlaskClient
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from contents_server.app import create_app
from gotapi3dp.config import ContentsConfig
from gotapi3dp.wire import token as p3t

START = 1_700_000_000.0


class FakeClock:
    """A settable clock handed to create_app, so tests move time instead of sleeping."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    app: Any
    client: FlaskClient
    clock: FakeClock
    data_dir: Path
    key: str

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"X-Api-Key": self.key if key is None else key}

    def upload(self, data: bytes, filename: str = "model.stl", key: str | None = None,
               **form: str) -> Any:
        body: dict[str, Any] = {"file": (io.BytesIO(data), filename), **form}
        return self.client.post("/api/contents", headers=self.headers(key), data=body,
                                content_type="multipart/form-data")

    def new_account(self, name: str) -> str:
        from contents_server import accounts
        from contents_server.services import EXTENSION
        return accounts.add_account(self.app.extensions[EXTENSION].db, name)


def make_env(tmp_path: Path, **config: Any) -> Env:
    clock = FakeClock()
    app = create_app(ContentsConfig(**config), tmp_path / "contents", clock=clock)
    key = (tmp_path / "contents" / "demo.key").read_text().strip()
    return Env(app, app.test_client(), clock, tmp_path / "contents", key)


@dataclass
class PrinterSim:
    """The printer's side of the protocol, with its own keys, as the printer process would."""

    printer_id: str = "printer-1"
    sign: SigningKey = field(default_factory=SigningKey.generate)
    box: PrivateKey = field(default_factory=PrivateKey.generate)

    def registration(self, name: str = "Test printer") -> dict[str, str]:
        return {"printerId": self.printer_id, "name": name,
                "signKey": p3t.b64e(bytes(self.sign.verify_key)),
                "boxKey": p3t.b64e(bytes(self.box.public_key))}

    def unseal(self, token: str) -> bytes:
        return p3t.unseal(token, self.box)

    def nonce(self, env: Env) -> str:
        r = env.client.post("/api/redeem/challenge", json={"printerId": self.printer_id})
        assert r.status_code == 200, r.json
        return r.json["nonce"]

    def redeem_body(self, signed: bytes, nonce: str, iat: int,
                    signer: SigningKey | None = None) -> dict[str, Any]:
        message = p3t.pop_message(signed, p3t.b64d(nonce), "POST", "/api/redeem", iat)
        proof = (signer or self.sign).sign(message).signature
        return {"printerId": self.printer_id, "signed": p3t.b64e(signed), "nonce": nonce,
                "iat": iat, "proof": p3t.b64e(proof)}

    def redeem(self, env: Env, token: str, signer: SigningKey | None = None) -> Any:
        signed = self.unseal(token)
        body = self.redeem_body(signed, self.nonce(env), int(env.clock()), signer)
        return env.client.post("/api/redeem", json=body)

    def download_headers(self, path: str, now: float) -> dict[str, str]:
        t = int(now)
        sig = self.sign.sign(p3t.download_message("GET", path, self.printer_id, t)).signature
        return {"X-P3T-Printer": self.printer_id, "X-P3T-Time": str(t),
                "X-P3T-Proof": p3t.b64e(sig)}


def box_stl() -> bytes:
    return trimesh.creation.box(extents=(20, 20, 10)).export(file_type="stl")


MODEL_NS = "http://schemas.microsoft.com/3dmanufacturing/core/2015/02"
CONTENT_TYPES = (b'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.'
                 b'openxmlformats.org/package/2006/content-types"><Default Extension="model" '
                 b'ContentType="application/vnd.ms-package.3dmanufacturing-3dmodel+xml"/></Types>')
RELS = (b'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
        b'openxmlformats.org/package/2006/relationships"><Relationship Target="/3D/3dmodel.model"'
        b' Id="rel0" Type="http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"/>'
        b'</Relationships>')


def model_xml(vertex_override: str | None = None) -> bytes:
    mesh = trimesh.creation.box(extents=(20, 20, 10))
    verts = [f'<vertex x="{x}" y="{y}" z="{z}"/>' for x, y, z in mesh.vertices]
    if vertex_override is not None:
        verts[0] = vertex_override
    tris = [f'<triangle v1="{a}" v2="{b}" v3="{c}"/>' for a, b, c in mesh.faces]
    return (f'<?xml version="1.0" encoding="UTF-8"?><model unit="millimeter" xmlns="{MODEL_NS}">'
            f'<resources><object id="1" type="model"><mesh><vertices>{"".join(verts)}</vertices>'
            f'<triangles>{"".join(tris)}</triangles></mesh></object></resources>'
            f'<build><item objectid="1"/></build></model>').encode()


def make_3mf(model: bytes | None = None, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", CONTENT_TYPES)
        zf.writestr("_rels/.rels", RELS)
        zf.writestr("3D/3dmodel.model", model_xml() if model is None else model)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()
