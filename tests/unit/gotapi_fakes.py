"""Test doubles for the GotAPI server tests: a FakeBus with the Bus methods, and helpers."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flask import Flask
from flask.testing import FlaskClient

from gotapi3dp.config import GotapiConfig
from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.intent import Intent
from gotapi_server.app import create_app

ORIGIN = "http://localhost:8080"
HEADERS = {"Origin": ORIGIN}


@dataclass
class PluginRecord:
    id: str
    name: str
    version: str
    profiles: list[str]
    host_id: str = "host-1"
    online: bool = True
    last_seen: float = field(default_factory=time.time)


Handler = Callable[[Intent], Intent]


class FakeBus:
    """Answers like plug-ins would; records every request Intent."""

    def __init__(self) -> None:
        self.records: dict[str, PluginRecord] = {}
        self.services: dict[str, list[dict[str, Any]]] = {}
        self.handlers: dict[str, Handler] = {}
        self.delays: dict[str, float] = {}
        self.sent: list[tuple[Intent, str, float]] = []
        self.lock = threading.Lock()

    def add_plugin(self, plugin_id: str, profiles: list[str], services: list[str],
                   handler: Handler | None = None, online: bool = True) -> None:
        self.records[plugin_id] = PluginRecord(plugin_id, plugin_id.title(), "1.0",
                                               profiles, online=online)
        self.services[plugin_id] = [{"id": s, "name": f"Service {s}", "online": True,
                                     "type": "USB"} for s in services]
        if handler is not None:
            self.handlers[plugin_id] = handler

    # The Bus surface.
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def on_event(self, callback: Any) -> None: ...
    def notify(self, intent: Intent, plugin_id: str | None = None) -> None: ...

    def plugins(self) -> list[PluginRecord]:
        return list(self.records.values())

    def request(self, intent: Intent, plugin_id: str, timeout: float) -> Intent:
        with self.lock:
            self.sent.append((intent, plugin_id, timeout))
        record = self.records.get(plugin_id)
        if record is None or not record.online:
            raise P3DError(ErrorCode.ILLEGAL_SERVER_STATE)
        time.sleep(self.delays.get(plugin_id, 0.0))
        if intent.profile == "networkServiceDiscovery":
            return intent.response({"services": self.services[plugin_id]})
        return self.handlers.get(plugin_id, echo)(intent)

    def requests_to(self, plugin_id: str, profile: str) -> list[Intent]:
        return [i for i, p, _ in self.sent if p == plugin_id and i.profile == profile]


def echo(intent: Intent) -> Intent:
    return intent.response({"echo": dict(intent.params)})


def make_app(tmp_path: Path, bus: FakeBus | None = None, **overrides: Any) -> Flask:
    config = GotapiConfig(**overrides)
    app = create_app(config, tmp_path / "gotapi", bus if bus is not None else FakeBus())
    return app


def get_token(client: FlaskClient, scope: str = "printer3d", headers: dict[str, str] | None = None
              ) -> str:
    headers = headers or HEADERS
    client_id = client.get("/gotapi/authorization/grant", headers=headers).get_json()["clientId"]
    answer = client.get("/gotapi/authorization/accessToken", headers=headers,
                        query_string={"clientId": client_id, "scope": scope,
                                      "applicationName": "test app"}).get_json()
    assert answer["result"] == 0, answer
    return str(answer["accessToken"])


def printer_bus(handler: Handler | None = None, online: bool = True) -> FakeBus:
    bus = FakeBus()
    bus.add_plugin("printer3d", ["printer3d"], ["printer-1"], handler, online=online)
    return bus
