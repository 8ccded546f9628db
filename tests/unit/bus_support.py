"""Helpers shared by the bus and plug-in host tests."""
from __future__ import annotations

import time
from typing import Callable

from gotapi_server.bus import Bus


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def online(bus: Bus, plugin_id: str) -> bool:
    return any(p.id == plugin_id and p.online for p in bus.plugins())
