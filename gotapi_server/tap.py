"""`bus tap`: print every bus frame the GotAPI server publishes on its tap, decoded.

The bus copies each frame it receives or sends to a PUB socket as
`[direction, peer routing id, protocol, command, body?]`. We decode bodies with the shared
decoders (Intent, READY announce) and print one line, or one JSON object, per frame.
A frame that does not decode is printed as such; nothing here trusts the bytes.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, TextIO

import zmq

from gotapi3dp.wire.busproto import COMMAND_NAMES, PROTOCOL, READY, decode_announce
from gotapi3dp.wire.intent import IntentError, decode

POLL_MS = 100
RC_PREFIX = 8  # hex digits of the requestCode shown in a line


def tap(endpoint: str, as_json: bool, out: TextIO, stop: threading.Event | None = None,
        limit: int | None = None) -> int:
    """Print frames until `stop` is set, `limit` frames were printed or Ctrl-C; exit status 0."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    count = 0
    try:
        while (stop is None or not stop.is_set()) and (limit is None or count < limit):
            if not sub.poll(POLL_MS):
                continue
            record = describe(sub.recv_multipart(), time.time())
            out.write((json.dumps(record) if as_json else format_line(record)) + "\n")
            out.flush()
            count += 1
    except KeyboardInterrupt:
        pass
    finally:
        sub.close(linger=0)
        ctx.term()
    return 0


def describe(frames: list[bytes], when: float) -> dict[str, Any]:
    """One tap message as a JSON-ready dict (bytes as hex)."""
    record: dict[str, Any] = {"time": when, "size": sum(len(f) for f in frames)}
    if len(frames) < 4 or frames[0] not in (b"in", b"out"):
        record["undecodable"] = f"{len(frames)} frames"
        return record
    direction, peer, protocol, command, *body = frames
    record.update(direction=direction.decode(), peer=_text(peer), protocol=_text(protocol),
                  command=COMMAND_NAMES.get(command, command.hex()))
    if protocol != PROTOCOL:
        record["undecodable"] = "not the bus protocol"
    elif len(body) > 1:
        record["undecodable"] = f"{len(body)} body frames"
    elif body:
        try:
            if command == READY:
                record["announce"] = _jsonable(_announce_map(body[0]))
            else:
                record["intent"] = _jsonable(decode(body[0]).to_map())
        except IntentError as exc:
            record["undecodable"] = f"{exc} ({len(body[0])} bytes)"
    return record


def format_line(record: dict[str, Any]) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(record["time"]))
    stamp = f"{clock}.{int(record['time'] % 1 * 1000):03d}"
    if "direction" not in record:
        return f"{stamp} ?   undecodable {record['undecodable']}, {record['size']} bytes"
    parts = [stamp, f"{record['direction']:<3}", record["peer"], record["command"]]
    intent = record.get("intent")
    if intent is not None:
        keys = ("profile", "interface", "attribute")
        path = "/".join(str(intent[k]) for k in keys if intent.get(k))
        parts += [intent["action"], "/" + path]
        if "pluginId" in intent:
            parts.append(f"plugin={intent['pluginId']}")
        if "serviceId" in intent:
            parts.append(f"serviceId={intent['serviceId']}")
        parts.append(f"rc={intent['requestCode'][:RC_PREFIX]}")
        if "result" in intent:
            parts.append(f"result={intent['result']}")
        if "errorCode" in intent:
            parts.append(f"errorCode={intent['errorCode']} {intent.get('errorMessage', '')!r}")
    if "announce" in record:
        parts.append("plugins=" + ",".join(p["id"] for p in record["announce"]["plugins"]))
    if "undecodable" in record:
        parts.append(f"undecodable: {record['undecodable']}, {record['size']} bytes")
    return " ".join(parts)


def _announce_map(body: bytes) -> dict[str, Any]:
    announce = decode_announce(body)
    return {"hostId": announce.host_id, "plugins": [p.to_map() for p in announce.plugins]}


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
