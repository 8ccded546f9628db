"""`bus tap`: print every bus frame the GotAPI server publishes on its tap, decoded.

The bus copies each frame it receives or sends to an XPUB socket as
`[direction + sequence, peer routing id, protocol, command, body?]` (`tap_topic`), Intent
bodies with their secrets
already replaced (`redaction.py`; a body that is not an Intent goes out empty), and only
while some tap subscribes: an untapped bus does no tap work at all. We decode bodies with
the shared decoders (Intent, READY announce) and print one line, or one JSON object, per
frame. A frame that does not decode is printed as such; nothing here trusts the bytes: every
text a peer chose is quoted when it holds spaces or characters a terminal would act on.

Each REPLY carries `latencyMs`: the time between this tap receiving the REQUEST with its
requestCode and receiving the REPLY, by the tap's own clock. It includes the tap's own
scheduling and delivery delays, so two taps can show different latencies for the same request.
`--profile` and `--service` keep only Intents of that profile / serviceId (local or public
id); both keep lifecycle notices (EVENT_TRANSMIT_DISCONNECT...), which have no profile or
service and go to every plug-in. Secrets never reach the screen: sealed tokens (`p3t1.`...)
and every parameter whose name holds `token`, `key`, `secret`, `password`... (access tokens,
contents keys) are shown as `<redacted N chars id:xxxxxxxx>`, redacted again here.

Under `bus_security = "curve"` the tap endpoint admits the keys of the taps' allow-list
only (`curve`: the server's public key and this tap's pair; `gotapi-3dp bus tap` makes its
pair in <data-dir>/tap/bus and, on the server's data dir, admits it as `tap` in
<data-dir>/gotapi/bus/taps).

The XPUB drops what a slow tap has not read once 10 000 messages wait for it (the bus never
waits for a tap). The sequence number the bus puts after the direction shows the gaps: the
tap prints how many frames it missed (`{"dropped": N}` with --json) where they were lost,
and says so when the bus has restarted (its sequence began again).

A SUB socket connects in the background and retries for ever, so on its own a tap whose bus
is down looks exactly like a quiet bus. The tap watches its socket's connection events
(ZeroMQ's socket monitor) and says so through `notice`: once when nothing answers yet, when
what answers is not a tap (often the bus endpoint given by mistake), when the ZMTP handshake
succeeds, and when the bus goes away. A host name that does not exist is an error at once.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

import socket
from urllib.parse import urlsplit

import zmq
from zmq.utils.monitor import recv_monitor_message

from gotapi3dp.buskeys import KeyPair
from gotapi3dp.config import ConfigError
from gotapi3dp.wire.busproto import COMMAND_NAMES, PROTOCOL, READY, decode_announce
from gotapi3dp.wire.intent import REQUEST_ACTIONS, Action, IntentError, decode

from .redaction import redact

POLL_MS = 100
CONNECT_TIMEOUT_MS = 2000  # a host that drops SYNs is reported after this, not after minutes
RC_PREFIX = 8  # hex digits of the requestCode shown in a line
MAX_OPEN_REQUESTS = 10_000  # requestCodes remembered for latency
# Notices to every plug-in (Device Connect's lifecycle): no profile or service to filter by.
_LIFECYCLE = frozenset(a.value for a in Action
                       if a not in REQUEST_ACTIONS and a not in (Action.RESPONSE, Action.EVENT))


@dataclass
class Filter:
    """What to print: Intents of one profile and/or service (None = all frames)."""

    profile: str | None = None
    service: str | None = None

    def keeps(self, record: dict[str, Any]) -> bool:
        if self.profile is None and self.service is None:
            return True
        intent = record.get("intent")
        if intent is None:
            return False
        if _lifecycle(intent):          # to every plug-in: no profile or service to filter by
            return True
        if self.profile is not None and intent.get("profile", "").lower() != self.profile.lower():
            return False
        if self.service is not None:
            local = intent.get("serviceId")
            public = f"{local}.{intent.get('pluginId')}"
            return self.service in (local, public)
        return True


def _lifecycle(intent: dict[str, Any]) -> bool:
    """A lifecycle notice (EVENT_TRANSMIT_DISCONNECT...): it has no profile and no service."""
    return not intent.get("profile") and intent.get("action") in _LIFECYCLE


SEQ_BYTES = 8


def tap_topic(direction: bytes, seq: int) -> bytes:
    """The first frame of a tap message: b"in" or b"out" (what a SUB filters on), then the
    bus's sequence number of the message (8 bytes, big-endian)."""
    return direction + seq.to_bytes(SEQ_BYTES, "big")


def _split_topic(topic: bytes) -> tuple[bytes | None, int | None]:
    for direction in (b"in", b"out"):
        if topic.startswith(direction):
            rest = topic[len(direction):]
            if not rest:
                return direction, None
            if len(rest) == SEQ_BYTES:
                return direction, int.from_bytes(rest, "big")
    return None, None


@dataclass
class Gaps:
    """Frames the tap missed, from the bus's sequence numbers."""

    last: int | None = None

    def note(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """A record to print before `record` if frames were lost before it, else None."""
        seq = record.get("seq")
        if seq is None:
            return None
        last, self.last = self.last, seq
        if last is None or seq == last + 1:
            return None
        if seq <= last:
            return {"time": record["time"], "restarted": True}
        return {"time": record["time"], "dropped": seq - last - 1}


@dataclass
class Latency:
    """REQUEST send times by requestCode; a matching REPLY gets `latencyMs`."""

    sent: "OrderedDict[str, float]" = field(default_factory=OrderedDict)

    def note(self, record: dict[str, Any]) -> None:
        intent = record.get("intent")
        if intent is None:
            return
        key = f"{intent['requestCode']}/{intent.get('pluginId', '')}"
        if record["command"] == "REQUEST" and record["direction"] == "out":
            self.sent[key] = record["time"]
            while len(self.sent) > MAX_OPEN_REQUESTS:
                self.sent.popitem(last=False)
        elif record["command"] == "REPLY":
            started = self.sent.pop(key, None)
            if started is not None:
                record["latencyMs"] = round((record["time"] - started) * 1000, 3)


@dataclass
class Link:
    """What the operator is told about the tap's connection, from socket-monitor events."""

    endpoint: str
    notice: Callable[[str], None]
    state: str = "connecting"   # connecting -> waiting | up | wrong; up -> lost -> up
    curve: bool = False         # the tap authenticates (CurveZMQ)

    EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECT_RETRIED
              | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    _REFUSED = (zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

    def on_event(self, event: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self.state != "up":
            self.state = "up"
            self.notice(f"connected to {self.endpoint}")
        elif event == zmq.EVENT_DISCONNECTED and self.state == "up":
            self.state = "lost"
            self.notice(f"lost {self.endpoint}; reconnecting")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and self.state in ("connecting",
                                                                        "waiting"):
            self.state = "wrong"
            self.notice(f"the bus at {self.endpoint} refused this tap's key; on the server, "
                        "`gotapi-3dp bus admit NAME <this tap's client.key>` admits it")
        elif event & self._REFUSED and self.curve and self.state in ("connecting", "waiting"):
            self.state = "wrong"
            self.notice(f"the CurveZMQ handshake with {self.endpoint} failed: is the server "
                        "key right (--server-key), does the server use bus_security = "
                        "\"curve\", and is this gotapi.tap_endpoint?")
        elif event & self._REFUSED and self.state in ("connecting", "waiting"):
            # a handshake that never succeeded: a ZeroMQ peer of the wrong kind (often the
            # bus endpoint itself), or something that is not ZeroMQ; libzmq will not retry
            self.state = "wrong"
            self.notice(f"something answers at {self.endpoint}, but not as a bus tap (a "
                        "ZeroMQ PUB); is it gotapi.tap_endpoint, not the bus endpoint?")
        elif event == zmq.EVENT_CONNECT_RETRIED and self.state == "connecting":
            self.state = "waiting"
            self.notice(f"nothing answers at {self.endpoint} yet; retrying until it does "
                        "(is `gotapi-3dp up` running, with this gotapi.tap_endpoint?)")


def tap(endpoint: str, as_json: bool, out: TextIO, stop: threading.Event | None = None,
        limit: int | None = None, profile: str | None = None,
        service: str | None = None, connected: Callable[[], None] | None = None,
        notice: Callable[[str], None] | None = None,
        curve: tuple[bytes, KeyPair] | None = None) -> int:
    """Print frames until `stop` is set, `limit` frames were printed or Ctrl-C; exit status 0.
    `connected` is called once the endpoint is accepted; a bad one raises ConfigError.
    `notice` gets one-line messages about the connection (see the module docstring).
    `curve`: (the server's public key, this tap's pair) for a bus under CurveZMQ."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    if curve is not None:
        sub.setsockopt(zmq.CURVE_SERVERKEY, curve[0])
        sub.setsockopt(zmq.CURVE_PUBLICKEY, curve[1].public)
        sub.setsockopt(zmq.CURVE_SECRETKEY, curve[1].secret)
    link = Link(endpoint, notice, curve=curve is not None) if notice is not None else None
    monitor = sub.get_monitor_socket(Link.EVENTS) if link is not None else None
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    if monitor is not None:
        poller.register(monitor, zmq.POLLIN)
    count = 0
    keep, latency, gaps = Filter(profile, service), Latency(), Gaps()
    try:
        _subscribe(sub, endpoint)
        if connected is not None:
            connected()
        while (stop is None or not stop.is_set()) and (limit is None or count < limit):
            ready = dict(poller.poll(POLL_MS))
            if link is not None and monitor in ready:
                link.on_event(int(recv_monitor_message(monitor)["event"]))
            if sub not in ready:
                continue
            record = describe(sub.recv_multipart(), time.time())
            latency.note(record)
            gap = gaps.note(record)          # shown whatever the filters: lost is lost
            if gap is not None:
                out.write((json.dumps(gap) if as_json else format_line(gap)) + "\n")
            if not keep.keeps(record):
                continue
            out.write((json.dumps(record) if as_json else format_line(record)) + "\n")
            out.flush()
            count += 1
    except KeyboardInterrupt:
        pass
    finally:
        if monitor is not None:
            sub.disable_monitor()
            monitor.close(linger=0)
        sub.close(linger=0)
        ctx.term()
    return 0


def _subscribe(sub: zmq.Socket, endpoint: str) -> None:
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.IPV6, 1)                  # tcp://[::1]:port, and IPv6-only names
    sub.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
    bad = f"cannot tap {endpoint!r}"
    try:
        sub.connect(endpoint)
        host = _tcp_host(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"{bad}: {zmq.strerror(exc.errno)} "
                          "(an endpoint is like tcp://127.0.0.1:4041)") from None
    except ValueError as exc:                    # libzmq took it, but it is no URL
        raise ConfigError(f"{bad}: {exc} (an endpoint is like tcp://127.0.0.1:4041)") from None
    if host is not None:
        try:
            socket.getaddrinfo(host, None)
        except UnicodeError as exc:
            raise ConfigError(f"{bad}: host {host!r} is not a valid name ({exc})") from None
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_NAME:       # a resolver that is down may come back
                raise ConfigError(f"{bad}: host {host!r} does not resolve ({exc})") from None


_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def _tcp_host(endpoint: str) -> str | None:
    """The host name of a tcp:// endpoint, if it is a name to look up (not *, not empty);
    ValueError if it is no URL (`tcp://[::1`)."""
    if not endpoint.startswith("tcp://"):
        return None
    address = endpoint[len("tcp://"):].rpartition(";")[2]   # after a source address, if any
    host = urlsplit("tcp://" + address).hostname
    return host if host and host != "*" else None


def describe(frames: list[bytes], when: float) -> dict[str, Any]:
    """One tap message as a JSON-ready dict (bytes as hex)."""
    record: dict[str, Any] = {"time": when, "size": sum(len(f) for f in frames)}
    direction, seq = _split_topic(frames[0]) if frames else (None, None)
    if seq is not None:
        record["seq"] = seq
    if len(frames) < 4 or direction is None:
        record["undecodable"] = f"{len(frames)} frames"
        return record
    _, peer, protocol, command, *body = frames
    record.update(direction=direction.decode(), peer=_text(peer), protocol=_text(protocol),
                  command=COMMAND_NAMES.get(command, command.hex()))
    if protocol != PROTOCOL:
        record["undecodable"] = "not the bus protocol"
    elif len(body) > 1:
        record["undecodable"] = f"{len(body)} body frames"
    elif body == [b""]:
        record["undecodable"] = "body withheld by the bus (not an Intent, so not redacted)"
    elif body:
        try:
            if command == READY:
                record["announce"] = _jsonable(_announce_map(body[0]))
            else:
                record["intent"] = _jsonable(redact(decode(body[0]).to_map()))
        except IntentError as exc:
            record["undecodable"] = f"{exc} ({len(body[0])} bytes)"
    return record


def format_line(record: dict[str, Any]) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(record["time"]))
    stamp = f"{clock}.{int(record['time'] % 1 * 1000):03d}"
    if "dropped" in record:
        return (f"{stamp} !   {record['dropped']} frames dropped here (the tap read too "
                "slowly; the bus never waits for it)")
    if "restarted" in record:
        return f"{stamp} !   the bus restarted (its sequence began again)"
    if "direction" not in record:
        return f"{stamp} ?   undecodable {record['undecodable']}, {record['size']} bytes"
    parts = [stamp, f"{record['direction']:<3}", _shown(record["peer"]), record["command"]]
    intent = record.get("intent")
    if intent is not None:
        keys = ("profile", "interface", "attribute")
        path = "/".join(str(intent[k]) for k in keys if intent.get(k))
        parts += [intent["action"], _shown("/" + path)]
        if "pluginId" in intent:
            parts.append(f"plugin={_shown(intent['pluginId'])}")
        if "serviceId" in intent:
            parts.append(f"serviceId={_shown(intent['serviceId'])}")
        if intent.get("origin"):
            parts.append(f"origin={_shown(intent['origin'])}")
        parts.append(f"rc={intent['requestCode'][:RC_PREFIX]}")
        if "result" in intent:
            parts.append(f"result={intent['result']}")
        if "latencyMs" in record:
            parts.append(f"latency={record['latencyMs']:.2f}ms")
        if "errorCode" in intent:
            parts.append(f"errorCode={intent['errorCode']} {intent.get('errorMessage', '')!r}")
    if "announce" in record:
        parts.append("plugins=" + _shown(",".join(p["id"] for p in record["announce"]["plugins"])))
    if "undecodable" in record:
        parts.append(f"undecodable: {record['undecodable']}, {record['size']} bytes")
    return " ".join(parts)


def _announce_map(body: bytes) -> dict[str, Any]:
    """The announce, each plug-in's API documents shown by profile name only."""
    announce = decode_announce(body)
    plugins = []
    for p in announce.plugins:
        entry = p.to_map()
        if "apis" in entry:
            entry["apis"] = sorted(entry["apis"])
        plugins.append(entry)
    return {"hostId": announce.host_id, "plugins": plugins}


def _shown(text: str) -> str:
    """`text` as is, or quoted when it has spaces or characters a terminal would act on."""
    return text if text.isprintable() and " " not in text else repr(text)


def _text(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.hex()
    return text if text.isprintable() else raw.hex()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
