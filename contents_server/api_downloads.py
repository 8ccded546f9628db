"""Blueprint: the model bytes behind a download capability, with Range support."""
from __future__ import annotations

from flask import Blueprint, Response, request, send_file

from gotapi3dp.wire.errors import P3DError
from gotapi3dp.wire.ids import PRINTER_ID_RE

from . import audit, downloads
from .services import current

bp = Blueprint("downloads", __name__, url_prefix="/api/download")

MIMETYPES = {"stl": "model/stl", "obj": "model/obj", "3mf": "model/3mf"}


@bp.get("/<path:cap>")
def download(cap: str) -> Response:
    """Single ranges (`bytes=N-M`, `N-`, `-N`) give 206, unsatisfiable ones 416; `If-Range`
    with our ETag `"sha256:<hex>"` resumes only while the bytes are unchanged."""
    svc = current()
    named = request.headers.get(downloads.HEADER_PRINTER, "")
    printer = named if PRINTER_ID_RE.fullmatch(named) else None
    try:
        proof = downloads.DownloadProof.from_headers(request.headers)
        content = downloads.authorize(svc.db, cap, request.path, proof, svc.clock())
    except P3DError as err:
        with svc.db.tx() as conn:   # the reason, never the capability or the proof
            audit.record(conn, svc.clock(), "download:refused", printer=printer,
                         detail=err.message)
        raise
    with svc.db.tx() as conn:
        audit.record(conn, svc.clock(), "download:served", account=content.owner,
                     printer=proof.printer_id, content=content.id,
                     detail=request.headers.get("Range", "")[:40])
    if "," in request.headers.get("Range", ""):
        # Werkzeug answers 416 to multiple ranges; RFC 9110 lets us ignore Range instead.
        request.environ.pop("HTTP_RANGE", None)
    response = send_file(svc.blobs.path(content.sha256), mimetype=MIMETYPES[content.format],
                         conditional=True, etag=f"sha256:{content.sha256}",
                         last_modified=content.created, max_age=0)
    response.headers["Cache-Control"] = "private, no-store"
    return response
