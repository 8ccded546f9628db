"""The `gotapi-3dp` command line: run the stack, one process, the demo, and the tools around them."""
from __future__ import annotations

import argparse
import json
import logging
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
    from rich.console import Console
    return Console(stderr=False, highlight=False)


# -- commands ------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace, config: Config) -> int:
    from .supervisor import Supervisor
    console = _console()
    supervisor = Supervisor(config, args.config, say=lambda m: console.print(f"[dim]{m}[/]"))
    _stop_on_signals(lambda: supervisor.stop())
    info = supervisor.start()
    console.print(f"[bold green]gotapi-3dp is up[/]  (details in {config.data_dir / 'up.json'})")
    for label, value in (("GotAPI server", info.gotapi), ("intent bus", info.bus),
                         ("bus tap", info.tap), ("contents server", info.contents),
                         ("printer", info.printer), ("sample content", info.sampleContentId),
                         ("logs", str(config.data_dir / "logs"))):
        console.print(f"  {label:<16} {value}")
    console.print("Ctrl-C stops everything.")
    supervisor.supervise()
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
    if not args.json:
        print(f"tapping {endpoint} (Ctrl-C to stop)", file=sys.stderr)
    try:
        tap(endpoint, args.json, sys.stdout, limit=args.count)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_slice(args: argparse.Namespace, config: Config) -> int:
    from rich.progress import Progress

    from printer.slicer import slice_file
    profile = config.printer.slicer
    for item in args.set or []:
        key, _, value = item.partition("=")
        if not hasattr(profile, key) or not value:
            raise ConfigError(f"--set {item}: expected KEY=VALUE with KEY one of the slicer settings")
        setattr(profile, key, type(getattr(profile, key))(value))
    t0 = time.monotonic()
    with Progress(transient=True) as progress:
        task = progress.add_task(f"slicing {Path(args.model).name}", total=None)
        result = slice_file(Path(args.model), Path(args.output), profile,
                            progress=lambda done, total: progress.update(task, completed=done, total=total))
    print(f"{args.output}: {result.layers} layers, {result.lines} lines, "
          f"{result.filament_mm / 1000:.2f} m filament, about {result.estimated_seconds / 60:.0f} min "
          f"(sliced in {time.monotonic() - t0:.1f} s)")
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
    from plugin_host.printer3d.printers import save_paired

    from .pairing import pair_printer
    entry = pair_printer(args.printer_url, args.printer_key, args.contents_url or config.contents.url,
                         args.contents_key, args.service_id, args.name)
    save_paired(config, entry)
    print(f"paired printer {entry.printer_id} as service {entry.service_id}; "
          f"restart the plug-in host to serve it")
    return EXIT_OK


def cmd_stream(args: argparse.Namespace, config: Config) -> int:
    from .streaming import stream_file
    return stream_file(Path(args.file), args.port, args.baud or config.printer.baud, config, _console())


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


# -- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gotapi-3dp", description=(
        "Authenticated 3D printing over OMA GotAPI: a GotAPI server, a ZeroMQ intent bus, a 3D "
        "printer plug-in, a contents server that issues sealed print tokens, and a printer that "
        "redeems them, slices and streams G-code."))
    parser.add_argument("--version", action="version", version=f"gotapi-3dp {__version__}")
    parser.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    parser.add_argument("--data-dir", help="keys, databases and caches (default: ~/.local/share/gotapi-3dp)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start and supervise all four processes; Ctrl-C stops them")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("demo", help="start everything, print the bundled sample model through the whole flow, stop")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("serve", help="run one process (for deployments across terminals or hosts)")
    p.add_argument("name", choices=SERVE_NAMES)
    p.set_defaults(func=cmd_serve)

    bus = sub.add_parser("bus", help="intent bus tools").add_subparsers(dest="bus_command", required=True)
    p = bus.add_parser("tap", help="decode and print every Intent on the bus, live")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.add_argument("--endpoint", help="tap endpoint (default: gotapi.tap_endpoint)")
    p.add_argument("--count", type=int, help="stop after this many frames")
    p.set_defaults(func=cmd_bus_tap)

    p = sub.add_parser("slice", help="slice a model (STL, OBJ, 3MF) to G-code")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="G-code file to write")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a slicer setting")
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

    p = sub.add_parser("pair", help="pair a printer with the contents server and the plug-in host by hand")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    from .supervisor import StartError
    from .wire.errors import P3DError
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.data_dir)
        return int(args.func(args, config))
    except (ConfigError, StartError, P3DError, OSError) as exc:
        print(f"gotapi-3dp: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
