"""Service discovery across plug-ins, and the public service id `<local id>.<plug-in id>`.

Every online plug-in is asked in parallel (`networkServiceDiscovery/getNetworkServices`,
each bounded by the discovery timeout; one that fails or times out is left out, as Device
Connect does). The last answer of each plug-in is cached: offline plug-ins' services are
listed from it with `online: false`, and requests are routed by it.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Protocol

from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi3dp.wire.intent import Action, Intent

log = logging.getLogger(__name__)

# After the server starts, plug-in hosts need a moment to connect and announce themselves:
# a service of a plug-in not seen yet is 17 (try again) meanwhile, not 6 (no such service).
STARTUP_GRACE = 10.0
DISCOVERY_PROFILE = "networkServiceDiscovery"
DISCOVERY_ATTRIBUTE = "getNetworkServices"


class PluginLike(Protocol):
    id: str
    name: str
    version: str
    profiles: list[str]
    online: bool


def public_id(local_id: str, plugin_id: str) -> str:
    return f"{local_id}.{plugin_id}"


def split_id(service_id: str) -> tuple[str, str]:
    """`<local>.<plugin>` -> (local, plugin); a malformed id is an unknown service (6)."""
    local, sep, plugin = service_id.rpartition(".")
    if not sep or not local or not plugin:
        raise P3DError(ErrorCode.NOT_FOUND_SERVICE)
    return local, plugin


def _services_of(answer: Intent) -> list[dict[str, Any]]:
    if answer.result != 0:
        raise P3DError(answer.error_code or ErrorCode.UNKNOWN,
                       answer.error_message or "Service discovery failed.")
    services = answer.params.get("services")
    if not isinstance(services, list):
        raise P3DError(ErrorCode.UNKNOWN, "Plug-in answered discovery without services.")
    return [s for s in services if isinstance(s, dict) and isinstance(s.get("id"), str)]


class ServiceDirectory:
    """Asks plug-ins for their services and remembers each plug-in's last answer."""

    def __init__(self, bus: Any, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.timeout = timeout
        self._clock = clock
        self._started = clock()
        self._cache: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def plugin(self, plugin_id: str) -> PluginLike | None:
        return next((p for p in self.bus.plugins() if p.id == plugin_id), None)

    def supported(self, profile: str) -> bool:
        """Whether a plug-in the bus knows (online or not) supports `profile`."""
        profile = profile.lower()
        return any(profile == name.lower() for p in self.bus.plugins() for name in p.profiles)

    def discover_plugin(self, plugin: PluginLike, origin: str | None) -> list[dict[str, Any]]:
        """Ask one plug-in; cache and return its services (local ids). Raises P3DError."""
        intent = Intent(Action.GET, profile=DISCOVERY_PROFILE, attribute=DISCOVERY_ATTRIBUTE,
                        origin=origin, plugin_id=plugin.id)
        services = _services_of(self.bus.request(intent, plugin.id, self.timeout))
        with self._lock:
            self._cache[plugin.id] = services
        return services

    def _try_discover(self, plugin: PluginLike, origin: str) -> list[dict[str, Any]] | None:
        try:
            return self.discover_plugin(plugin, origin)
        except Exception as exc:  # one silent plug-in must not spoil the answer
            log.warning("service discovery: plug-in %s left out: %s", plugin.id, exc)
            return None

    def discover(self, origin: str) -> list[dict[str, Any]]:
        """All services under public ids: online plug-ins asked now, offline ones cached."""
        plugins = list(self.bus.plugins())
        online = [p for p in plugins if p.online]
        answers: dict[str, list[dict[str, Any]] | None] = {}
        if online:
            with ThreadPoolExecutor(max_workers=len(online),
                                    thread_name_prefix="discovery") as pool:
                futures = {p.id: pool.submit(self._try_discover, p, origin) for p in online}
                answers = {pid: f.result() for pid, f in futures.items()}
        out: list[dict[str, Any]] = []
        for p in plugins:
            if p.online:
                services, is_online = answers.get(p.id), None
            else:
                services, is_online = self.cached(p.id), False
            for s in services or []:
                out.append(self._public(s, p.id, is_online))
        return out

    @staticmethod
    def _public(service: dict[str, Any], plugin_id: str, online: bool | None) -> dict[str, Any]:
        entry = {**service, "id": public_id(service["id"], plugin_id)}
        entry.setdefault("name", service["id"])
        entry.setdefault("type", "")
        entry["online"] = bool(service.get("online", True)) if online is None else online
        return entry

    def cached(self, plugin_id: str) -> list[dict[str, Any]] | None:
        with self._lock:
            return self._cache.get(plugin_id)

    def resolve(self, service_id: str, origin: str) -> tuple[PluginLike, str]:
        """(plug-in, local id) of a public service id, or P3DError(6).

        A local id missing from the cache of an online plug-in triggers one discovery of
        that plug-in; an offline plug-in is judged by its cache (none: let the caller try).
        """
        local, plugin_id = split_id(service_id)
        plugin = self.plugin(plugin_id)
        if plugin is None:
            if plugin_id and self._clock() - self._started < STARTUP_GRACE:
                raise P3DError(ErrorCode.ILLEGAL_SERVER_STATE,
                               f"Plug-in {plugin_id} has not connected yet (the server has just "
                               "started); try again.")
            raise P3DError(ErrorCode.NOT_FOUND_SERVICE)
        services = self.cached(plugin_id)
        if not _has(services, local):
            if plugin.online:
                services = self.discover_plugin(plugin, origin)
            if services is not None and not _has(services, local):
                raise P3DError(ErrorCode.NOT_FOUND_SERVICE)
        return plugin, local


def _has(services: list[dict[str, Any]] | None, local: str) -> bool:
    return services is not None and any(s["id"] == local for s in services)
