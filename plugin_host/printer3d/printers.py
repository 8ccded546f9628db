"""The printers this plug-in serves: configured ones plus those paired by `gotapi-3dp pair`."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from gotapi3dp.config import Config, PrinterEntry
from gotapi3dp.fsutil import replace_file

PAIRED_FILE = "printers.json"


def paired_path(config: Config) -> Path:
    return config.dir_for("plugin_host") / PAIRED_FILE


def load_printers(config: Config) -> list[PrinterEntry]:
    """Configured printers first; a paired printer with the same service id replaces it."""
    by_id = {p.service_id: p for p in config.plugin_host.printers}
    path = paired_path(config)
    if path.exists():
        for entry in json.loads(path.read_text()):
            by_id[entry["service_id"]] = PrinterEntry(**entry)
    return list(by_id.values())


def save_paired(config: Config, entry: PrinterEntry) -> None:
    """Add or replace one paired printer; written atomically, mode 0600 (it holds the API key)."""
    path = paired_path(config)
    entries = json.loads(path.read_text()) if path.exists() else []
    entries = [e for e in entries if e["service_id"] != entry.service_id] + [asdict(entry)]
    replace_file(path, json.dumps(entries, indent=1).encode(), 0o600)
