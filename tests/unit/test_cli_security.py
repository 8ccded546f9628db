"""The security commands of `gotapi-3dp`, run as a user runs them.

Commands that need no server (`contents audit`, `contents rotate-key`, usage errors) run in
a subprocess on a data dir alone. The others talk HTTP to a contents server and a printer
served from this process on 127.0.0.1:0 (werkzeug threads; the printer with fake firmware,
link and slicer); they run `gotapi3dp.cli.main(argv)` in this process (a subprocess costs
~2 s of imports each), except the blocking `printer pair`, which runs in a subprocess beside
`contents confirm`. Each test checks the exit code and what the user reads, also for bad
input: unknown or expired code, wrong key, wrong fingerprint, unknown printer, bad `--since`.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from werkzeug.serving import make_server

from contents_server.app import create_app as contents_app
from contents_server.keys import KEY_FILE, NEXT_FILE
from gotapi3dp.cli import main as cli_main
from gotapi3dp.config import Config, ContentsConfig
from gotapi3dp.wire.token import key_id
from printer import main as printer_main
from printer.app import create_app as printer_app

from .contents_support import FakeClock
from .test_printer_helpers import FakeLink, FakeSlicer

CODE_RE = re.compile(r"Pairing code:\s+(\S+)\s+Fingerprint:\s+(\S+)")


def cli(data_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gotapi3dp.cli", "--data-dir", str(data_dir),
                           *args], check=False, capture_output=True, text=True, timeout=timeout)


def cli_here(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`gotapi-3dp --data-dir D ARGS` in this process; stdout/stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["--data-dir", str(data_dir), *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(argv)
        except SystemExit as exc:            # argparse usage errors
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


class Served:
    """A WSGI app on 127.0.0.1:<free port>, in a thread."""

    def __init__(self, app: Any) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Stack:
    """A contents server (settable clock) and a printer, sharing one data dir."""

    def __init__(self, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.data_dir = data_dir
        self.clock = FakeClock(time.time())
        self.contents = Served(contents_app(ContentsConfig(), data_dir / "contents",
                                            clock=self.clock))
        self.account_key = (data_dir / "contents" / "demo.key").read_text().strip()
        monkeypatch.setattr(printer_main, "_make_link", lambda pc, port: FakeLink())
        monkeypatch.setattr(printer_main, "_make_firmware", lambda config, path: _NoFirmware())
        monkeypatch.setattr(printer_main, "_slice_fn", lambda: FakeSlicer())
        self.printer = printer_main.build(Config(data_dir=data_dir))
        self.printer_srv = Served(printer_app(self.printer))
        self.printer_key = self.printer.keys.api_key

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli_here(self.data_dir, *args)

    def start_pairing(self) -> dict[str, Any]:
        r = requests.post(f"{self.printer_srv.url}/api/pairing/start",
                          json={"contentsUrl": self.contents.url},
                          headers={"X-Api-Key": self.printer_key}, timeout=10)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def confirm(self, code: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("contents", "confirm", code, "--url", self.contents.url, *extra)

    def pair(self) -> None:
        # KEY=VALUE: a base64url key may start with "-", which argparse takes for an option
        r = self.run("pair", "--printer-url", self.printer_srv.url,
                     f"--printer-key={self.printer_key}", "--contents-url", self.contents.url,
                     f"--contents-key={self.account_key}")
        assert r.returncode == 0, r.stderr

    def close(self) -> None:
        self.printer_srv.close()
        self.contents.close()
        self.printer.close()


class _NoFirmware:
    def start(self) -> str:
        return "/dev/pts/fake"

    def stop(self) -> None:
        pass


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    s = Stack(tmp_path / "data", monkeypatch)
    yield s
    s.close()


def failed(r: subprocess.CompletedProcess[str], *words: str) -> bool:
    """Exit 1 with one `gotapi-3dp: error: ...` line naming every word (case-insensitive)."""
    err = r.stderr.lower()
    return (r.returncode == 1 and "gotapi-3dp: error:" in err
            and all(w.lower() in err for w in words) and "traceback" not in err)


# --- pairing by code ----------------------------------------------------------------------

def test_printer_pair_then_contents_confirm(stack):
    proc = subprocess.Popen(
        [sys.executable, "-m", "gotapi3dp.cli", "--data-dir", str(stack.data_dir),
         "printer", "pair", "--printer-url", stack.printer_srv.url,
         "--contents-url", stack.contents.url], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        shown = ""
        while not CODE_RE.search(shown):
            line = proc.stdout.readline() if proc.stdout else ""
            assert line, proc.stderr.read() if proc.stderr else ""
            shown += line
        code, fingerprint = CODE_RE.search(shown).groups()  # type: ignore[union-attr]
        assert fingerprint == stack.printer.keys.fingerprint
        r = stack.confirm(code, "--fingerprint", fingerprint)
        assert r.returncode == 0, r.stderr
        assert f"paired printer {stack.printer.keys.printer_id}" in r.stdout
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "paired: printer" in out and stack.printer.trust.get() is not None
    # codes are single use
    assert failed(stack.confirm(code), "pairing code")


def test_confirm_unknown_code(stack):
    assert failed(stack.confirm("BCDFGHJK"), "PAIRING_CODE", "unknown")


def test_confirm_expired_code(stack):
    shown = stack.start_pairing()
    stack.clock.now += 11 * 60
    assert failed(stack.confirm(shown["userCode"]), "PAIRING_CODE", "expired")
    assert stack.printer.trust.get() is None


def test_confirm_with_a_wrong_account_key(stack):
    shown = stack.start_pairing()
    r = stack.confirm(shown["userCode"], "--key", "not-a-key")
    assert failed(r) and r.stdout == ""
    # the code still works for its real owner
    assert stack.confirm(shown["userCode"]).returncode == 0


def test_confirm_with_a_wrong_fingerprint(stack):
    shown = stack.start_pairing()
    r = stack.confirm(shown["userCode"], "--fingerprint", "0" * 20)
    assert failed(r, "PAIRING_CODE")


def test_printer_pair_with_a_wrong_printer_key(stack):
    r = stack.run("printer", "pair", "--printer-url", stack.printer_srv.url,
                  "--printer-key", "wrong", "--contents-url", stack.contents.url)
    assert failed(r) and "Pairing code" not in r.stdout


def test_printer_pair_when_the_printer_is_down(tmp_path):
    r = cli_here(tmp_path, "printer", "pair", "--printer-url", "http://127.0.0.1:9",
            "--printer-key", "k", "--contents-url", "http://127.0.0.1:9")
    assert failed(r, "unreachable")


def test_pair_in_one_go(stack):
    stack.pair()
    assert stack.printer.trust.get() is not None
    paired = json.loads((stack.data_dir / "plugin_host" / "printers.json").read_text())
    assert paired[0]["printer_id"] == stack.printer.keys.printer_id


def test_pair_with_a_wrong_contents_key(stack):
    r = stack.run("pair", "--printer-url", stack.printer_srv.url,
                  f"--printer-key={stack.printer_key}", "--contents-url", stack.contents.url,
                  "--contents-key", "wrong")
    assert failed(r) and stack.printer.trust.get() is None


# --- unpairing ----------------------------------------------------------------------------

def test_unpair(stack):
    stack.pair()
    pid = stack.printer.keys.printer_id
    r = stack.run("contents", "unpair", pid, "--url", stack.contents.url)
    assert r.returncode == 0 and f"unpaired printer {pid}" in r.stdout
    assert failed(stack.run("contents", "unpair", pid, "--url", stack.contents.url),
                  "PRINTER_NOT_REGISTERED")


def test_unpair_with_a_wrong_key(stack):
    stack.pair()
    r = stack.run("contents", "unpair", stack.printer.keys.printer_id,
                  "--url", stack.contents.url, "--key", "wrong")
    assert failed(r)


# --- key rotation -------------------------------------------------------------------------

def test_printer_keys_follows_rotate_key(stack):
    stack.pair()
    before = set(stack.printer.trust.get().keys)
    r = stack.run("contents", "rotate-key")
    assert r.returncode == 0 and "signing key rotated" in r.stdout
    r = stack.run("printer", "keys", "--printer-url", stack.printer_srv.url)
    assert r.returncode == 0, r.stderr
    after = set(stack.printer.trust.get().keys)
    assert after > before and f"pinned {ContentsConfig().issuer} keys" in r.stdout


def test_printer_keys_before_pairing(stack):
    r = stack.run("printer", "keys", "--printer-url", stack.printer_srv.url)
    assert failed(r, "PRINTER_NOT_TRUSTED", "pair the printer first")


def test_printer_keys_with_a_wrong_printer_key(stack):
    r = stack.run("printer", "keys", "--printer-url", stack.printer_srv.url,
                  "--printer-key", "wrong")
    assert failed(r)


def test_rotate_key_without_a_server(tmp_path):
    from contents_server.keys import load_or_create
    contents = tmp_path / "contents"
    load_or_create(contents)
    old, nxt = (key_id(bytes(_verify(contents / f))) for f in (KEY_FILE, NEXT_FILE))
    r = cli(tmp_path, "contents", "rotate-key")
    assert r.returncode == 0, r.stderr
    assert f"{old} retired" in r.stdout and f"{nxt} current" in r.stdout
    assert key_id(bytes(_verify(contents / KEY_FILE))) == nxt
    r = cli(tmp_path, "contents", "audit", "--json")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["event"] for e in events] == ["key:rotated"] and old in events[0]["detail"]


def _verify(seed_file: Path) -> Any:
    from nacl.signing import SigningKey
    return SigningKey(seed_file.read_bytes()).verify_key


# --- audit --------------------------------------------------------------------------------

def test_audit_lists_pairing_and_unpairing(stack):
    stack.pair()
    stack.run("contents", "unpair", stack.printer.keys.printer_id, "--url", stack.contents.url)
    r = stack.run("contents", "audit", "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line)["event"] for line in r.stdout.splitlines()]
    for event in ("pairing:started", "pairing:confirmed", "pairing:completed",
                  "printer:unregistered"):
        assert event in events
    text = stack.run("contents", "audit").stdout
    assert "pairing:confirmed" in text and "printer=" in text
    assert stack.account_key not in text and stack.printer_key not in text


def test_rotate_key_with_no_key_yet(tmp_path):
    assert failed(cli(tmp_path, "contents", "rotate-key"), "no signing key", "nothing to rotate")
    assert not (tmp_path / "contents" / KEY_FILE).exists()


def test_audit_since(tmp_path):
    from contents_server.keys import load_or_create
    load_or_create(tmp_path / "contents")
    assert cli_here(tmp_path, "contents", "rotate-key").returncode == 0
    for since in ("1h", str(int(time.time()) - 60), "2000-01-01"):
        r = cli_here(tmp_path, "contents", "audit", "--since", since, "--json")
        assert r.returncode == 0 and len(r.stdout.splitlines()) == 1, (since, r.stderr)
    for since in ("0s", str(int(time.time()) + 3600)):
        r = cli_here(tmp_path, "contents", "audit", "--since", since)
        assert r.returncode == 0 and r.stdout == "", since


def test_audit_on_an_empty_data_dir(tmp_path):
    r = cli(tmp_path, "contents", "audit")
    assert r.returncode == 0 and r.stdout == ""


@pytest.mark.parametrize("since", ["yesterday", "5x", "2h30"])
def test_audit_bad_since(tmp_path, since):
    assert failed(cli(tmp_path, "contents", "audit", "--since", since), "--since")


def test_confirm_without_a_code_is_a_usage_error(tmp_path):
    r = cli(tmp_path, "contents", "confirm")
    assert r.returncode == 2 and "code" in r.stderr
