"""GotAPI-2: clients and access tokens (store and HTTP), bound to origins, persisted."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from gotapi3dp.wire.errors import ErrorCode, P3DError
from gotapi_server.auth import AuthStore

from .gotapi_fakes import HEADERS, ORIGIN, get_token, make_app

OTHER = "http://127.0.0.1:9999"


def _code(call) -> int:
    with pytest.raises(P3DError) as info:
        call()
    return int(info.value.code)


def test_store_issues_and_checks_tokens(tmp_path: Path) -> None:
    store = AuthStore(tmp_path, token_lifetime=3600)
    client_id = store.grant(ORIGIN)
    assert len(client_id) == 32  # 128 bits, hex
    before = time.time()
    token, expire, scopes = store.access_token(ORIGIN, client_id, "printer3d, Battery", "app")
    assert scopes == [{"scope": "printer3d", "expirePeriod": 3600},
                      {"scope": "Battery", "expirePeriod": 3600}]
    assert before * 1000 + 3600_000 - 5000 < expire < time.time() * 1000 + 3600_000 + 5000
    store.check(token, ORIGIN, "printer3d")
    store.check(token, ORIGIN, "battery")   # scopes compare case-insensitively
    store.check(token, ORIGIN, None)
    assert _code(lambda: store.check(token, ORIGIN, "light")) == ErrorCode.SCOPE
    assert _code(lambda: store.check(token, OTHER, "printer3d")) == ErrorCode.AUTHORIZATION
    assert _code(lambda: store.check("nope", ORIGIN, None)) == ErrorCode.AUTHORIZATION
    assert _code(lambda: store.check("", ORIGIN, None)) == ErrorCode.EMPTY_ACCESS_TOKEN
    assert _code(lambda: store.check(None, ORIGIN, None)) == ErrorCode.EMPTY_ACCESS_TOKEN


def test_store_keeps_no_plain_token(tmp_path: Path) -> None:
    store = AuthStore(tmp_path, token_lifetime=3600)
    token, _, _ = store.access_token(ORIGIN, store.grant(ORIGIN), "printer3d", "app")
    assert token.encode() not in (tmp_path / "auth.sqlite3").read_bytes()
    assert (tmp_path / "auth.sqlite3").stat().st_mode & 0o077 == 0


def test_expired_token_is_12(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = AuthStore(tmp_path, token_lifetime=60, clock=lambda: now[0])
    token, expire, _ = store.access_token(ORIGIN, store.grant(ORIGIN), "printer3d", "app")
    assert expire == 1_000_060_000
    now[0] += 61
    assert _code(lambda: store.check(token, ORIGIN, "printer3d")) == ErrorCode.EXPIRED_ACCESS_TOKEN


@pytest.mark.parametrize("missing", ["clientId", "scope", "applicationName"])
def test_access_token_missing_parameter_is_10(tmp_path: Path, missing: str) -> None:
    client = make_app(tmp_path).test_client()
    client_id = client.get("/gotapi/authorization/grant", headers=HEADERS).get_json()["clientId"]
    query = {"clientId": client_id, "scope": "printer3d", "applicationName": "app"}
    del query[missing]
    resp = client.get("/gotapi/authorization/accessToken", headers=HEADERS, query_string=query)
    body = resp.get_json()
    assert resp.status_code == 200
    assert body["result"] == 1 and body["errorCode"] == 10
    assert missing in body["errorMessage"]


def test_unknown_or_foreign_client_id_is_15(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    foreign = client.get("/gotapi/authorization/grant",
                         headers={"Origin": OTHER}).get_json()["clientId"]
    for client_id in ("0" * 32, foreign):
        body = client.get("/gotapi/authorization/accesstoken", headers=HEADERS,
                          query_string={"clientId": client_id, "scope": "printer3d",
                                        "applicationName": "app"}).get_json()
        assert body["errorCode"] == 15, body


def test_http_token_answer_shape(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    grant = client.get("/gotapi/Authorization/GRANT", headers=HEADERS).get_json()
    assert grant["result"] == 0 and grant["product"] == "gotapi-3dp" and "version" in grant
    body = client.get("/gotapi/authorization/accessToken", headers=HEADERS,
                      query_string={"clientId": grant["clientId"], "scope": "printer3d",
                                    "applicationName": "app"}).get_json()
    assert body["result"] == 0
    assert isinstance(body["accessToken"], str) and len(body["accessToken"]) >= 40
    assert isinstance(body["expire"], int) and body["expire"] > time.time() * 1000
    assert body["scopes"][0]["scope"] == "printer3d"


def test_token_survives_a_restart(tmp_path: Path) -> None:
    token = get_token(make_app(tmp_path).test_client(), scope="serviceDiscovery")
    client = make_app(tmp_path).test_client()  # a second app on the same data dir
    body = client.get("/gotapi/serviceDiscovery", headers=HEADERS,
                      query_string={"accessToken": token}).get_json()
    assert body["result"] == 0, body
    body = client.get("/gotapi/serviceDiscovery", headers=HEADERS,
                      query_string={"accessToken": token + "x"}).get_json()
    assert body["errorCode"] == 11


def test_check_cache_is_invalidated_by_revoke_expiry_and_age(tmp_path: Path,
                                                             monkeypatch) -> None:
    """A remembered token row is checked like a fresh one and never outlives the token."""
    import gotapi_server.auth as auth_mod

    now = [1_000_000.0]
    store = AuthStore(tmp_path, token_lifetime=60, clock=lambda: now[0])
    token, _, _ = store.access_token(ORIGIN, store.grant(ORIGIN), "printer3d", "app")
    store.check(token, ORIGIN, "printer3d")  # now remembered
    assert _code(lambda: store.check(token, OTHER, "printer3d")) == ErrorCode.AUTHORIZATION
    assert _code(lambda: store.check(token, ORIGIN, "light")) == ErrorCode.SCOPE
    store.revoke(token)
    assert _code(lambda: store.check(token, ORIGIN, "printer3d")) == ErrorCode.AUTHORIZATION

    token, _, _ = store.access_token(ORIGIN, store.grant(ORIGIN), "printer3d", "app")
    store.check(token, ORIGIN, "printer3d")
    now[0] += 61
    assert _code(lambda: store.check(token, ORIGIN, None)) == ErrorCode.EXPIRED_ACCESS_TOKEN

    # A row deleted by another process is refused once the remembered copy is CACHE_SECONDS old.
    now[0] = 1_000_000.0
    token, _, _ = store.access_token(ORIGIN, store.grant(ORIGIN), "printer3d", "app")
    store.check(token, ORIGIN, "printer3d")
    AuthStore(tmp_path, token_lifetime=60).revoke(token)
    store.check(token, ORIGIN, "printer3d")  # still remembered
    monkeypatch.setattr(auth_mod, "CACHE_SECONDS", 0.0)
    assert _code(lambda: store.check(token, ORIGIN, "printer3d")) == ErrorCode.AUTHORIZATION


def test_unknown_tokens_are_not_remembered_and_threads_share_nothing(tmp_path: Path) -> None:
    import threading

    store = AuthStore(tmp_path, token_lifetime=3600)
    token, _, _ = store.access_token(ORIGIN, store.grant(ORIGIN), "printer3d", "app")
    for i in range(50):
        assert _code(lambda i=i: store.check(f"guess-{i}", ORIGIN, None)) == ErrorCode.AUTHORIZATION
    assert len(store._grants) == 0
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(20):
                store.check(token, ORIGIN, "printer3d")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---- review: messages that say what is wrong ----

def test_scope_messages_name_the_actual_fault() -> None:
    from gotapi_server.auth import MAX_SCOPES, parse_scopes

    with pytest.raises(P3DError, match="not a profile name .*separated by commas"):
        parse_scopes("a b")
    with pytest.raises(P3DError, match=f"more than {MAX_SCOPES} profiles"):
        parse_scopes(",".join(f"p{i}" for i in range(MAX_SCOPES + 1)))


def test_an_application_name_with_control_characters_is_10(tmp_path: Path) -> None:
    store = AuthStore(tmp_path, token_lifetime=3600)
    client_id = store.grant("http://localhost")
    with pytest.raises(P3DError, match="control characters"):
        store.access_token("http://localhost", client_id, "printer3d", "app\x00name")
