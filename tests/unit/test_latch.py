"""The one-shot latch a bus request waits on, in threads and under gevent, and the whole Bus
under gevent against a real plug-in host process (the GotAPI server's default worker)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

from gotapi_server.latch import GreenLatch, ThreadLatch, latch_factory


def _run(code: str, timeout: float = 90, script: str | None = None) -> list[str]:
    argv = [sys.executable, script] if script else [sys.executable, "-c", code]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.split()


def test_thread_latch_settles_once_and_times_out() -> None:
    latch = ThreadLatch()
    assert not latch.done()
    start = time.monotonic()
    assert latch.wait(0.05) is False
    assert time.monotonic() - start >= 0.04
    threading.Timer(0.05, latch.set, args=("answer",)).start()
    assert latch.wait(5) is True
    assert latch.done() and latch.result == "answer" and latch.error is None


def test_an_unpatched_process_uses_thread_latches() -> None:
    assert latch_factory() is ThreadLatch


GREEN = """
from gevent import monkey; monkey.patch_all()
import time, gevent
from gotapi_server.latch import GreenLatch, latch_factory
new = latch_factory()
latch = new()
print(type(latch).__name__)
# settled before anyone waits: no park at all
latch.set("early"); print(latch.wait(1), latch.result)
# times out, on time
latch = new(); t = time.monotonic(); ok = latch.wait(0.05)
print(ok, latch.done(), time.monotonic() - t >= 0.045)
# a set after the timeout only lands in the spent waiter: nothing raises, the hub lives on
latch.set("late"); gevent.sleep(0.01); print(latch.done(), latch.result)
# woken from another greenlet (the one that read the reply), error path too
latch = new(); gevent.spawn_later(0.02, latch.set, None, ValueError("boom"))
print(latch.wait(5), type(latch.error).__name__)
# many at once, settled out of order by one greenlet
latches = [new() for _ in range(50)]
def settle():
    for i in reversed(range(50)):
        latches[i].set(i); gevent.sleep(0)
gevent.spawn(settle)
waiting = [gevent.spawn(lambda l=l: (l.wait(5), l.result)) for l in latches]
gevent.joinall(waiting)
print(all(g.value == (True, i) for i, g in enumerate(waiting)))
# the timer and a set in the same loop turn: the waiter wakes once, the next wait still works
latch = new(); gevent.spawn_later(0.03, latch.set, "tie"); print(latch.wait(0.03) in (True, False))
latch2 = new(); gevent.spawn_later(0.01, latch2.set, "next"); print(latch2.wait(5), latch2.result)
"""


def test_green_latch_under_gevent() -> None:
    assert _run(GREEN) == ["GreenLatch", "True", "early", "False", "False", "True",
                           "True", "late", "True", "ValueError", "True", "True", "True", "next"]


def test_green_latch_in_an_unpatched_process_still_works() -> None:
    """The class itself needs only a hub (the factory picks it under gevent alone)."""
    from gevent import get_hub
    from gevent.hub import Waiter
    hub = get_hub()
    latch = GreenLatch(hub, Waiter(hub))
    latch.set("x")
    assert latch.wait(1) and latch.result == "x"


BUS_UNDER_GEVENT = """
from gevent import monkey; monkey.patch_all()
import multiprocessing, time, gevent
from gotapi3dp.config import PluginHostConfig
from gotapi3dp.wire.busproto import PluginInfo
from gotapi3dp.wire.errors import P3DError
from gotapi3dp.wire.intent import Action, Intent

def host(endpoint):
    import threading
    from plugin_host.host import PluginHost
    from plugin_host.plugin import Plugin
    class Echo(Plugin):
        info = PluginInfo("echo", "echo", "1", ["echo"])
        def answer_now(self, intent):
            return intent.response({"n": intent.params["n"]}) if intent.attribute == "fast" else None
        def handle(self, intent):
            if intent.attribute == "never":
                time.sleep(30)
            return intent.response({"n": intent.params["n"], "slow": True})
    PluginHost(PluginHostConfig(bus_endpoint=endpoint, host_id="h1"), [Echo()]).run(threading.Event())

if __name__ == "__main__":
    from gotapi_server.bus import Bus
    bus = Bus("tcp://127.0.0.1:0"); bus.start()
    print(type(bus._new_latch()).__name__)
    p = multiprocessing.get_context("spawn").Process(target=host, args=(bus.endpoint,), daemon=True)
    p.start()
    deadline = time.monotonic() + 30
    while not any(r.online for r in bus.plugins()) and time.monotonic() < deadline:
        time.sleep(0.05)
    def client(c):
        for i in range(100):
            attr = "fast" if i % 10 else "slow"
            r = bus.request(Intent(Action.GET, profile="echo", attribute=attr,
                                   params={"n": c * 1000 + i}), "echo", 10.0)
            assert r.result == 0 and r.params["n"] == c * 1000 + i, r
        return True
    jobs = [gevent.spawn(client, c) for c in range(8)]
    # a request nobody answers times out on time while the others go on
    t = time.monotonic()
    try:
        bus.request(Intent(Action.GET, profile="echo", attribute="never", params={"n": 0}), "echo", 0.5)
        print("no-timeout")
    except P3DError as exc:
        print(int(exc.code), 0.45 <= time.monotonic() - t < 2.0)
    gevent.joinall(jobs, raise_error=True)
    print(all(j.value for j in jobs), len(bus._pending))
    # requests made in one turn of the loop leave in one batch, each still gets its answer
    batches = []
    send_batch = bus._send_batch
    def counting():
        batches.append(len(bus._outbox)); send_batch()
    bus._send_batch = counting
    burst = [gevent.spawn(bus.request, Intent(Action.GET, profile="echo", attribute="fast",
                                              params={"n": n}), "echo", 10.0) for n in range(8)]
    gevent.joinall(burst, raise_error=True)
    print(batches, [g.value.params["n"] for g in burst] == list(range(8)))
    # a batch that finds the lock taken tries again on a timer; it does not spin in the hub
    calls = []
    def counted():
        calls.append(1); send_batch()
    bus._send_batch = counted
    def hold():
        with bus._lock:
            gevent.sleep(0.05)
    asker = gevent.spawn(bus.request, Intent(Action.GET, profile="echo", attribute="fast",
                                             params={"n": 3}), "echo", 5.0)
    holder = gevent.spawn(hold)    # takes the lock after the request queued, before its batch
    print(asker.get(timeout=5).params["n"] == 3, 1 < len(calls) < 200)
    # a request the batch cannot send (no such plug-in online) fails at once, not at timeout
    t = time.monotonic()
    try:
        bus.request(Intent(Action.GET, profile="echo", attribute="fast", params={"n": 1}),
                    "nobody", 10.0)
    except P3DError as exc:
        print(int(exc.code), time.monotonic() - t < 1.0)
    # queued, then the bus stops before the batch goes out: the request fails, it does not hang
    bus._send_batch = send_batch
    late = gevent.spawn(bus.request, Intent(Action.GET, profile="echo", attribute="fast",
                                            params={"n": 2}), "echo", 10.0)
    gevent.sleep(0)     # the greenlet queued its Intent and parked; the batch is scheduled
    bus._stopping = True
    late.join(5)
    print(type(late.exception).__name__, int(late.exception.code) if late.exception else None)
    bus._stopping = False
    # the real stop(), with a request queued or on its way: it fails at once, it does not hang
    pending = gevent.spawn(bus.request, Intent(Action.GET, profile="echo", attribute="never",
                                               params={"n": 4}), "echo", 10.0)
    gevent.sleep(0)
    t = time.monotonic()
    bus.stop()
    pending.join(5)
    print(type(pending.exception).__name__, int(pending.exception.code) if pending.exception
          else None, time.monotonic() - t < 3)
    p.terminate()
"""


def test_the_whole_bus_under_gevent_against_a_real_plugin_host(tmp_path) -> None:
    script = tmp_path / "bus_under_gevent.py"
    script.write_text(BUS_UNDER_GEVENT)
    from gotapi3dp.wire.errors import ErrorCode
    assert _run("", timeout=120, script=str(script)) == \
        ["GreenLatch", str(int(ErrorCode.TIMEOUT)), "True", "True", "0",
         "[8]", "True", "True", "True",
         str(int(ErrorCode.ILLEGAL_SERVER_STATE)), "True",
         "P3DError", str(int(ErrorCode.ILLEGAL_SERVER_STATE)),
         "P3DError", str(int(ErrorCode.ILLEGAL_SERVER_STATE)), "True"]


ORDER_UNDER_GEVENT = """
from gevent import monkey; monkey.patch_all()
import time, gevent, zmq
from gotapi3dp.wire.busproto import PROTOCOL, READY, REPLY, HEARTBEAT, Announce, PluginInfo, encode_announce
from gotapi3dp.wire.intent import Action, Intent, decode, encode
from gotapi_server.bus import Bus
bus = Bus("tcp://127.0.0.1:0"); bus.start()
ctx = zmq.Context()
host = ctx.socket(zmq.DEALER); host.linger = 0; host.routing_id = b"h1"; host.connect(bus.endpoint)
host.send_multipart([PROTOCOL, READY, encode_announce(Announce("h1", [PluginInfo("echo", "Echo", "1", ["echo"])]))])
deadline = time.monotonic() + 10
while not any(r.online for r in bus.plugins()) and time.monotonic() < deadline:
    time.sleep(0.02)
asker = gevent.spawn(bus.request, Intent(Action.GET, profile="echo", attribute="say"), "echo", 5.0)
gevent.sleep(0)      # the request is queued, its batch scheduled
bus.notify(Intent(Action.EVENT_TRANSMIT_DISCONNECT, origin="http://localhost:1"))
seen = []
while len(seen) < 2 and time.monotonic() < deadline:
    if host.poll(0):
        frames = host.recv_multipart()
        if frames[1] != HEARTBEAT:
            seen.append(decode(frames[2]))
    else:
        time.sleep(0.01)
print(",".join(i.action.value for i in seen))
request = seen[0]
host.send_multipart([PROTOCOL, REPLY, encode(request.response({"ok": True}))])
print(asker.get(timeout=5).params["ok"])
bus.stop(); host.close(); ctx.term()
"""


def test_under_gevent_a_notice_never_overtakes_a_request_made_before_it(tmp_path) -> None:
    """Both wait for the same send batch, in call order (a WebSocket closing right after its
    app's PUT must not reach the plug-in before that PUT)."""
    script = tmp_path / "order_under_gevent.py"
    script.write_text(ORDER_UNDER_GEVENT)
    assert _run("", timeout=60, script=str(script)) == ["GET,EVENT_TRANSMIT_DISCONNECT", "True"]
