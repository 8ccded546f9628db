"""Gunicorn's gthread worker, answering the requests Gunicorn refuses in JSON, not HTML
(`refusals.JsonRefusals`). The printer and the contents server run it; so does the GotAPI
server when `[gotapi] worker = "gthread"`."""
from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker

from gotapi3dp.refusals import JsonRefusals


class JsonThreadWorker(JsonRefusals, ThreadWorker):  # type: ignore[misc]
    pass
