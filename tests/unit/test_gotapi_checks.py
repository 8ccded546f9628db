"""GotAPI-1 request checks: Host, Origin, CORS, methods, URL grammar, parameters, errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from gotapi_server.paths import normalize_path

from .gotapi_fakes import HEADERS, ORIGIN, get_token, make_app, printer_bus

PRINT_STATUS = "/gotapi/printer3d/status"


def test_availability_needs_no_token_and_has_common_fields(tmp_path: Path) -> None:
    resp = make_app(tmp_path).test_client().get("/gotapi/availability", headers=HEADERS)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert resp.get_json() == {"result": 0, "product": "gotapi-3dp", "version": "0.1.0"}


@pytest.mark.parametrize("host", ["evil.example", "evil.example:4035", "127.0.0.2:4035",
                                  "localhost.evil.example", ""])
def test_foreign_host_header_is_421(tmp_path: Path, host: str) -> None:
    resp = make_app(tmp_path).test_client().get(
        "/gotapi/availability", headers={**HEADERS, "Host": host})
    assert resp.status_code == 421
    assert resp.get_json()["errorCode"] == 1000
    assert "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:4035", "localhost:4035",
                                  "LOCALHOST", "[::1]:4035"])
def test_loopback_host_header_is_accepted(tmp_path: Path, host: str) -> None:
    resp = make_app(tmp_path).test_client().get(
        "/gotapi/availability", headers={**HEADERS, "Host": host})
    assert resp.get_json()["result"] == 0


@pytest.mark.parametrize("headers", [
    {},                                                     # missing
    [("Origin", ORIGIN), ("Origin", "http://b.example")],   # header given twice
    {"Origin": "http://a.example http://b.example"},        # several values
    {"Origin": "http://a.example,http://b.example"},
    {"Origin": "null"},                                     # file:// or sandboxed frame
    {"Origin": ORIGIN, "X-GotAPI-Origin": "com.example.app"},  # a page speaking for an app
], ids=["missing", "twice", "space", "comma", "null", "mismatch"])
def test_bad_origin_is_18(tmp_path: Path, headers) -> None:
    resp = make_app(tmp_path).test_client().get("/gotapi/availability", headers=headers)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["result"] == 1 and body["errorCode"] == 18


def test_missing_origin_message(tmp_path: Path) -> None:
    body = make_app(tmp_path).test_client().get("/gotapi/availability").get_json()
    assert body["errorMessage"] == "Origin is not specified."


def test_allow_list(tmp_path: Path) -> None:
    client = make_app(tmp_path, allowed_origins=[ORIGIN, "com.example.app"]).test_client()
    assert client.get("/gotapi/availability", headers=HEADERS).get_json()["result"] == 0
    native = client.get("/gotapi/availability", headers={"X-GotAPI-Origin": "com.example.app"})
    assert native.get_json()["result"] == 0
    assert "Access-Control-Allow-Origin" not in native.headers
    other = client.get("/gotapi/availability", headers={"Origin": "http://evil.example"})
    assert other.get_json()["errorCode"] == 18
    assert "Access-Control-Allow-Origin" not in other.headers


def test_cors_preflight(tmp_path: Path) -> None:
    client = make_app(tmp_path, allowed_origins=[ORIGIN]).test_client()
    request = {"Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "content-type",
               "Access-Control-Request-Private-Network": "true"}
    resp = client.options("/gotapi/printer3d/connect", headers={**request, **HEADERS})
    assert resp.status_code == 204
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Private-Network" not in resp.headers
    evil = client.options("/gotapi/printer3d/connect",
                          headers={**request, "Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in evil.headers
    assert evil.get_json()["errorCode"] == 18


def test_cors_header_on_allowed_browser_answers_even_errors(tmp_path: Path) -> None:
    resp = make_app(tmp_path).test_client().get(PRINT_STATUS, headers=HEADERS)
    assert resp.get_json()["errorCode"] == 13
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert resp.headers["Access-Control-Allow-Origin"] != "*"


@pytest.mark.parametrize("method", ["PATCH", "HEAD", "TRACE"])
def test_other_methods_are_3(tmp_path: Path, method: str) -> None:
    resp = make_app(tmp_path).test_client().open(PRINT_STATUS, method=method, headers=HEADERS)
    if method != "HEAD":
        assert resp.get_json()["errorCode"] == 3
    assert resp.status_code == 200


def test_post_to_a_system_profile_is_3(tmp_path: Path) -> None:
    body = make_app(tmp_path).test_client().post("/gotapi/availability",
                                                 headers=HEADERS).get_json()
    assert body["errorCode"] == 3


@pytest.mark.parametrize("path", ["/gotapi", "/gotapi/", "/gotapi//status",
                                  "/gotapi/printer3d/a/b/c", "/gotapi/printer3d/x/y/z/w"])
def test_invalid_urls_are_19(tmp_path: Path, path: str) -> None:
    resp = make_app(tmp_path).test_client().get(path, headers=HEADERS)
    assert resp.status_code == 200
    assert resp.get_json()["errorCode"] == 19


def test_unknown_path_outside_gotapi_is_404(tmp_path: Path) -> None:
    for headers in (HEADERS, {}):
        resp = make_app(tmp_path).test_client().get("/index.html", headers=headers)
        assert resp.status_code == 404
        assert resp.get_json()["errorCode"] == 19


def test_profile_names_are_case_insensitive() -> None:
    assert normalize_path("/gotapi/serviceDiscovery") == "/gotapi/servicediscovery"
    assert normalize_path("/gotapi/Printer3D/onJobChange") == "/gotapi/printer3d/onJobChange"
    assert normalize_path("/other/Path") == "/other/Path"


def test_body_too_large_is_1003(tmp_path: Path) -> None:
    client = make_app(tmp_path, max_body_bytes=1024).test_client()
    resp = client.post("/gotapi/printer3d/connect", headers=HEADERS,
                       data={"serviceId": "x", "pad": "a" * 4096})
    assert resp.status_code == 413
    assert resp.get_json()["errorCode"] == 1003


def _forwarded(tmp_path: Path, send) -> dict:
    bus = printer_bus()
    client = make_app(tmp_path, bus=bus).test_client()
    token = get_token(client)
    body = send(client, token).get_json()
    assert body["result"] == 0, body
    return body["echo"]


def test_form_body_merges_over_query(tmp_path: Path) -> None:
    echo = _forwarded(tmp_path, lambda c, t: c.post(
        "/gotapi/printer3d/connect?contentId=fromquery&extra=1", headers=HEADERS,
        data={"serviceId": "printer-1.printer3d", "accessToken": t, "contentId": "c1"}))
    assert echo == {"contentId": "c1", "extra": "1"}


def test_multipart_fields_are_parameters(tmp_path: Path) -> None:
    echo = _forwarded(tmp_path, lambda c, t: c.post(
        "/gotapi/printer3d/connect", headers=HEADERS, content_type="multipart/form-data",
        data={"serviceId": "printer-1.printer3d", "accessToken": t, "contentId": "c1"}))
    assert echo == {"contentId": "c1"}


def test_json_body(tmp_path: Path) -> None:
    echo = _forwarded(tmp_path, lambda c, t: c.put(
        "/gotapi/printer3d/pause", headers=HEADERS,
        json={"serviceId": "printer-1.printer3d", "accessToken": t, "jobId": "j",
              "n": 3, "flags": [True]}))
    assert echo == {"jobId": "j", "n": 3, "flags": [True]}


def test_delete_with_empty_form_body(tmp_path: Path) -> None:
    echo = _forwarded(tmp_path, lambda c, t: c.delete(
        f"/gotapi/printer3d/job?serviceId=printer-1.printer3d&accessToken={t}&jobId=j",
        headers=HEADERS, content_type="application/x-www-form-urlencoded", data=b""))
    assert echo == {"jobId": "j"}


@pytest.mark.parametrize("raw", [b"[1, 2]", b"\"text\"", b"{not json",
                                 b'{"a":' * 20 + b"1" + b"}" * 20, b"[" * 100_000])
def test_json_body_not_an_object_is_10(tmp_path: Path, raw: bytes) -> None:
    client = make_app(tmp_path, bus=printer_bus()).test_client()
    token = get_token(client)
    resp = client.post(f"/gotapi/printer3d/connect?accessToken={token}"
                       "&serviceId=printer-1.printer3d",
                       headers=HEADERS, data=raw, content_type="application/json")
    assert resp.get_json()["errorCode"] == 10


def test_unexpected_error_is_1_without_traceback(tmp_path: Path) -> None:
    def boom(intent):
        raise RuntimeError("secret internals")
    client = make_app(tmp_path, bus=printer_bus(boom)).test_client()
    token = get_token(client)
    resp = client.get(PRINT_STATUS, headers=HEADERS,
                      query_string={"accessToken": token, "serviceId": "printer-1.printer3d"})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["errorCode"] == 1
    assert "secret" not in resp.get_data(as_text=True)
    assert "Traceback" not in resp.get_data(as_text=True)


def test_an_empty_origin_header_is_not_specified(tmp_path: Path) -> None:
    body = make_app(tmp_path).test_client().get("/gotapi/availability",
                                                headers={"Origin": ""}).get_json()
    assert body["errorCode"] == 18 and body["errorMessage"] == "Origin is not specified."


def test_an_empty_idempotency_key_header_is_10_not_ignored(tmp_path: Path) -> None:
    bus = printer_bus(lambda i: i.response({"jobId": "j"}))
    client = make_app(tmp_path, bus=bus).test_client()
    token = get_token(client)
    body = client.post("/gotapi/printer3d/print", headers={**HEADERS, "Idempotency-Key": ""},
                       data={"serviceId": "printer-1.printer3d", "accessToken": token,
                             "connectionId": "c"}).get_json()
    assert body["errorCode"] == 10 and "idempotencyKey" in body["errorMessage"], body
    assert not [i for i, _, _ in bus.sent if i.profile == "printer3d"]


def test_a_form_body_that_is_not_utf8_is_10_not_a_missing_token(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    token = get_token(client)
    body = client.post("/gotapi/printer3d/connect", headers=HEADERS,
                       content_type="application/x-www-form-urlencoded",
                       data=(f"serviceId=printer-1.printer3d&accessToken={token}"
                             "&contentId=ab&contentsKey=\xff").encode("latin-1")).get_json()
    assert body["errorCode"] == 10 and body["errorMessage"] == "Body is not valid UTF-8.", body


# ---- review: a plug-in's Swagger document cannot freeze the server ----

def _doc(**spec) -> dict:
    return {"paths": {"/echo": {"get": {"parameters": [{"name": "word", "in": "query",
                                                         "type": "string", **spec}]}}}}


def test_a_catastrophic_pattern_answers_at_once() -> None:
    """`^(a+)+$` on 32 a's and a `!` is minutes of backtracking in Python's `re` (5.6 s at
    27); RE2 answers in linear time, so this returns."""
    from gotapi3dp.wire.errors import P3DError
    from gotapi_server.apispec import check_request

    doc = _doc(pattern="^(a+)+$")
    with pytest.raises(P3DError) as refused:
        check_request(doc, "GET", None, "echo", {"word": "a" * 32 + "!"})
    assert refused.value.code == 10 and "word has an invalid format" in refused.value.message
    check_request(doc, "GET", None, "echo", {"word": "a" * 32})


def test_a_closing_dollar_is_the_end_of_the_value() -> None:
    from gotapi3dp.wire.errors import P3DError
    from gotapi_server.apispec import check_request

    doc = _doc(pattern="^[0-9a-f]{4}$")
    check_request(doc, "GET", None, "echo", {"word": "beef"})
    with pytest.raises(P3DError):
        check_request(doc, "GET", None, "echo", {"word": "beef\n"})


@pytest.mark.parametrize("spec,why", [
    ({"pattern": r"(a)\1"}, "is not usable"),            # a backreference: not RE2
    ({"pattern": "(?=a)a"}, "is not usable"),            # lookahead
    ({"pattern": "(unclosed"}, "is not usable"),
    ({"pattern": 5}, "pattern must be a string"),
    ({"maxLength": "ten"}, "maxLength must be a non-negative integer"),
    ({"minLength": -1}, "minLength must be a non-negative integer"),
    ({"minimum": "x"}, "minimum must be a number"),
    ({"enum": "ab"}, "enum must be a list"),
])
def test_a_document_the_checks_cannot_apply_is_refused(spec: dict, why: str) -> None:
    from gotapi_server.apispec import check_document

    with pytest.raises(ValueError, match=why):
        check_document(_doc(**spec))


def test_an_over_long_origin_says_so(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    body = client.get("/gotapi/availability", headers={"X-GotAPI-Origin": "a" * 300}).get_json()
    assert body["errorCode"] == 18 and "longer than 255" in body["errorMessage"]
