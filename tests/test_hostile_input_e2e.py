"""Hostile input at the front door, through the live stack (gunicorn, Flask, Redis).

Every case must end in a 4xx in OpenAI's error envelope ``{"error": {"message",
"type", "param", "code"}}`` with an ``x-request-id`` — never a 5xx, an HTML page,
a stack trace or a request that hangs. Most cases are sent with raw ``requests``
or raw sockets (the official client cannot send malformed bodies or headers),
some through the official ``openai`` client. The simpler cases (n=0, n="2",
n=10**9, a few bad sizes, CR/LF in ``user``, top-level garbage JSON, a 17 MB
body with Content-Length, a 1 MB prompt for one model) are in
``test_errors_e2e.py`` and not repeated here.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
import requests
from openai import OpenAI

from shared.settings import Settings
from tests.conftest import create_key

TIMEOUT = 30  # no request here may take long; a hang fails instead of blocking the run
BASE = {"model": "local/testcard", "prompt": "a test card", "size": "32x32"}


def _post(gateway: str, key: str, body, headers: dict | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}", **(headers or {})}
    url = f"{gateway}/v1/images/generations"
    if isinstance(body, dict):
        return requests.post(url, json=body, headers=headers, timeout=TIMEOUT)
    headers.setdefault("Content-Type", "application/json")
    return requests.post(url, data=body, headers=headers, timeout=TIMEOUT)


def _error(resp: requests.Response, status: int) -> dict:
    """The envelope's ``error`` object, after checking status, shape and headers."""
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["Content-Type"].startswith("application/json"), resp.text[:500]
    assert resp.headers.get("x-request-id")
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    return error


def _raw(gateway: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes on a fresh connection; (status, headers, body) of the answer."""
    host, port = urlsplit(gateway).hostname, urlsplit(gateway).port
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _raw_request(key: str | bytes, extra_headers: bytes = b"", body: bytes | None = None) -> bytes:
    """A POST of ``body`` (default: a valid one) with ``key`` sent as is in the bearer header."""
    token = key if isinstance(key, bytes) else key.encode()
    body = json.dumps(BASE).encode() if body is None else body
    return (
        b"POST /v1/images/generations HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer " + token + b"\r\n"
        b"Content-Length: %d\r\n" % len(body) + extra_headers + b"\r\n" + body
    )


def _raw_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict:
    assert status == expected, body[:500]
    assert headers["content-type"].startswith("application/json"), body[:500]
    assert headers.get("x-request-id")
    error = json.loads(body)["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" or status == 401
    return error


@pytest.fixture(scope="module")
def web_log(gateway: str, run_dir: Path) -> Iterator[Path]:
    """The gateway's log; after the module, it must hold no traceback from these requests."""
    path = run_dir / f"web-{urlsplit(gateway).port}.log"
    start = path.stat().st_size
    yield path
    with path.open("rb") as fh:
        fh.seek(start)
        added = fh.read().decode(errors="replace")
    assert "Traceback" not in added and "unexpected error" not in added, added[-3000:]


@pytest.fixture(scope="module")
def max_body(stack_env: dict[str, str]) -> int:
    return Settings.from_env({**os.environ, **stack_env}).max_body_bytes


@pytest.fixture(autouse=True)
def _checks_the_log(web_log: Path) -> None:
    """Every test of the module takes part in the log check above."""


# -- n ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10**30, -(10**30), -1, 1.5, 2.0, True, False, [2], {"n": 2}])
def test_n_that_is_not_a_small_positive_integer_is_400(gateway: str, api_key: str, n) -> None:
    error = _error(_post(gateway, api_key, {**BASE, "n": n}), 400)
    assert error["param"] == "n"
    assert error["code"] == "invalid_value"


@pytest.mark.parametrize("literal", [b"1e9", b"1e400", b"NaN", b"Infinity", b"9" * 5000, b"0x10"])
def test_n_as_a_float_or_out_of_range_literal_is_400(
    gateway: str, api_key: str, literal: bytes
) -> None:
    body = b'{"model": "local/testcard", "prompt": "x", "n": ' + literal + b"}"
    error = _error(_post(gateway, api_key, body), 400)
    assert error["code"] in ("invalid_value", "invalid_json")


def test_n_through_the_official_client(client: OpenAI) -> None:
    for n in (10**30, -1, 0):
        with pytest.raises(openai.BadRequestError) as info:
            client.images.generate(model="local/testcard", prompt="x", n=n)
        assert info.value.body["param"] == "n"


# -- size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        "０x０",  # full-width digits: str.isdigit() says yes, int() would even parse them
        "３２x３２",
        "256x256\n",
        "256x256\r\n",
        " 256x256",
        "256x256 ",
        "256 x 256",
        "32X32",
        "32×32",
        "0x0",
        "0x256",
        "+32x+32",
        "00032x00032",
        "32.0x32.0",
        "0x20x0x20",
        "256x256x256",
        "x",
        "",
        "1" * 40 + "x1",
        "99999999999999999999x1",
        "\x00x\x00",
    ],
)
def test_malformed_sizes_are_400_naming_size(gateway: str, api_key: str, size: str) -> None:
    error = _error(_post(gateway, api_key, {**BASE, "size": size}), 400)
    assert error["param"] == "size"
    assert error["code"] in ("invalid_size", "invalid_value")


@pytest.mark.parametrize("size", [256, 256.0, ["256x256"], {"w": 256}, True])
def test_a_size_that_is_not_a_string_is_400(gateway: str, api_key: str, size) -> None:
    error = _error(_post(gateway, api_key, {**BASE, "size": size}), 400)
    assert error["param"] == "size"


def test_full_width_size_through_the_official_client(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="local/testcard", prompt="x", size="５１２x５１２")  # type: ignore[arg-type]
    assert info.value.body["param"] == "size"


# -- deeply nested and malformed JSON ----------------------------------------------


DEPTH = 100_000


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "local/testcard", "prompt": ' + b"[" * DEPTH + b"]" * DEPTH + b"}",
        b'{"model": "local/testcard", "prompt": "x", "user": '
        + b'{"a": ' * DEPTH
        + b"1"
        + b"}" * DEPTH
        + b"}",
        b'{"model": "local/testcard", "prompt": "x", "extra": ' + b"[{" * DEPTH + b"}]" * DEPTH,
        b'{"model": "local/testcard", "prompt": "x", "n": ' + b"[" * DEPTH,  # never closed
    ],
    ids=["arrays-in-prompt", "objects-in-user", "mixed-in-unknown-field", "unclosed"],
)
def test_deeply_nested_json_inside_a_field_is_400(gateway: str, api_key: str, body: bytes) -> None:
    error = _error(_post(gateway, api_key, body), 400)
    # json_too_complex: refused before parsing, for its 100,000 brackets.
    assert error["code"] in (
        "invalid_json",
        "invalid_value",
        "unknown_parameter",
        "json_too_complex",
    )


def test_shallow_nesting_in_a_field_is_400_naming_it(gateway: str, api_key: str) -> None:
    body = {**BASE, "prompt": [[["x"]]]}
    error = _error(_post(gateway, api_key, body), 400)
    assert error["param"] == "prompt"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "local/testcard", "prompt": "\xff\xfe"}',  # invalid bytes in a string
        b'{"model": "local/testcard", "prompt": "\xc0\xaf"}',  # overlong encoding of "/"
        b'{"model": "local/testcard", "prompt": "\xe2\x82"}',  # truncated sequence
        b'{"model": "local/testcard", "prompt": "\xed\xa0\x80"}',  # UTF-8 of a surrogate
        b'{"model": "local/testcard", "prompt": "\\ud800"}',  # lone surrogate escape
        b'{"model": "local/testcard", "prompt": "x", "\xff": 1}',  # invalid bytes in a key
        b'{"model": "local/testcard", "prompt": "x"}\xff',  # after the document
        b"\xef\xbb\xbf" + json.dumps(BASE).encode(),  # UTF-8 byte order mark
    ],
    ids=[
        "invalid",
        "overlong",
        "truncated",
        "surrogate",
        "lone-escape",
        "in-key",
        "trailing",
        "bom",
    ],
)
def test_invalid_utf8_is_400_invalid_json(gateway: str, api_key: str, body: bytes) -> None:
    error = _error(_post(gateway, api_key, body), 400)
    assert error["code"] == "invalid_json"


def test_utf16_json_is_400_not_a_decoding_crash(gateway: str, api_key: str) -> None:
    body = json.dumps(BASE).encode("utf-16")
    resp = _post(gateway, api_key, body, {"Content-Type": "application/json; charset=utf-16"})
    assert _error(resp, 400)["code"] == "invalid_json"


# -- duplicated and unknown keys -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "local/testcard", "prompt": "a cat", "prompt": "a dog"}', "prompt"),
        (b'{"model": "local/testcard", "model": "dall-e-3", "prompt": "x"}', "model"),
        (b'{"model": "local/testcard", "prompt": "x", "size": "32x32", "size": "64x64"}', "size"),
        (b'{"model": "local/testcard", "prompt": "x", "n": 1, "n": 1}', "n"),
    ],
)
def test_a_key_given_twice_is_400_naming_it(
    gateway: str, api_key: str, body: bytes, param: str
) -> None:
    # Parsers disagree on which value wins; the gateway refuses to guess.
    error = _error(_post(gateway, api_key, body), 400)
    assert error["param"] == param
    assert error["code"] == "duplicate_parameter"


@pytest.mark.parametrize("name", ["Prompt", "prompt ", "__proto__", "constructor", "\u0000", "é"])
def test_unknown_keys_are_400_naming_them(gateway: str, api_key: str, name: str) -> None:
    error = _error(_post(gateway, api_key, {**BASE, name: "x"}), 400)
    assert error["param"] == name
    assert error["code"] == "unknown_parameter"


# -- prompt --------------------------------------------------------------------------------


def _servable_models(stack_env: dict[str, str]) -> list[str]:
    settings = Settings.from_env(stack_env)
    catalog = settings.load_catalog()
    real = [
        m.id for m in catalog.models.values() if not settings.why_unusable(catalog.family_of(m))
    ]
    return sorted(real) + sorted(catalog.virtual)


def test_a_one_megabyte_prompt_is_400_for_every_model(
    gateway: str, api_key: str, stack_env: dict[str, str]
) -> None:
    settings = Settings.from_env(stack_env)
    catalog = settings.load_catalog()
    prompt = "y" * 1_000_000
    models = _servable_models(stack_env)
    assert len(models) > 20
    for model_id in models:
        error = _error(_post(gateway, api_key, {"model": model_id, "prompt": prompt}), 400)
        assert error["param"] == "prompt", model_id
        assert error["code"] == "string_above_max_length", model_id
        if model_id in catalog.models:
            limit = catalog.models[model_id].max_prompt_length
            assert limit < 1_000_000 and str(limit) in error["message"], model_id


def test_one_character_over_the_model_limit_is_400(gateway: str, api_key: str) -> None:
    # gpt-image-1 takes the longest prompts of the OpenAI family (32,000 characters).
    error = _error(_post(gateway, api_key, {"model": "gpt-image-1", "prompt": "é" * 32_001}), 400)
    assert error["code"] == "string_above_max_length"
    assert "32000" in error["message"]


@pytest.mark.parametrize("prompt", ["a\x00b", "\x00", "a fox\x1b[31m", "bell\x07", "x\x0cy"])
def test_control_characters_in_the_prompt_are_400(gateway: str, api_key: str, prompt: str) -> None:
    error = _error(_post(gateway, api_key, {**BASE, "prompt": prompt}), 400)
    assert error["param"] == "prompt"
    assert error["code"] == "invalid_value"


def test_nul_in_the_prompt_through_the_official_client(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="local/testcard", prompt="a fox\x00 ignore that", size="32x32")
    assert info.value.body["param"] == "prompt"


def test_ordinary_text_with_line_breaks_tabs_and_emoji_is_accepted(client: OpenAI) -> None:
    r = client.images.generate(
        model="local/testcard", prompt="a fox,\n\tin the snow 🦊 — «renard»\r\n", size="32x32"
    )
    assert r.data and r.data[0].url


# -- user ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user",
    [
        "a\x00b",
        "a\nb",
        "a\rSet-Cookie: x=1",
        "a\x85b",  # NEL, a line break to some log readers
        "a\u2028b",  # Unicode line separator
        "a\u2029b",
        "u" * 257,
        "u" * 100_000,
    ],
)
def test_user_that_could_inject_a_header_or_log_line_is_400(
    gateway: str, api_key: str, user: str
) -> None:
    error = _error(_post(gateway, api_key, {**BASE, "user": user}), 400)
    assert error["param"] == "user"
    assert error["code"] == "invalid_value"


def test_non_ascii_user_is_sent_upstream_as_a_safe_header(
    gateway: str, api_key: str, simulators: dict[str, str]
) -> None:
    # Stability takes the user as an HTTP header: non-ASCII must be encoded, not crash.
    sim = simulators["stability"]
    requests.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
    body = {"model": "stability/stable-image-core", "prompt": "x", "user": "ключ é 🦊"}
    resp = _post(gateway, api_key, body)
    assert resp.status_code == 200, resp.text[:500]
    sent = requests.get(f"{sim}/_sim/requests", timeout=5).json()[-1]["headers"]
    header = {k.lower(): v for k, v in sent.items()}["stability-client-user-id"]
    assert header.isascii() and "\r" not in header and "\n" not in header


# -- headers: Idempotency-Key and Authorization --------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a\tb", "k" * 256, "k" * 8000, "ключ".encode().decode("latin-1")],
    ids=["tab", "256", "8000", "non-ascii"],
)
def test_bad_idempotency_keys_are_400(gateway: str, api_key: str, value: str) -> None:
    resp = _post(gateway, api_key, BASE, {"Idempotency-Key": value})
    assert _error(resp, 400)["code"] == "invalid_idempotency_key"


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rX-Injected: 1", b"a\x0bb", b"a\x7fb"])
def test_control_bytes_in_headers_are_400_in_the_envelope(
    gateway: str, api_key: str, value: bytes
) -> None:
    # These never reach Flask: gunicorn refuses them, in the API's envelope.
    for header in (b"Idempotency-Key", b"User-Agent", b"X-Request-Id"):
        answer = _raw(gateway, _raw_request(api_key, header + b": " + value + b"\r\n"))
        _raw_error(*answer, 400)


@pytest.mark.parametrize(
    "token",
    [
        b"ig-\x00" + b"a" * 40,
        b"ig-abc\rX-Injected: 1",
        b"ig-abc\x7f",
    ],
    ids=["nul", "cr", "del"],
)
def test_control_bytes_in_the_authorization_header_are_4xx_in_the_envelope(
    gateway: str, token: bytes
) -> None:
    status, headers, body = _raw(gateway, _raw_request(token))
    assert status in (400, 401), body
    _raw_error(status, headers, body, status)
    assert b"ig-abc" not in body and b"aaaa" not in body


def test_non_ascii_authorization_is_401_and_not_echoed(gateway: str) -> None:
    token = "ig-ключ-🔑"
    resp = requests.get(
        f"{gateway}/v1/models",
        headers={"Authorization": "Bearer " + token.encode().decode("latin-1")},
        timeout=TIMEOUT,
    )
    error = _error(resp, 401)
    assert error["type"] == "authentication_error"
    assert "ig-" not in resp.text


def test_long_authorization_is_401_and_a_huge_one_431_in_the_envelope(gateway: str) -> None:
    resp = _post(gateway, "ig-" + "a" * 7000, BASE)
    assert _error(resp, 401)["code"] == "invalid_api_key"
    assert "aaaa" not in resp.text
    resp = _post(gateway, "ig-" + "a" * 20_000, BASE)
    error = _error(resp, 431)
    assert error["code"] == "request_header_too_large"
    assert "aaaa" not in resp.text


@pytest.mark.parametrize(
    "header", ["Basic Zm9vOmJhcg==", "Bearer", "Bearer ", "bearer", "Token ig-x", "ig-x"]
)
def test_authorization_without_a_bearer_key_is_401(gateway: str, header: str) -> None:
    resp = requests.post(
        f"{gateway}/v1/images/generations",
        json=BASE,
        headers={"Authorization": header},
        timeout=TIMEOUT,
    )
    assert _error(resp, 401)["type"] == "authentication_error"


def test_a_forged_request_id_is_not_reflected(gateway: str, api_key: str) -> None:
    resp = requests.get(
        f"{gateway}/v1/models",
        headers={"Authorization": f"Bearer {api_key}", "x-request-id": "<script>" + "r" * 300},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 200
    assert resp.headers["x-request-id"].startswith("req_")


# -- content type ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/jsonx", "application/x-json", "text/json", "*/*"],
)
def test_a_body_not_declared_as_json_is_400(
    gateway: str, api_key: str, content_type: str | None
) -> None:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": content_type}
    resp = requests.post(
        f"{gateway}/v1/images/generations",
        data=json.dumps(BASE),
        headers=headers,
        timeout=TIMEOUT,
    )
    assert _error(resp, 400)["code"] == "unsupported_content_type"


def test_multipart_is_400(gateway: str, api_key: str) -> None:
    resp = requests.post(
        f"{gateway}/v1/images/generations",
        files={"prompt": (None, "x"), "model": (None, "local/testcard")},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=TIMEOUT,
    )
    assert _error(resp, 400)["code"] == "unsupported_content_type"


def test_json_with_a_charset_parameter_is_accepted(gateway: str, api_key: str) -> None:
    resp = _post(
        gateway, api_key, json.dumps(BASE), {"Content-Type": "application/json; charset=utf-8"}
    )
    assert resp.status_code == 200, resp.text[:500]


# -- huge and malformed bodies ----------------------------------------------------------------


def _chunks(total: int, piece: int = 1024 * 1024) -> Iterator[bytes]:
    """A JSON body of about ``total`` bytes, streamed (chunked, no Content-Length)."""
    yield b'{"model": "local/testcard", "prompt": "'
    sent = 0
    while sent < total:
        size = min(piece, total - sent)
        yield b"y" * size
        sent += size
    yield b'"}'


def test_a_chunked_body_above_the_limit_is_413_not_silently_cut(
    gateway: str, api_key: str, max_body: int
) -> None:
    # werkzeug reads a body without Content-Length up to the limit and stops there;
    # without the gateway's check this was a 400 about JSON that ended early.
    resp = _post(gateway, api_key, _chunks(max_body + 4 * 1024 * 1024))
    assert "Content-Length" not in resp.request.headers
    assert _error(resp, 413)["code"] == "request_too_large"


def test_a_chunked_body_of_exactly_the_limit_is_not_413(
    gateway: str, api_key: str, max_body: int
) -> None:
    overhead = len(b'{"model": "local/testcard", "prompt": "') + len(b'"}')
    resp = _post(gateway, api_key, _chunks(max_body - overhead))
    assert _error(resp, 400)["param"] == "prompt"  # read whole, then too long a prompt


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_multi_megabyte_body_under_the_limit_is_400_on_the_prompt(
    gateway: str, api_key: str, chunked: bool
) -> None:
    size = 5 * 1024 * 1024
    body = _chunks(size) if chunked else b"".join(_chunks(size))
    error = _error(_post(gateway, api_key, body), 400)
    assert error["param"] == "prompt"
    assert error["code"] == "string_above_max_length"


def test_a_huge_announced_content_length_is_413_at_once(gateway: str, api_key: str) -> None:
    # The body is never sent: the gateway must answer from the header, not wait for it.
    request = _raw_request(api_key, body=b"").replace(
        b"Content-Length: 0\r\n", b"Content-Length: 1000000000000\r\n"
    )
    error = _raw_error(*_raw(gateway, request), 413)
    assert error["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("extra", "body"),
    [
        (b"Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),  # chunk size not hex
        (b"Transfer-Encoding: chunked\r\n", b"2\r\n{}XX0\r\n\r\n"),  # missing CRLF after data
        (b"Transfer-Encoding: chunked\r\n", b"2;\x00=1\r\n{}\r\n0\r\n\r\n"),  # bad extension
    ],
    ids=["chunk-size", "chunk-terminator", "chunk-extension"],
)
def test_malformed_chunked_encoding_is_400_not_500(
    gateway: str, api_key: str, extra: bytes, body: bytes
) -> None:
    request = (
        b"POST /v1/images/generations HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer " + api_key.encode() + b"\r\n"
        + extra + b"\r\n" + body
    )  # fmt: skip
    error = _raw_error(*_raw(gateway, request), 400)
    assert error["code"] == "malformed_http_request"


@pytest.mark.parametrize(
    "extra",
    [
        b"Content-Length: -1\r\n",
        b"Content-Length: abc\r\n",
        b"Content-Length: 5\r\n",  # a second, different Content-Length
        b"Transfer-Encoding: chunked\r\n",  # both framings at once (request smuggling)
        b"X-Folded: a\r\n  continued\r\n",  # obsolete line folding
        b"Bad Header Name: x\r\n",
    ],
)
def test_malformed_framing_headers_are_400_in_the_envelope(
    gateway: str, api_key: str, extra: bytes
) -> None:
    _raw_error(*_raw(gateway, _raw_request(api_key, extra)), 400)


def test_a_request_line_too_long_is_414_in_the_envelope(gateway: str) -> None:
    resp = requests.get(f"{gateway}/v1/images/generations/imgjob_" + "a" * 10_000, timeout=30)
    assert _error(resp, 414)["code"] == "request_line_too_large"


# -- the Host header ---------------------------------------------------------------------


def test_a_forged_host_header_never_decides_image_urls(gateway: str, api_key: str) -> None:
    # The stack sets no IMAGEGATE_PUBLIC_BASE_URL: URLs come from the listen address.
    resp = _post(
        gateway,
        api_key,
        {"model": "local/testcard", "prompt": "x", "size": "32x32", "response_format": "url"},
        headers={"Host": "evil.example"},
    )
    assert resp.status_code == 200, resp.text
    url = resp.json()["data"][0]["url"]
    assert urlsplit(url).netloc == urlsplit(gateway).netloc, url
    assert requests.get(url, timeout=10).status_code == 200


# ("//v1/models" never reaches the app as such: gunicorn reads "//v1" as an authority.)
@pytest.mark.parametrize("path", ["/v1//models", "/v1/images//generations/x", "//evil.example/x"])
def test_double_slashes_are_404_json_not_a_redirect(gateway: str, api_key: str, path) -> None:
    resp = requests.get(
        f"{gateway}{path}",
        headers={"Authorization": f"Bearer {api_key}", "Host": "evil.example"},
        allow_redirects=False,
        timeout=10,
    )
    assert "Location" not in resp.headers
    assert _error(resp, 404)["type"] == "not_found_error"


def test_there_is_no_static_route(gateway: str) -> None:
    # Flask's default /static/ route served files of the working directory's static/.
    folder = Path(__file__).resolve().parents[1] / "static"
    folder.mkdir(exist_ok=False)
    try:
        (folder / "probe.txt").write_text("not for everyone")
        resp = requests.get(f"{gateway}/static/probe.txt", allow_redirects=False, timeout=10)
    finally:
        (folder / "probe.txt").unlink(missing_ok=True)
        folder.rmdir()
    assert _error(resp, 404)["type"] == "not_found_error"


@pytest.mark.parametrize("prompt", ["\u200b\u200c\u200d", "\ufeff \u2060", " \u200b\n"])
def test_a_prompt_of_only_invisible_characters_is_blank(
    gateway: str, api_key: str, prompt: str
) -> None:
    error = _error(_post(gateway, api_key, {**BASE, "prompt": prompt}), 400)
    assert error["param"] == "prompt"


def test_a_compressed_body_is_refused_not_read_as_plain(gateway: str, api_key: str) -> None:
    body = gzip.compress(json.dumps(BASE).encode())
    resp = _post(gateway, api_key, body, headers={"Content-Encoding": "gzip"})
    assert _error(resp, 400)["code"] == "unsupported_content_encoding"
    # Declared gzip but sent plain: the same, the body is not taken as it comes.
    plain = _post(gateway, api_key, json.dumps(BASE).encode(), {"Content-Encoding": "gzip"})
    assert _error(plain, 400)["code"] == "unsupported_content_encoding"


# -- parse cost ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    [b'{"model": "local/testcard", "prompt": "x"', b'{"image": "data:image/png;base64,AAAA"'],
    ids=["plain", "behind-a-data-url"],
)
def test_a_body_of_a_million_duplicate_keys_is_refused_before_it_is_parsed(
    gateway: str, api_key: str, prefix: bytes
) -> None:
    # 10 MB of ', "n": 1': parsed whole (0.3 s of the event loop for 7.5 MB), and
    # only then refused as a duplicate.
    body = prefix + b', "n": 1' * 1_250_000 + b"}"
    error = _error(_post(gateway, api_key, body), 400)
    assert error["code"] == "json_too_complex"


# -- inline reference images (data: URLs) ----------------------------------------------------

KONTEXT = "black-forest-labs/flux.1-kontext-max"  # takes a reference image
ASYNC = {"Prefer": "respond-async"}  # admitted jobs answer 202 at once, refused ones 4xx


@pytest.mark.parametrize(
    "image",
    [
        "data:text/plain;base64," + base64.b64encode(b"not an image at all " * 5000).decode(),
        "data:image/png;base64," + base64.b64encode(b"not an image at all " * 5000).decode(),
        "data:," + "not%20an%20image" * 1000,
        "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7",
        "data:image/png;base64,@@@@",
    ],
    ids=["text-plain", "text-labelled-png", "no-type", "gif", "bad-base64"],
)
def test_an_inline_image_that_is_not_png_jpeg_or_webp_is_400_naming_image(
    gateway: str, api_key: str, image: str
) -> None:
    # It was accepted and kept whole in Redis (a 15 MiB text/plain one too).
    resp = _post(gateway, api_key, {"model": KONTEXT, "prompt": "x", "image": image}, ASYNC)
    error = _error(resp, 400)
    assert error["param"] == "image" and error["code"] == "invalid_image"
    assert "x-job-id" not in resp.headers  # no job, nothing charged


def test_an_inline_image_above_the_limit_is_413_naming_image(
    gateway: str, api_key: str, stack_env: dict[str, str], max_body: int
) -> None:
    limit = Settings.from_env({**os.environ, **stack_env}).max_reference_image_bytes
    image = "data:image/png;base64," + base64.b64encode(b"\0" * (limit + 1)).decode()
    assert len(image) < max_body  # the body fits; the image does not
    resp = _post(gateway, api_key, {"model": KONTEXT, "prompt": "x", "image": image}, ASYNC)
    error = _error(resp, 413)
    assert error["param"] == "image" and error["code"] == "image_too_large"
    assert "x-job-id" not in resp.headers


# -- parse work counts against a per-key limit (api/parse_limit.py) ------------------------


def test_many_large_bodies_from_one_key_get_429_while_another_key_is_served(
    gateway: str, start_gateway, stack_env: dict[str, str]
) -> None:
    # Parsed at most 256 KiB a second per key, from a bucket of eight 64 KiB bodies.
    url = start_gateway(
        "web-parse-limit",
        IMAGEGATE_PARSE_BYTES_PER_SECOND=str(256 * 1024),
        IMAGEGATE_MAX_BODY_BYTES=str(64 * 1024),
    )
    greedy = create_key(stack_env, "parse-greedy")["key"]
    other = create_key(stack_env, "parse-other")["key"]
    # Passes the cheap checks, is parsed, and is refused after: the prompt is too long.
    large = json.dumps({"model": "local/testcard", "prompt": "p" * 60_000})
    answers = [_post(url, greedy, large) for _ in range(30)]
    statuses = [r.status_code for r in answers]
    assert statuses[0] == 400 and set(statuses) == {400, 429}, statuses
    for refused in (r for r in answers if r.status_code == 429):
        error = _error(refused, 429)
        assert error["type"] == "rate_limit_error" and error["limit"] == "request_body_bytes"
        assert int(refused.headers["Retry-After"]) >= 1
    # The other key's request is parsed and admitted as usual.
    assert _post(url, other, BASE, {"Prefer": "respond-async"}).status_code == 202
