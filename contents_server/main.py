"""Run the contents server (`gotapi-3dp serve contents`)."""
from __future__ import annotations

from gotapi3dp.config import Config, check_bind_host
from gotapi3dp.serving import run_gunicorn

from .app import create_app


def serve(config: Config) -> None:
    """Block serving the contents server on its configured address (loopback by default)."""
    contents = config.contents
    check_bind_host(contents.host, contents.allow_non_loopback, "contents server")
    data_dir = config.dir_for("contents")
    run_gunicorn(lambda: create_app(contents, data_dir), contents.host, contents.port,
                 name="gotapi-3dp-contents", refusals="http")

