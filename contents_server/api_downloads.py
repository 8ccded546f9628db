"""Blueprint: the model bytes behind a download capability, with Range support."""
from __future__ import annotations

from flask import Blueprint, Response, request, send_file

from . import downloads
from .services import current

bp = Blueprint("downloads", __name__, url_prefix="/api/download")

MIMETYPES = {"stl": "model/stl", "obj": "model/obj", "3mf": "model/3mf"}


@bp.get("/<path:cap>")
def download(cap: str) -> Response:
    """Single ranges (`bytes=N-M`, `N-`, `-N`) give 206, unsatisfiable ones 416; `If-Range`
    with our ETag `"sha256:<hex>"` resumes only while the bytes are unchanged."""
    svc = current()
    proof = downloads.DownloadProof.from_headers(request.headers)
    content = downloads.authorize(svc.db, cap, request.path, proof, svc.clock())
    if "," in request.headers.get("Range", ""):
        # Werkzeug answers 416 to multiple ranges; RFC 9110 lets us ignore Range instead.
        request.environ.pop("HTTP_RANGE", None)
    response = send_file(svc.blobs.path(content.sha256), mimetype=MIMETYPES[content.format],
                         conditional=True, etag=f"sha256:{content.sha256}",
                         last_modified=content.created, max_age=0)
    response.headers["Cache-Control"] = "private, no-store"
    return response
