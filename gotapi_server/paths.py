"""The GotAPI-1 URL grammar, `/gotapi/<profile>[/<interface>]/<attribute>`: profile case-blind.

Flask routes are case-sensitive, so a small WSGI middleware lower-cases the profile segment
before routing (`serviceDiscovery`, `servicediscovery` and `SERVICEDISCOVERY` reach the same
view); interface and attribute keep their case (`onJobChange`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

API_PREFIX = "/gotapi"
API_METHODS = ("GET", "POST", "PUT", "DELETE")  # plus OPTIONS for CORS preflight

# Profiles the server answers itself (lower-cased), as announced by GET /gotapi/system.
SYSTEM_PROFILES = ("availability", "authorization", "serviceDiscovery", "serviceInformation",
                   "system")
SYSTEM_PROFILE_KEYS = frozenset(p.lower() for p in SYSTEM_PROFILES)
# Reserved for GotAPI-5 (flask-sock endpoint, not built yet); never forwarded to a plug-in.
WEBSOCKET_PROFILE = "websocket"


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def normalize_path(path: str) -> str:
    """Lower-case the profile segment of a /gotapi path (ASCII only); leave others alone."""
    if not path.startswith(API_PREFIX + "/"):
        return path
    rest = path[len(API_PREFIX) + 1:]
    profile, sep, tail = rest.partition("/")
    if not profile.isascii():
        return path
    return f"{API_PREFIX}/{profile.lower()}{sep}{tail}"


class ProfileCaseMiddleware:
    """WSGI wrapper applying `normalize_path` to PATH_INFO."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["PATH_INFO"] = normalize_path(environ.get("PATH_INFO", ""))
        return self.app(environ, start_response)
