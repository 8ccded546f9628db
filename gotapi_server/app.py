"""The GotAPI server's Flask app factory: config, shared state, request checks, blueprints.

Nothing happens at import. `create_app` is called inside the gunicorn worker (after fork)
with a started bus; tests call it with a fake bus and a temporary data dir.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask

from gotapi3dp.config import GotapiConfig

from . import hmac_sign, request_checks, responses, webapp, websocket
from .auth import AuthStore
from .context import EXTENSION, ServerState
from .events import EventHub
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
    auth = AuthStore(Path(data_dir), config.token_lifetime)
    hub = EventHub(bus)
    bus.on_event(hub.dispatch)
    app.extensions[EXTENSION] = ServerState(
        config=config, bus=bus, auth=auth,
        services=ServiceDirectory(bus, config.discovery_timeout), events=hub)

    responses.init_app(app)
    request_checks.init_app(app, config)
    hmac_sign.init_app(app, auth)
    for module in (availability, authorization, service_discovery, service_information,
                   system):
        app.register_blueprint(module.bp)
    websocket.init_app(app, config, auth, hub)  # GotAPI-5, before the forwarder's catch-all
    app.register_blueprint(forward.bp)
    app.register_blueprint(webapp.bp)  # the web app at `/` (issue 7)
    return app
