"""The `gotapi-3dp` command line: run the stack, one process, the demo, and the tools around them."""
from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .config import Config, ConfigError, load_config

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
SERVE_NAMES = ("gotapi", "plugin-host", "contents", "printer")


def _console() -> Any:
    from .console import console
    return console(stderr=False, highlight=False)


# -- commands ------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace, config: Config) -> int:
    from .supervisor import Supervisor
    console = _console()
    supervisor = Supervisor(config, args.config, say=lambda m: console.print(f"[dim]{m}[/]"))
    starting = True

    def on_signal() -> None:
        # Only a flag while supervising: stop() then runs once, from this function, never
        # in the middle of a restart (a child started after everything had stopped).
        # While starting, abort the start-up once: start() stops what it started.
        nonlocal starting
        already = supervisor.stop_requested()     # start-up failed and is stopping: let it
        supervisor.request_stop()
        if starting and not already:
            starting = False
            raise KeyboardInterrupt
    _stop_on_signals(on_signal)
    try:
        info = supervisor.start()
        starting = False
        console.print(f"[bold green]gotapi-3dp is up[/]  (details in {config.data_dir / 'up.json'})")
        for label, value in (("GotAPI server", info.gotapi), ("intent bus", info.bus),
                             ("bus tap", info.tap), ("contents server", info.contents),
                             ("printer", info.printer), ("sample content", info.sampleContentId),
                             ("logs", str(config.data_dir / "logs"))):
            console.print(f"  {label:<16} {value}")
        console.print("Ctrl-C stops everything.")
        supervisor.supervise()
    finally:
        supervisor.stop()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from .demo import run_demo
    return run_demo(config, args.config, _console())


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s")
    if args.name == "gotapi":
        from gotapi_server.main import serve
    elif args.name == "plugin-host":
        from plugin_host.main import serve
    elif args.name == "contents":
        from contents_server.main import serve
    else:
        from printer.main import serve
    serve(config)
    return EXIT_OK


def cmd_bus_tap(args: argparse.Namespace, config: Config) -> int:
    from gotapi_server.tap import tap
    endpoint = args.endpoint or config.gotapi.tap_endpoint
    keys = _tap_keys(args, config)
    curve, note = None, None
    if keys is not None and args.endpoint and not _has_server_key(keys):
        # another bus than this data dir's, and no --server-key: it may run without CURVE
        note = ("no bus server key in this data dir: tapping without CurveZMQ (for a bus that "
                "uses it, give --server-key, what `gotapi-3dp bus key` prints)")
    elif keys is not None:
        try:
            curve = (_wait_for_server_key(keys), keys.pair)
        except KeyboardInterrupt:
            return EXIT_OK

    def banner() -> None:
        if note is not None:
            print(note, file=sys.stderr)
        if not args.json:
            print(f"tapping {endpoint} (Ctrl-C to stop)", file=sys.stderr)
    try:
        tap(endpoint, args.json, sys.stdout, limit=args.count, profile=args.profile,
            service=args.service, connected=banner,
            notice=lambda text: print(text, file=sys.stderr, flush=True), curve=curve)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _tap_keys(args: argparse.Namespace, config: Config) -> Any:
    """The tap's CurveZMQ keys (`buskeys.ClientKeys`) when the bus runs CurveZMQ, else None.
    The tap's pair lives in <data-dir>/tap/bus; without --server-key the server is taken to
    share the data dir: its key is read there and the tap admits itself as `tap` in the
    taps' allow-list."""
    if config.gotapi.bus_security == "none":
        return None
    from .buskeys import client_keys
    try:
        return client_keys(Path(config.data_dir), config.dir_for("tap") / "bus", "tap",
                           args.server_key or "", tap=True)
    except ValueError as exc:
        raise ConfigError(f"--server-key: {exc}") from None


def _has_server_key(keys: Any) -> bool:
    return bool(keys.server_key) or (keys.server_key_file is not None
                                     and keys.server_key_file.exists())


def _wait_for_server_key(keys: Any, poll: float = 0.5) -> bytes:
    """The bus server's public key; while its file is missing (a tap started before the
    server made its key), wait for it, saying so once."""
    said = False
    while True:
        try:
            return bytes(keys.server_public())
        except FileNotFoundError:
            if not said:
                print(f"waiting for the bus server's key ({keys.server_key_file}): is "
                      "`gotapi-3dp up` running on this data dir? For a bus elsewhere give "
                      "--server-key (what `gotapi-3dp bus key` prints there)",
                      file=sys.stderr, flush=True)
                said = True
        except ValueError as exc:
            raise ConfigError(f"bus server key: {exc}") from None
        time.sleep(poll)


def cmd_bus_key(args: argparse.Namespace, config: Config) -> int:
    """The bus server's CurveZMQ public key (the pair is made if missing), for the
    `bus_server_key` of a plug-in host on another machine."""
    from .buskeys import SERVER_NAME, load_or_create_pair, server_dir
    print(load_or_create_pair(server_dir(config.dir_for("gotapi")), SERVER_NAME).public.decode())
    return EXIT_OK


def cmd_bus_admit(args: argparse.Namespace, config: Config) -> int:
    """Put a plug-in host's public key file in the bus's allow-list under its host id, or
    with --tap a tap's in the tap endpoint's allow-list."""
    from .buskeys import admit, clients_dir, read_public, taps_dir
    from .wire.busproto import HOST_ID_RE
    if not HOST_ID_RE.fullmatch(args.host_id):
        what = "tap name" if args.tap else "host id"
        hint = "" if args.tap else " (the host's [plugin_host] host_id)"
        raise ConfigError(f"{what} {args.host_id!r}: 1-64 of A-Za-z0-9_.-{hint}")
    key_file = Path(args.key_file)
    try:
        key = read_public(key_file)
    except ValueError as exc:
        raise ConfigError(f"{key_file}: not a CURVE public key file ({exc})") from None
    target = (taps_dir if args.tap else clients_dir)(config.dir_for("gotapi"))
    admit(target, args.host_id, key_file)
    print(f"admitted {'tap ' if args.tap else ''}{args.host_id} (key {key.decode()}) in {target}")
    return EXIT_OK


def cmd_slice(args: argparse.Namespace, config: Config) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from printer import preview
    from printer.profile import load_profile
    from printer.slicer import slice_file
    profile = load_profile(args.profile, args.set or [], base=config.printer.slicer)
    wanted = preview.parse_layers(args.layers) if args.preview else None
    t0 = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("layers"), TimeElapsedColumn())
    # auto_refresh=False: no refresh thread, so the slicer may fork its workers safely.
    # Only on a terminal: elsewhere rich's Progress ends by printing a blank line.
    console = _console()
    with Progress(*columns, console=console, transient=True, auto_refresh=False,
                  disable=not console.is_terminal) as progress:
        task = progress.add_task(f"slicing {Path(args.model).name}", total=None)
        result = slice_file(Path(args.model), Path(args.output), profile,
                            progress=lambda done, total: progress.update(
                                task, completed=done, total=total, refresh=True))
    print(f"{args.output}: {result.layers} layers, {result.lines} lines, "
          f"{result.filament_mm / 1000:.2f} m ({result.filament_g:.1f} g) filament, "
          f"about {result.estimated_seconds / 60:.0f} min (sliced in {time.monotonic() - t0:.1f} s)")
    if args.preview:
        for path in preview.write_previews(Path(args.output), Path(args.preview), wanted, profile):
            print(f"preview: {path}")
    return EXIT_OK


def cmd_contents_add(args: argparse.Namespace, config: Config) -> int:
    import requests

    from .http_json import call
    from .wire.errors import ErrorCode
    url = args.url or config.contents.url
    key = args.key or _demo_key(config)
    data: dict[str, str] = {}
    if args.name:
        data["name"] = args.name
    if args.prints is not None:
        data["prints"] = str(args.prints)
    path = Path(args.file)
    with open(path, "rb") as fh:
        content = call(requests.Session(), "POST", f"{url.rstrip('/')}/api/contents",
                       unavailable=ErrorCode.CONTENTS_UNAVAILABLE, headers={"X-Api-Key": key},
                       files={"file": (path.name, fh, "application/octet-stream")}, data=data)
    print(json.dumps(content, indent=1))
    return EXIT_OK


def cmd_contents_account(args: argparse.Namespace, config: Config) -> int:
    from contents_server.accounts import add_account_cli
    print(add_account_cli(config, args.name))
    return EXIT_OK


def cmd_pair(args: argparse.Namespace, config: Config) -> int:
    """Pair by code in one go: the caller holds both the printer's and the account's key."""
    from plugin_host.printer3d.printers import save_paired

    from .pairing import pair_printer
    entry = pair_printer(args.printer_url, args.printer_key, args.contents_url or config.contents.url,
                         args.contents_key, args.service_id, args.name)
    save_paired(config, entry)
    print(f"paired printer {entry.printer_id} as service {entry.service_id}; "
          f"restart the plug-in host to serve it")
    return EXIT_OK


def _printer_args(args: argparse.Namespace, config: Config) -> tuple[str, str]:
    url = args.printer_url or f"http://{config.printer.host}:{config.printer.port}"
    key = args.printer_key or (config.data_dir / "printer" / "api.key").read_text().strip()
    return url, key


def cmd_printer_pair(args: argparse.Namespace, config: Config) -> int:
    """Show a pairing code and the keys' fingerprint; wait for the user to confirm it."""
    import requests

    from plugin_host.printer3d.printers import save_paired

    from . import pairing
    from .config import PrinterEntry
    url, key = _printer_args(args, config)
    http = requests.Session()
    shown = pairing.start(http, url, key, args.contents_url or config.contents.url)
    print(f"Pairing code:  {shown['userCode']}\nFingerprint:   {shown['fingerprint']}\n"
          f"Confirm it at the contents server within {int(shown['expiresAt'] - time.time())} s:\n"
          f"  gotapi-3dp contents confirm {shown['userCode']} --fingerprint {shown['fingerprint']}",
          flush=True)
    approved = pairing.wait_approved(http, url, key, float(shown["expiresAt"]))
    save_paired(config, PrinterEntry(service_id=args.service_id, name=args.name or shown["printerId"],
                                     url=url, api_key=key, printer_id=shown["printerId"]))
    print(f"paired: printer {shown['printerId']} pinned {approved['issuer']} keys "
          f"{', '.join(approved['keys'])}; restart the plug-in host to serve it")
    return EXIT_OK


def cmd_printer_keys(args: argparse.Namespace, config: Config) -> int:
    """Make the printer follow a key rotation of the contents server it is paired with."""
    import requests

    from .http_json import call
    from .wire.errors import ErrorCode
    url, key = _printer_args(args, config)
    answer = call(requests.Session(), "POST", f"{url}/api/pairing/keys", headers={"X-Api-Key": key},
                  unavailable=ErrorCode.PRINTER_UNAVAILABLE)
    print(f"pinned {answer['issuer']} keys {', '.join(answer['keys'])}")
    return EXIT_OK


def cmd_contents_confirm(args: argparse.Namespace, config: Config) -> int:
    import requests

    from .pairing import confirm
    answer = confirm(requests.Session(), args.url or config.contents.url, args.key or _demo_key(config),
                     args.code, args.fingerprint)
    print(f"paired printer {answer['printerId']} ({answer['name']}), fingerprint {answer['fingerprint']}")
    return EXIT_OK


def cmd_contents_unpair(args: argparse.Namespace, config: Config) -> int:
    import requests

    from .http_json import call
    from .wire.errors import ErrorCode
    url = (args.url or config.contents.url).rstrip("/")
    call(requests.Session(), "DELETE", f"{url}/api/printers/{args.printer_id}",
         headers={"X-Api-Key": args.key or _demo_key(config)}, unavailable=ErrorCode.CONTENTS_UNAVAILABLE)
    print(f"unpaired printer {args.printer_id}: its keys and outstanding tokens are gone")
    return EXIT_OK


def cmd_contents_audit(args: argparse.Namespace, config: Config) -> int:
    from contents_server.audit import parse_since, query_data_dir
    events = query_data_dir(config.dir_for("contents"), parse_since(args.since, time.time()), args.limit)
    for e in events:
        if args.json:
            print(json.dumps(e))
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["ts"]))
            who = " ".join(f"{k}={e[k]}" for k in ("account", "printer", "content") if e[k])
            print(f"{when}  {e['event']:<22} {who} {e['detail'] or ''}".rstrip())
    return EXIT_OK


def cmd_contents_rotate_key(args: argparse.Namespace, config: Config) -> int:
    from contents_server.keys import rotate
    old, new = rotate(config.dir_for("contents"), issuer=config.contents.issuer)
    print(f"signing key rotated: {old} retired (verifies tokens until they expire), {new} current; "
          f"paired printers follow with `gotapi-3dp printer keys`")
    return EXIT_OK


def cmd_stream(args: argparse.Namespace, config: Config) -> int:
    from .streaming import stream_file
    return stream_file(Path(args.file), args.port, args.baud or config.printer.baud, config, _console())


def cmd_firmware_serve(args: argparse.Namespace, config: Config) -> int:
    """Serve the virtual firmware on TCP, for any host that opens `socket://HOST:PORT`."""
    import dataclasses
    import threading

    from printer.firmware import TcpFirmware

    from .config import LOOPBACK_HOSTS
    host, _, port = args.tcp.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ConfigError(f"--tcp {args.tcp}: expected HOST:PORT, e.g. 127.0.0.1:5000")
    if host not in LOOPBACK_HOSTS and not args.allow_non_loopback:
        raise ConfigError(f"firmware serve refuses to bind {host!r}: not a loopback address "
                          f"(--allow-non-loopback exposes it)")
    overrides: dict[str, Any] = {"advanced_ok": args.advanced_ok or config.printer.firmware.advanced_ok}
    if args.baud is not None:
        overrides["baud"] = args.baud
    log = Path(args.log) if args.log else config.dir_for("firmware") / "executed.log"
    firmware = TcpFirmware(dataclasses.replace(config.printer.firmware, **overrides), log,
                           host, int(port))
    url = firmware.start()
    print(f"virtual firmware at {url}, executed lines to {log}; Ctrl-C stops it", flush=True)
    stop = threading.Event()
    _stop_on_signals(stop.set)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        firmware.stop()
    return EXIT_OK


def _demo_key(config: Config) -> str:
    path = config.data_dir / "contents" / "demo.key"
    try:
        return path.read_text().strip()
    except OSError:
        raise ConfigError(f"no --key given and no demo account key at {path}") from None


def _stop_on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: Any) -> None:
        stop()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _app_command(name: str) -> Callable[[argparse.Namespace, Config], int]:
    """A command of the CLI app (`app_cli.py`), imported when it runs."""
    def run(args: argparse.Namespace, config: Config) -> int:
        from . import app_cli
        return int(getattr(app_cli, name)(args, config))
    return run


# -- parser ---------------------------------------------------------------------------------
def cmd_job_resume(args: argparse.Namespace, config: Config) -> int:
    """Resume a paused or interrupted job through the printer API (key from the data dir)."""
    import requests
    url, key = _printer_args(args, config)
    answer = requests.put(f"{url}/api/jobs/{args.job_id}/resume", headers={"X-Api-Key": key},
                          timeout=30)
    body = answer.json()
    if "error" in body:
        error = body["error"]
        print(f"error {error.get('code')} {error.get('name')}: {error.get('message')}",
              file=sys.stderr)
        return EXIT_FAIL
    job = body["job"]
    print(f"job {job['id']} {job['state']} (layer {job['layer']}/{job['layers']})")
    return EXIT_OK


TAP_DESCRIPTION = (
    "Decode and print every Intent on the bus, live, secrets redacted. A REPLY shows "
    "latency=...ms (latencyMs with --json): the time between this tap receiving the REQUEST "
    "and receiving its REPLY, by this process's clock. It includes the tap's own scheduling "
    "and delivery delays, so two taps can show different latencies for the same request; it "
    "is not measured by the bus. Notices on stderr say when nothing answers at the endpoint "
    "yet (the tap keeps retrying), when what answers is not a tap, when it has connected and "
    "when the bus goes away. Under bus_security = \"curve\" the tap authenticates: on the "
    "server's data dir it admits its own key; elsewhere give --server-key and admit its "
    "<data-dir>/tap/bus/client.key on the server with `bus admit`.")


def _positive_int(text: str) -> int:
    """argparse type: an int > 0 (`--count 0` would stop before the first frame)."""
    try:
        value = int(text)
    except ValueError:
        value = 0                           # not an int at all: the same message
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gotapi-3dp", description=(
        "Authenticated 3D printing over OMA GotAPI: a GotAPI server, a ZeroMQ intent bus, a 3D "
        "printer plug-in, a contents server that issues sealed print tokens, and a printer that "
        "redeems them, slices and streams G-code."))
    parser.add_argument("--version", action="version", version=f"gotapi-3dp {__version__}")
    _add_global_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start and supervise all four processes; Ctrl-C stops them")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("demo", help="start everything, print the bundled sample model through the whole flow, stop")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("serve", help="run one process (for deployments across terminals or hosts)")
    p.add_argument("name", choices=SERVE_NAMES)
    p.set_defaults(func=cmd_serve)

    bus = sub.add_parser("bus", help="intent bus tools").add_subparsers(dest="bus_command", required=True)
    p = bus.add_parser("tap", help="decode and print every Intent on the bus, live",
                       description=TAP_DESCRIPTION)
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.add_argument("--endpoint", help="tap endpoint (default: gotapi.tap_endpoint)")
    p.add_argument("--count", type=_positive_int, help="stop after this many frames")
    p.add_argument("--profile", help="only Intents of this profile, and lifecycle notices to "
                   "every plug-in (EVENT_TRANSMIT_DISCONNECT...), which have no profile")
    p.add_argument("--service", help="only Intents of this serviceId (local or public), and "
                   "lifecycle notices to every plug-in, which have no serviceId")
    p.add_argument("--server-key", help="the bus server's public key, for a bus on another "
                   "machine (default: read from this data dir; see `bus key`)")
    p.set_defaults(func=cmd_bus_tap)
    p = bus.add_parser("key", help="print the bus server's public key (for a remote host's "
                       "bus_server_key)")
    p.set_defaults(func=cmd_bus_key)
    p = bus.add_parser("admit", help="allow a plug-in host's key on the bus (its "
                       "plugin_host/bus/client.key), under its host id; with --tap, a tap's "
                       "key (its tap/bus/client.key) on the tap endpoint")
    p.add_argument("host_id", metavar="HOST_ID", help="the host's [plugin_host] host_id "
                   "(with --tap: a name for the tap)")
    p.add_argument("key_file", help="the public key file (client.key)")
    p.add_argument("--tap", action="store_true", help="admit a `bus tap` (it can read the "
                   "redacted traffic, never register plug-ins)")
    p.set_defaults(func=cmd_bus_admit)

    p = sub.add_parser("slice", help="slice a model (STL, OBJ, 3MF) to G-code")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="G-code file to write")
    p.add_argument("--profile", metavar="FILE", help="slicer profile (TOML; docs/SLICER.md)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a slicer setting (repeatable), e.g. --set infill_density=0.3")
    p.add_argument("--preview", metavar="DIR", help="write an SVG of chosen layers' toolpaths here")
    p.add_argument("--layers", metavar="N,N,...",
                   help="layers to preview (default: first, middle, last; -1 is the last)")
    p.set_defaults(func=cmd_slice)

    contents = sub.add_parser("contents", help="contents server tools").add_subparsers(
        dest="contents_command", required=True)
    p = contents.add_parser("add", help="add a model; prints its metadata as JSON with its id")
    p.add_argument("file")
    p.add_argument("--name")
    p.add_argument("--prints", type=int, help="print allowance")
    p.add_argument("--url", help="contents server (default: contents.host/port)")
    p.add_argument("--key", help="account API key (default: the demo account's)")
    p.set_defaults(func=cmd_contents_add)
    p = contents.add_parser("account", help="create an account in the local contents server's data dir; prints its API key")
    p.add_argument("name")
    p.set_defaults(func=cmd_contents_account)
    p = contents.add_parser("list", help="the contents your account may print (from <data-dir>/up.json)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=_app_command("cmd_contents_list"))

    p = sub.add_parser("print", help="print a content (id) or a model file on a running stack, with live progress")
    p.add_argument("target", metavar="CONTENT_ID_OR_FILE", help="a content id, or a model file to add first")
    p.add_argument("--printer", metavar="SERVICE_ID", help="default: the first printer online")
    p.set_defaults(func=_app_command("cmd_print"))
    p = sub.add_parser("printers", help="the printers GotAPI discovers, online or not")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=_app_command("cmd_printers"))
    p = sub.add_parser("jobs", help="the printer's jobs (operator view, printer key from the data dir)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=_app_command("cmd_jobs"))

    p = contents.add_parser("confirm", help="confirm a printer's pairing code for your account")
    p.add_argument("code", help="the code the printer shows, e.g. BCDF-GHJK")
    p.add_argument("--fingerprint", help="the fingerprint the printer shows (checked if given)")
    p.add_argument("--url", help="contents server (default: contents.host/port)")
    p.add_argument("--key", help="account API key (default: the demo account's)")
    p.set_defaults(func=cmd_contents_confirm)
    p = contents.add_parser("unpair", help="unpair a printer: its keys and outstanding tokens are deleted")
    p.add_argument("printer_id")
    p.add_argument("--url", help="contents server (default: contents.host/port)")
    p.add_argument("--key", help="account API key (default: the demo account's)")
    p.set_defaults(func=cmd_contents_unpair)
    p = contents.add_parser("audit", help="the audit log of the local contents server (issued, redeemed, refused...)")
    p.add_argument("--since", help="unix seconds, ISO date/time, or an age like 30m, 2h, 7d")
    p.add_argument("--limit", type=int, default=1000, help="at most this many (newest) events")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(func=cmd_contents_audit)
    p = contents.add_parser("rotate-key", help="rotate the local contents server's signing key (by key id)")
    p.set_defaults(func=cmd_contents_rotate_key)

    printer = sub.add_parser("printer", help="printer tools").add_subparsers(
        dest="printer_command", required=True)
    p = printer.add_parser("pair", help="show a pairing code and fingerprint; wait until it is confirmed")
    p.add_argument("--printer-url", help="default: printer.host/port")
    p.add_argument("--printer-key", help="default: <data-dir>/printer/api.key")
    p.add_argument("--contents-url", help="default: contents.host/port")
    p.add_argument("--service-id", default="printer-1", help="GotAPI local service id for this printer")
    p.add_argument("--name", help="display name in the plug-in")
    p.set_defaults(func=cmd_printer_pair)
    p = printer.add_parser("keys", help="follow a key rotation of the paired contents server")
    p.add_argument("--printer-url", help="default: printer.host/port")
    p.add_argument("--printer-key", help="default: <data-dir>/printer/api.key")
    p.set_defaults(func=cmd_printer_keys)

    p = sub.add_parser("pair", help="pair a printer by code in one go (you hold both keys)")
    p.add_argument("--printer-url", required=True)
    p.add_argument("--printer-key", required=True, help="the printer's API key (<printer data-dir>/api.key)")
    p.add_argument("--contents-url", help="default: contents.host/port")
    p.add_argument("--contents-key", required=True, help="your account's API key at the contents server")
    p.add_argument("--service-id", default="printer-1", help="GotAPI local service id for this printer")
    p.add_argument("--name", help="display name")
    p.set_defaults(func=cmd_pair)

    p = sub.add_parser("stream", help="stream a G-code file to a serial port (standalone host)")
    p.add_argument("file")
    p.add_argument("--port", required=True, help="device path, socket://host:port or rfc2217://...")
    p.add_argument("--baud", type=int)
    p.set_defaults(func=cmd_stream)
    firmware = sub.add_parser("firmware", help="the virtual Marlin-like firmware").add_subparsers(
        dest="firmware_command", required=True)
    p = firmware.add_parser("serve", help="serve it on TCP for a pyserial socket:// port, until Ctrl-C")
    p.add_argument("--tcp", required=True, metavar="HOST:PORT", help="address to listen on (port 0: any)")
    p.add_argument("--advanced-ok", action="store_true", help="answer `ok N.. P.. B..` (ADVANCED_OK)")
    p.add_argument("--baud", type=int, help="simulated baud rate, both ways (default: no delay)")
    p.add_argument("--log", metavar="FILE", help="executed lines (default: <data-dir>/firmware/executed.log)")
    p.add_argument("--allow-non-loopback", action="store_true", help="listen beyond loopback")
    p.set_defaults(func=cmd_firmware_serve)
    job = sub.add_parser("job", help="control one job on the printer").add_subparsers(
        dest="job_command", required=True)
    p = job.add_parser("resume", help="resume a paused job, or an interrupted one from the "
                       "layer in progress (re-heat, home X/Y, restore Z/E/feed rate)")
    p.add_argument("job_id")
    p.add_argument("--printer-url", help="default: printer.host/port")
    p.add_argument("--printer-key", help="default: <data-dir>/printer/api.key")
    p.set_defaults(func=cmd_job_resume)
    _global_options_after_commands(parser)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--config", default=default,
                        help="TOML configuration file (default: embedded defaults)")
    parser.add_argument("--data-dir", default=default,
                        help="keys, databases and caches (default: ~/.local/share/gotapi-3dp)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        default=False if default is None else default,
                        help="debug logging")


def _global_options_after_commands(parser: argparse.ArgumentParser) -> None:
    """Accept --config, --data-dir and -v after the command too (`up --data-dir D`), and
    list them in every command's --help; given there, they win over the same before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in set(action.choices.values()):
                _add_global_options(command, argparse.SUPPRESS)
                _global_options_after_commands(command)


def _operator_errors() -> tuple[type[BaseException], ...]:
    """What main() reports as one line. StartError only once `up`/`demo` loaded the
    supervisor: `serve gotapi` must not import it (it pulls in requests and so ssl, which
    gevent then warns it patched too late in the GotAPI worker)."""
    from .wire.errors import P3DError
    supervisor = sys.modules.get(f"{__package__}.supervisor")
    start_error = (supervisor.StartError,) if supervisor is not None else ()
    return (ConfigError, P3DError, OSError, *start_error)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader closed it (`| head -1`): poll reports
    POLLERR/POLLHUP. A broken pipe to a server or a port is not that, and stays an error."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, 0)                  # POLLERR and POLLHUP are always reported
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _quiet_exit() -> int:
    """The reader has had enough: exit 0, stdout pointed at /dev/null so the interpreter's
    final flush of what is still buffered does not raise BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.data_dir)
        return int(args.func(args, config))
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
            return _quiet_exit()
        if not isinstance(exc, _operator_errors()):
            raise
        print(f"gotapi-3dp: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
