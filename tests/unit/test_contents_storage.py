"""Contents server: first start (key, demo account), file modes, restart, audit, serve()."""
from __future__ import annotations

import stat

import pytest

from contents_server import accounts, keys, main
from contents_server.app import create_app
from contents_server.db import Database
from contents_server.services import EXTENSION
from gotapi3dp.config import Config, ConfigError, ContentsConfig
from gotapi3dp.wire.errors import P3DError

from .contents_support import PrinterSim, box_stl, make_env


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_makes_private_key_and_demo_key(tmp_path):
    env = make_env(tmp_path)
    assert mode(env.data_dir) == 0o700
    assert mode(env.data_dir / keys.KEY_FILE) == 0o600
    assert mode(env.data_dir / accounts.DEMO_KEY_FILE) == 0o600
    assert mode(env.data_dir / "contents.sqlite3") == 0o600
    assert env.client.get("/api/contents", headers=env.headers()).status_code == 200


def test_restart_keeps_signing_key_and_demo_key(tmp_path):
    first = make_env(tmp_path)
    kid = first.client.get("/api/keys").json["keys"][0]["kid"]
    demo = (first.data_dir / "demo.key").read_text()
    app = create_app(ContentsConfig(), first.data_dir)
    assert app.test_client().get("/api/keys").json["keys"][0]["kid"] == kid
    assert (first.data_dir / "demo.key").read_text() == demo


def test_corrupt_signing_key_file_is_an_error_not_a_new_key(tmp_path):
    (tmp_path / keys.KEY_FILE).write_bytes(b"short")
    with pytest.raises(RuntimeError):
        keys.load_or_create(tmp_path)


def test_add_account_returns_a_working_key(tmp_path):
    env = make_env(tmp_path)
    db = env.app.extensions[EXTENSION].db
    key = accounts.add_account(db, "bob")
    assert len(key) >= 43 and accounts.authenticate(db, key).name == "bob"
    with pytest.raises(P3DError):
        accounts.add_account(db, "bob")
    with pytest.raises(P3DError):
        accounts.add_account(db, "../bob")


def test_cli_add_account_uses_the_config_data_dir(tmp_path):
    config = Config(data_dir=tmp_path)
    key = accounts.add_account_cli(config, "carol")
    app = create_app(config.contents, config.dir_for("contents"))
    r = app.test_client().get("/api/contents", headers={"X-Api-Key": key})
    assert r.status_code == 200
    # An account existed already, so no demo account was made:
    assert not (tmp_path / "contents" / "demo.key").exists()


def test_database_pragmas(tmp_path):
    db = Database(tmp_path / "t.sqlite3")
    conn = db.conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2      # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    db.close()


def test_audit_records_events_but_no_secrets(tmp_path):
    env = make_env(tmp_path)
    sim = PrinterSim()
    env.client.post("/api/printers", headers=env.headers(), json=sim.registration())
    cid = env.upload(box_stl()).json["id"]
    token = env.client.post("/api/tokens", headers=env.headers(),
                            json={"printerId": sim.printer_id, "contentId": cid}).json["token"]
    url = sim.redeem(env, token).json["download"]["url"]
    db = env.app.extensions[EXTENSION].db
    rows = db.all("SELECT event, account, printer, content, detail FROM audit")
    events = [r["event"] for r in rows]
    assert {"account:created", "printer:registered", "content:added", "token:issued",
            "token:redeemed"} <= set(events)
    dump = repr([tuple(r) for r in rows])
    for secret in (env.key, token, url.rsplit("/", 1)[1]):
        assert secret not in dump


def test_serve_refuses_non_loopback_host(tmp_path, monkeypatch):
    config = Config(data_dir=tmp_path)
    config.contents.host = "0.0.0.0"
    started = []
    monkeypatch.setattr(main, "run_gunicorn", lambda *a, **k: started.append(a))
    with pytest.raises(ConfigError):
        main.serve(config)
    assert started == []


def test_serve_hands_a_factory_to_gunicorn(tmp_path, monkeypatch):
    config = Config(data_dir=tmp_path)
    calls = []
    monkeypatch.setattr(main, "run_gunicorn", lambda factory, host, port, **k: calls.append(
        (factory, host, port)))
    main.serve(config)
    factory, host, port = calls[0]
    assert (host, port) == ("127.0.0.1", 4050)
    assert not (tmp_path / "contents" / "demo.key").exists()     # nothing made before fork
    assert factory().test_client().get("/api/health").json["ok"] is True
