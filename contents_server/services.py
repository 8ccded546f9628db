"""What the blueprints share, built once by `create_app` and reached via `current()`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flask import Flask, current_app

from gotapi3dp.config import ContentsConfig

from .blobs import BlobStore
from .db import Database
from .keys import KeyRing

EXTENSION = "contents_server"


@dataclass
class Services:
    config: ContentsConfig
    data_dir: Path
    db: Database
    blobs: BlobStore
    keys: KeyRing                   # take one snapshot() per request
    clock: Callable[[], float]      # time.time in production; tests pass a settable clock


def install(app: Flask, services: Services) -> None:
    app.extensions[EXTENSION] = services


def current() -> Services:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]
