"""Blueprint: the bundled web app (plain HTML/JS/CSS in `webapp/`), served at `/`.

The app is an ordinary GotAPI client of this server (same origin) and reads the user's
contents list and thumbnails from the contents server the user names. Nothing is fetched
from anywhere else: the Content-Security-Policy admits only this origin for scripts and
styles, and loopback HTTP/WebSocket addresses for data.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

ROOT = Path(__file__).with_name("webapp")
FILES = ("index.html", "app.js", "style.css")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self' http://127.0.0.1:* http://localhost:* "
       "ws://127.0.0.1:* ws://localhost:*; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

bp = Blueprint("webapp", __name__)


def _send(name: str) -> Response:
    response = send_from_directory(ROOT, name, max_age=0)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/")
def index() -> Response:
    return _send("index.html")


@bp.get("/<any(" + ", ".join(f'"{n}"' for n in FILES[1:]) + "):name>")
def asset(name: str) -> Response:
    return _send(name)
