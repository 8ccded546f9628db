"""Intent bus framing (GotAPI-4 over ZeroMQ), Majordomo style: constants and frame helpers.

Plug-in host (DEALER) -> GotAPI server (ROUTER): `[PROTOCOL, command, body?]`; the ROUTER
sees the peer's routing id in front (`<host id>/<tag>`, new for each connection). Bodies are msgpack: an announce map for READY, an
encoded Intent for REQUEST / REPLY / EVENT, nothing for HEARTBEAT / DISCONNECT.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .intent import IntentError, unpack_strict

PROTOCOL = b"GOTAPI01"

READY = b"\x01"       # host -> server: announce plug-ins (body: announce map)
REQUEST = b"\x02"     # server -> host: an Intent to handle
REPLY = b"\x03"       # host -> server: the RESPONSE Intent
EVENT = b"\x04"       # host -> server: an EVENT Intent (job progress...)
HEARTBEAT = b"\x05"   # both ways, when idle
DISCONNECT = b"\x06"  # both ways: forget me / reconnect afresh

COMMAND_NAMES = {READY: "READY", REQUEST: "REQUEST", REPLY: "REPLY", EVENT: "EVENT",
                 HEARTBEAT: "HEARTBEAT", DISCONNECT: "DISCONNECT"}

HEARTBEAT_INTERVAL = 1.0  # seconds; same value both sides (MDP's known weakness otherwise)
HEARTBEAT_LIVENESS = 3    # missed intervals before the peer is declared dead
RECONNECT_MIN = 0.5       # plug-in host back-off, doubling
RECONNECT_MAX = 16.0
MAX_FRAME_BYTES = 1 << 20
SOCKET_HWM = 1000


@dataclass
class PluginInfo:
    """What a plug-in announces about itself in READY."""

    id: str
    name: str
    version: str
    profiles: list[str] = field(default_factory=list)
    # Swagger 2.0 document per profile (optional): shown by serviceInformation's
    # `supportApis` and the one source the server validates that profile's parameters by.
    apis: dict[str, Any] = field(default_factory=dict)

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"id": self.id, "name": self.name, "version": self.version,
                             "profiles": list(self.profiles)}
        if self.apis:
            m["apis"] = self.apis
        return m


@dataclass
class Announce:
    host_id: str
    plugins: list[PluginInfo]

    def to_map(self) -> dict[str, Any]:
        return {"v": 1, "hostId": self.host_id, "plugins": [p.to_map() for p in self.plugins]}


HOST_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")   # names a host's key file and connections


def connection_id(host_id: str) -> bytes:
    """The routing id of one connection of a host: `<host id>/<random tag>`. A host opens
    each connection under a new one, so a reconnect never waits for the server to let go of
    the old link's id (a vanished machine's link lives until heartbeats close it)."""
    return f"{host_id}/{secrets.token_hex(4)}".encode()


def host_id_of(routing_id: bytes) -> bytes:
    """The host a routing id speaks for (`<host id>`, or `<host id>/<tag>`)."""
    return routing_id.split(b"/", 1)[0]


def decode_announce(data: bytes) -> Announce:
    m = unpack_strict(data, MAX_FRAME_BYTES)
    if not isinstance(m, dict) or m.get("v") != 1 or not isinstance(m.get("hostId"), str):
        raise IntentError("READY body is not an announce map")
    plugins = m.get("plugins")
    if not isinstance(plugins, list):
        raise IntentError("READY body has no plug-in list")
    out = []
    for p in plugins:
        if not (isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("id", "name", "version"))
                and isinstance(p.get("profiles"), list)
                and all(isinstance(x, str) for x in p["profiles"])):
            raise IntentError("READY plug-in entry is malformed")
        apis = p.get("apis", {})
        if not isinstance(apis, dict) or not all(isinstance(v, dict) for v in apis.values()):
            raise IntentError("READY plug-in apis must map profile names to documents")
        out.append(PluginInfo(p["id"], p["name"], p["version"], list(p["profiles"]), apis))
    return Announce(m["hostId"], out)


def encode_announce(announce: Announce) -> bytes:
    data = msgpack.packb(announce.to_map(), use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise IntentError(f"READY body is {len(data)} bytes, limit {MAX_FRAME_BYTES}")
    return data
