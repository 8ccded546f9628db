"""The GotAPI server's Flask app factory: config, shared state, request checks, blueprints.

Nothing happens at import. `create_app` is called inside the gunicorn worker (after fork)
with a started bus; tests call it with a fake bus and a temporary data dir.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask

from gotapi3dp.config import GotapiConfig

from . import request_checks, responses
from .auth import AuthStore
from .context import EXTENSION, ServerState
from .paths import ProfileCaseMiddleware
from .profiles import (authorization, availability, forward, service_discovery,
                       service_information, system)
from .services import ServiceDirectory

if TYPE_CHECKING:
    from .bus import Bus

MAX_FORM_PARTS = 200


def create_app(config: GotapiConfig, data_dir: Path, bus: "Bus | Any") -> Flask:
    """Build the app serving GotAPI-1/2 on `bus`; state lives in `data_dir` (auth.sqlite3)."""
    app = Flask(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=config.max_body_bytes,
        MAX_FORM_MEMORY_SIZE=config.max_body_bytes,
        MAX_FORM_PARTS=MAX_FORM_PARTS,
        TRUSTED_HOSTS=None,  # the Host check is ours (421 + errorCode 1000)
    )
    app.url_map.merge_slashes = False  # `/gotapi//x` is an empty profile (19), no redirect
    app.url_map.strict_slashes = False
    app.wsgi_app = ProfileCaseMiddleware(app.wsgi_app)  # type: ignore[method-assign]

    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    app.extensions[EXTENSION] = ServerState(
        config=config, bus=bus,
        auth=AuthStore(Path(data_dir), config.token_lifetime),
        services=ServiceDirectory(bus, config.discovery_timeout))

    responses.init_app(app)
    request_checks.init_app(app, config)
    for module in (availability, authorization, service_discovery, service_information,
                   system):
        app.register_blueprint(module.bp)
    # GotAPI-5 (WebSocket events at /gotapi/websocket, flask-sock) registers here, before
    # the forwarder; the forwarder keeps the `websocket` profile reserved until then.
    app.register_blueprint(forward.bp)
    return app
