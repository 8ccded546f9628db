"""What a quick, clean stop needs from a running stack: the supervisor keeps no HTTP
connection open once up (Gunicorn lets a kept-alive connection hold its graceful stop)."""
from __future__ import annotations

import pytest

from gotapi3dp.supervisor import _socket_inodes

from .conftest import Stack

pytestmark = pytest.mark.e2e
ESTABLISHED = "01"


def established_inodes() -> set[int]:
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    if fields[3] == ESTABLISHED:
                        found.add(int(fields[9]))
        except FileNotFoundError:
            continue
    return found


def test_the_supervisor_holds_no_connection_once_up(stack: Stack) -> None:
    assert stack.proc is not None
    held = _socket_inodes(stack.proc.pid) & established_inodes()
    assert not held, f"gotapi-3dp up keeps {len(held)} TCP connection(s) open"
