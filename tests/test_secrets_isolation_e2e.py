"""Secrets and isolation, through the live stack.

* **API keys** are looked up by their SHA-256 digest (``ig:apikey:<digest>``):
  Redis finds the record or not, so no secret is compared in Python and the
  time taken does not depend on how much of a guess was right. Neither the key
  nor its digest may appear in any log line (gunicorn access log, app logs,
  worker logs), in an error body, or (the plaintext) in Redis — also for a
  *wrong* key.
* **Upstream keys** (the stack gives every family ``SIM_KEY``) never reach a
  client, a log or a job record, also when the upstream rejects them or, like
  real providers, echoes them in its error ("Incorrect API key provided:
  sk-..."): ``workers/http.py`` redacts the credential it sent from whatever the
  upstream said.
* **Signed image URLs** can be neither forged nor extended nor pointed at
  another image: every change to the path, ``expires`` or ``signature`` is a 403
  in the envelope, never the image.
* **One key never sees another's** jobs (GET and cancel are 404, the same 404 as
  for a job that does not exist), usage, idempotent replays or images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import openai
import pytest
import requests
from openai import OpenAI

from shared.errors import InvalidRequest, UpstreamError
from shared.redis_client import connect
from shared.settings import Settings
from shared.signing import signing_secret
from shared.storage.local import sign
from tests.conftest import SIM_KEY, cli, create_key, start_worker
from tests.support.models import REPRESENTATIVE
from tests.support.processes import RedisServer
from workers.http import REDACTED, UpstreamHTTP, credentials_sent, redact

TIMEOUT = 30
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _generate(gateway: str, key: str, body: dict, **headers: str) -> requests.Response:
    return requests.post(
        f"{gateway}/v1/images/generations",
        json=body,
        headers={**_auth(key), **headers},
        timeout=TIMEOUT,
    )


def _logs(run_dir: Path, *, upstream_side: bool = False) -> dict[str, str]:
    """Every log the stack's processes wrote (the simulators' only if ``upstream_side``)."""
    return {
        path.name: path.read_text(errors="replace")
        for path in sorted(run_dir.glob("*.log"))
        if upstream_side or not path.name.startswith("simulator-")
    }


def _redis_dump(url: str) -> str:
    """Every key name and value in Redis as one text (the stack's Redis is small)."""
    client = connect(url)
    parts: list[str] = []
    for name in client.scan_iter(count=1000):
        kind = client.type(name)
        parts.append(name)
        if kind == "string":
            parts.append(str(client.get(name)))
        elif kind == "hash":
            parts.append(json.dumps(client.hgetall(name)))
        elif kind == "list":
            parts.extend(client.lrange(name, 0, -1))
        elif kind == "set":
            parts.extend(client.smembers(name))
        elif kind == "zset":
            parts.extend(client.zrange(name, 0, -1))
        elif kind == "stream":
            parts.append(repr(client.xrange(name)))
    return "\n".join(parts)


def _assert_nowhere(needles: dict[str, str], haystacks: dict[str, str]) -> None:
    for what, needle in needles.items():
        for where, text in haystacks.items():
            assert needle not in text, f"{what} appears in {where}"


def _wait_terminal(gateway: str, key: str, job_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = requests.get(
            f"{gateway}/v1/images/generations/{job_id}", headers=_auth(key), timeout=TIMEOUT
        ).json()
        if job["status"] in ("succeeded", "failed", "canceled", "timed_out"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")


# -- API keys -----------------------------------------------------------------------------


def test_api_keys_and_their_digests_are_in_no_log_body_or_record(
    gateway: str, stack_env: dict[str, str], run_dir: Path, redis_server: RedisServer
) -> None:
    created = create_key(stack_env, "secrets-probe")
    key = created["key"]
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    answers = [
        _generate(gateway, key, {"model": "local/testcard", "prompt": "x", "size": "32x32"}),
        _generate(gateway, key, {"model": "local/testcard", "prompt": "x", "size": "huge"}),
        _generate(gateway, key, {"model": "no-such-model", "prompt": "x"}),
        _generate(gateway, key, {"model": "local/testcard", "prompt": "x"}, Prefer="respond-async"),
        requests.get(f"{gateway}/v1/usage", headers=_auth(key), timeout=TIMEOUT),
        requests.get(f"{gateway}/v1/models", headers=_auth(key), timeout=TIMEOUT),
        requests.get(
            f"{gateway}/v1/images/generations/imgjob_0", headers=_auth(key), timeout=TIMEOUT
        ),
        # the wrong key, on every kind of route
        _generate(gateway, wrong, {"model": "local/testcard", "prompt": "x"}),
        requests.get(f"{gateway}/v1/usage", headers=_auth(wrong), timeout=TIMEOUT),
        requests.get(f"{gateway}/v1/models", headers=_auth(wrong), timeout=TIMEOUT),
        requests.post(
            f"{gateway}/v1/images/generations/imgjob_0/cancel", headers=_auth(wrong), timeout=30
        ),
        # a malformed request before authentication is decided
        requests.post(
            f"{gateway}/v1/images/generations",
            data=b"{not json",
            headers={**_auth(key), "Content-Type": "application/json"},
            timeout=TIMEOUT,
        ),
    ]
    statuses = [r.status_code for r in answers]
    assert statuses == [200, 400, 404, 202, 200, 200, 404, 401, 401, 401, 401, 400], statuses
    assert answers[7].json()["error"]["message"] == "Incorrect API key provided."
    _wait_terminal(gateway, key, answers[3].json()["id"])

    needles = {
        "the API key": key,
        "the API key's digest": _digest(key),
        "the wrong key": wrong,
        "the wrong key's digest": _digest(wrong),
        "the key's secret part": key.removeprefix("ig-"),
    }
    bodies = {f"response {i} ({r.status_code})": r.text for i, r in enumerate(answers)}
    bodies.update({f"response {i} headers": repr(dict(r.headers)) for i, r in enumerate(answers)})
    _assert_nowhere(needles, bodies)
    _assert_nowhere(needles, _logs(run_dir, upstream_side=True))
    # Redis holds the digest (it is how a key is found) but never a plaintext key,
    # and nothing at all about a key that does not exist.
    dump = _redis_dump(redis_server.url)
    assert _digest(key) in dump
    _assert_nowhere(
        {k: v for k, v in needles.items() if k != "the API key's digest"}, {"Redis": dump}
    )
    # The admin CLI lists keys by id, never by digest.
    listing = cli(stack_env, "keys", "list")
    assert created["id"] in listing
    _assert_nowhere(needles, {"imagegate keys list": listing})


# -- upstream keys --------------------------------------------------------------------------


class _EchoingUpstream(BaseHTTPRequestHandler):
    """An upstream that answers every call with an error quoting the credential it got,
    as real providers do. The prompt picks the status."""

    STATUSES = {"reject": 400, "invalid": 422, "auth": 401, "boom": 500, "missing": 404}

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        try:
            prompt = json.loads(self.rfile.read(length) or b"{}").get("prompt", "")
        except ValueError:
            prompt = ""
        self._answer(prompt)

    def _answer(self, what: str) -> None:
        credential = self.headers.get("Authorization") or self.headers.get("x-key") or ""
        token = credential.partition(" ")[2] or credential
        moderated = what == "moderate"
        status = 400 if moderated else self.STATUSES.get(what, 500)
        body = json.dumps(
            {
                "error": {
                    "message": f"Incorrect API key provided: {token}. You sent {credential!r}.",
                    "type": "invalid_request_error",
                    "param": f"key:{token}" if status == 400 else None,
                    "code": "content_policy_violation" if moderated else "invalid_api_key",
                }
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", "req_echo")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def echoing_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


CREDENTIAL_STYLES = {
    "bearer": ({"Authorization": "Bearer sk-proj-0123456789abcdef"}, ["sk-proj-0123456789abcdef"]),
    "fal": (
        {"Authorization": "Key 1a2b3c4d-id:9f8e7d6c5b4a-secret"},
        ["1a2b3c4d-id:9f8e7d6c5b4a-secret", "9f8e7d6c5b4a-secret"],
    ),
    "replicate": ({"Authorization": "Token r8_abcdefghijklmnop"}, ["r8_abcdefghijklmnop"]),
    "bfl": ({"x-key": "bfl-0123456789"}, ["bfl-0123456789"]),
}


@pytest.mark.parametrize("style", sorted(CREDENTIAL_STYLES))
@pytest.mark.parametrize("what", ["reject", "invalid", "moderate", "boom", "missing", "auth"])
def test_an_upstream_that_echoes_the_key_gets_it_redacted(
    echoing_upstream: str, style: str, what: str
) -> None:
    headers, secrets_sent = CREDENTIAL_STYLES[style]
    http = UpstreamHTTP(
        session=requests.Session(), deadline=time.time() + 20, provider="echo", max_retries=0
    )
    with pytest.raises((InvalidRequest, UpstreamError)) as info:
        http.request(
            "POST", f"{echoing_upstream}/v1/images", json_body={"prompt": what}, headers=headers
        )
    error = info.value
    shown = json.dumps({**error.to_dict(), "str": str(error)})
    for secret in secrets_sent:
        assert secret not in shown
    assert error.status in (400, 502)
    if what in ("reject", "invalid", "moderate", "boom", "missing"):
        assert REDACTED in error.message  # the upstream's message is kept, minus the key
    if what == "reject":
        assert error.param == f"key:{REDACTED}"


def test_credentials_sent_lists_each_credential_longest_first_and_redact_hides_it() -> None:
    sent = credentials_sent(
        {"Authorization": "Bearer sk-abcdef123", "X-Key": "bfl-key-42", "Accept": "image/png"}
    )
    assert sent[0] == "Bearer sk-abcdef123"  # longest first, so the whole value goes at once
    assert set(sent) == {"Bearer sk-abcdef123", "sk-abcdef123", "bfl-key-42"}
    assert redact("got Bearer sk-abcdef123 and sk-abcdef123", sent) == (
        f"got {REDACTED} and {REDACTED}"
    )
    assert credentials_sent({"Authorization": "Bearer"}) == []  # no key, nothing to hide
    assert credentials_sent(None) == []


@pytest.fixture(scope="module")
def leaky_gateway(
    echoing_upstream: str,
    start_gateway,
    stack_env: dict[str, str],
    run_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str]]:
    """A gateway and a worker with one more family, served by the echoing upstream;
    returns (gateway URL, the family's upstream key)."""
    overlay = tmp_path_factory.mktemp("leaky") / "leaky.toml"
    overlay.write_text(
        '[families.leaky]\nqueue = "leaky"\nadapter = "openai"\n'
        'base_url = "https://leaky.example/v1"\nkey_env = "LEAKY_API_KEY"\n\n'
        '[[models]]\nid = "leaky/model"\nfamily = "leaky"\nupstream = "leaky-1"\n'
        'price = "0"\nsize_rule = { kind = "max_side", min = 64, max = 1024 }\n'
        'default_size = "64x64"\nmax_n = 1\nmax_prompt_length = 4000\n'
    )
    upstream_key = "sk-leaky-" + secrets.token_hex(16)
    env = {
        "IMAGEGATE_CATALOG_OVERLAYS": os.pathsep.join(
            [stack_env["IMAGEGATE_CATALOG_OVERLAYS"], str(overlay)]
        ),
        "IMAGEGATE_BASE_URL_LEAKY": f"{echoing_upstream}/v1",
        "LEAKY_API_KEY": upstream_key,
        "IMAGEGATE_UPSTREAM_MAX_RETRIES": "0",
    }
    worker = start_worker(run_dir, {**stack_env, **env}, "leaky", name="worker-leaky")
    try:
        yield start_gateway("web-leaky", **env), upstream_key
    finally:
        worker.stop()


@pytest.mark.parametrize("what", ["reject", "moderate", "boom", "auth"])
def test_an_echoed_upstream_key_reaches_no_client_record_or_log(
    leaky_gateway: tuple[str, str], api_key: str, run_dir: Path, redis_server, what: str
) -> None:
    gateway, upstream_key = leaky_gateway
    sync = _generate(gateway, api_key, {"model": "leaky/model", "prompt": what})
    assert sync.status_code in (400, 502), sync.text
    accepted = _generate(
        gateway, api_key, {"model": "leaky/model", "prompt": what}, Prefer="respond-async"
    )
    assert accepted.status_code == 202
    job = _wait_terminal(gateway, api_key, accepted.json()["id"])
    assert job["status"] == "failed"
    assert job["error"]["message"] == sync.json()["error"]["message"]
    if what in ("reject", "boom"):
        assert REDACTED in job["error"]["message"]  # the upstream's words, minus the key

    needles = {"the upstream key": upstream_key, "its secret part": upstream_key[9:]}
    _assert_nowhere(needles, {"sync answer": sync.text, "job object": json.dumps(job)})
    _assert_nowhere(needles, {"Redis": _redis_dump(redis_server.url)})
    _assert_nowhere(needles, _logs(run_dir))


def test_a_rejected_simulator_key_reaches_no_client_record_or_log(
    client: OpenAI, simulators: dict[str, str], run_dir: Path, redis_server
) -> None:
    families = [f for f in REPRESENTATIVE if f in simulators]
    assert families
    try:
        for family in families:
            sim = simulators[family]
            requests.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
            requests.post(
                f"{sim}/_sim/config", json={"api_key": "another-key"}, timeout=5
            ).raise_for_status()
            with pytest.raises(openai.APIStatusError) as info:
                client.images.generate(model=REPRESENTATIVE[family], prompt="who am i")
            assert info.value.status_code == 502
            assert info.value.body["code"] == "upstream_auth_failed"
            assert SIM_KEY not in info.value.response.text
    finally:
        for family in families:
            requests.post(f"{simulators[family]}/_sim/reset", timeout=5)
    _assert_nowhere({"the upstream key": SIM_KEY}, {"Redis": _redis_dump(redis_server.url)})
    _assert_nowhere({"the upstream key": SIM_KEY}, _logs(run_dir))


# -- signed image URLs -------------------------------------------------------------------------


def _split(url: str) -> tuple[str, str, str, str]:
    """(origin, file key, expires, signature) of a local file URL."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    key = parts.path.removeprefix("/v1/files/")
    return f"{parts.scheme}://{parts.netloc}", key, query["expires"], query["signature"]


def _file_url(origin: str, key: str, query: str) -> str:
    return f"{origin}/v1/files/{key}" + (f"?{query}" if query else "")


def _refused(url: str, **kw) -> dict:
    resp = requests.get(url, timeout=TIMEOUT, **kw)
    assert resp.status_code in (403, 404), (url, resp.status_code)
    assert not resp.content.startswith(PNG_MAGIC)
    assert resp.headers["Content-Type"].startswith("application/json")
    return resp.json()["error"]


@pytest.fixture(scope="module")
def two_images(gateway: str, api_key: str) -> list[str]:
    resp = _generate(gateway, api_key, {"model": "local/testcard", "prompt": "x", "n": 2})
    assert resp.status_code == 200, resp.text
    urls = [item["url"] for item in resp.json()["data"]]
    for url in urls:
        got = requests.get(url, timeout=TIMEOUT)
        assert got.status_code == 200 and got.content.startswith(PNG_MAGIC)
    return urls


def _tampered(url: str, other: str) -> dict[str, str]:
    origin, key, expires, signature = _split(url)
    _, other_key, other_expires, other_signature = _split(other)
    flip = {c: d for c, d in zip("0123456789abcdef", "123456789abcdef0", strict=True)}
    sig = f"signature={signature}"
    return {
        "expires+1": _file_url(origin, key, f"expires={int(expires) + 1}&{sig}"),
        "expires+year": _file_url(origin, key, f"expires={int(expires) + 31536000}&{sig}"),
        "expires-1": _file_url(origin, key, f"expires={int(expires) - 1}&{sig}"),
        "expires-leading-zero": _file_url(origin, key, f"expires=0{expires}&{sig}"),
        "expires-decimal": _file_url(origin, key, f"expires={expires}.0&{sig}"),
        "expires-plus-sign": _file_url(origin, key, f"expires=%2B{expires}&{sig}"),
        "expires-space": _file_url(origin, key, f"expires=%20{expires}&{sig}"),
        "expires-missing": _file_url(origin, key, sig),
        "expires-forged-first": _file_url(
            origin, key, f"expires=99999999999&expires={expires}&{sig}"
        ),
        "signature-first-char": _file_url(
            origin, key, f"expires={expires}&signature={flip[signature[0]]}{signature[1:]}"
        ),
        "signature-last-char": _file_url(
            origin, key, f"expires={expires}&signature={signature[:-1]}{flip[signature[-1]]}"
        ),
        "signature-uppercase": _file_url(
            origin, key, f"expires={expires}&signature={signature.upper()}"
        ),
        "signature-truncated": _file_url(
            origin, key, f"expires={expires}&signature={signature[:-1]}"
        ),
        "signature-half": _file_url(origin, key, f"expires={expires}&signature={signature[:32]}"),
        "signature-extended": _file_url(origin, key, f"expires={expires}&signature={signature}0"),
        "signature-empty": _file_url(origin, key, f"expires={expires}&signature="),
        "signature-missing": _file_url(origin, key, f"expires={expires}"),
        "no-query": _file_url(origin, key, ""),
        "other-image-same-params": _file_url(origin, other_key, f"expires={expires}&{sig}"),
        "params-of-other-image": _file_url(
            origin, key, f"expires={other_expires}&signature={other_signature}"
        ),
        "key-uppercased": _file_url(origin, key.upper(), f"expires={expires}&{sig}"),
        "key-extension": _file_url(origin, key.replace(".png", ".jpg"), f"expires={expires}&{sig}"),
        "key-double-slash": _file_url(
            origin, key.replace("/", "//", 1), f"expires={expires}&{sig}"
        ),
    }


_SAMPLE = "http://gateway/v1/files/day/imgjob_1/{}.png?expires=1&signature=0f"
TAMPERINGS = sorted(_tampered(_SAMPLE.format(0), _SAMPLE.format(1)))


@pytest.mark.parametrize("how", TAMPERINGS)
def test_a_tampered_image_url_is_refused(two_images: list[str], how: str) -> None:
    url = _tampered(two_images[0], two_images[1])[how]
    error = _refused(url)
    assert error["code"] in ("invalid_signature", None), (how, error)  # None: unknown URL


def test_a_correctly_signed_but_expired_url_is_refused(
    two_images: list[str], stack_env: dict[str, str], redis_server: RedisServer
) -> None:
    origin, key, _, _ = _split(two_images[0])
    secret = signing_secret(Settings.from_env(stack_env), connect(redis_server.url)).encode()
    past = int(time.time()) - 5
    error = _refused(_file_url(origin, key, urlencode({"expires": past, "signature": sign(secret, key, past)})))  # fmt: skip
    assert error["code"] == "url_expired"
    # The same secret signs a valid URL, so the refusal above is the expiry alone.
    future = int(time.time()) + 60
    fresh = _file_url(origin, key, urlencode({"expires": future, "signature": sign(secret, key, future)}))  # fmt: skip
    assert requests.get(fresh, timeout=TIMEOUT).content.startswith(PNG_MAGIC)


def test_image_url_signatures_are_not_logged(two_images: list[str], run_dir: Path) -> None:
    # The fixture fetched both URLs through the gateway; its access log has the paths.
    logs = _logs(run_dir)
    assert any(_split(two_images[0])[1] in text for text in logs.values())
    _assert_nowhere({f"signature {i}": _split(u)[3] for i, u in enumerate(two_images)}, logs)


def test_an_api_key_does_not_open_an_image(two_images: list[str], api_key: str) -> None:
    origin, key, _, _ = _split(two_images[0])
    _refused(_file_url(origin, key, ""), headers=_auth(api_key))


# -- isolation between keys -----------------------------------------------------------------------


@pytest.fixture()
def two_keys(stack_env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Fresh keys for each test: the usage test counts everything a key ever did."""
    return create_key(stack_env, "tenant-a"), create_key(stack_env, "tenant-b")


def test_another_keys_job_is_not_found_for_get_and_cancel(gateway: str, two_keys) -> None:
    a, b = two_keys
    accepted = _generate(
        gateway,
        a["key"],
        {"model": "dall-e-2", "prompt": "private", "size": "256x256"},
        Prefer="respond-async",
    )
    assert accepted.status_code == 202
    job_id = accepted.json()["id"]
    route = f"{gateway}/v1/images/generations/{job_id}"
    missing = f"{gateway}/v1/images/generations/imgjob_{secrets.token_hex(12)}"
    for url, method in ((route, "GET"), (f"{route}/cancel", "POST")):
        theirs = requests.request(method, url, headers=_auth(b["key"]), timeout=TIMEOUT)
        nobody = requests.request(
            method, url.replace(route, missing), headers=_auth(b["key"]), timeout=TIMEOUT
        )
        assert theirs.status_code == nobody.status_code == 404
        error, none = theirs.json()["error"], nobody.json()["error"]
        # The same answer as for a job that does not exist: no oracle for job ids.
        assert error["code"] == none["code"] == "job_not_found"
        assert error["message"].replace(job_id, "ID") == none["message"].replace(
            missing.rsplit("/", 1)[-1], "ID"
        )
        assert "private" not in theirs.text
    job = _wait_terminal(gateway, a["key"], job_id)
    assert job["status"] == "succeeded"  # B's cancel did nothing to it


def test_usage_shows_only_the_callers_own(gateway: str, two_keys) -> None:
    a, b = two_keys
    for _ in range(2):
        resp = _generate(gateway, a["key"], {"model": "local/testcard", "prompt": "a", "n": 3})
        assert resp.status_code == 200
    assert _generate(gateway, b["key"], {"model": "test/priced-card", "prompt": "b"}).ok
    usage_a = requests.get(f"{gateway}/v1/usage", headers=_auth(a["key"]), timeout=30).json()
    usage_b = requests.get(f"{gateway}/v1/usage", headers=_auth(b["key"]), timeout=30).json()
    assert usage_a["key_id"] == a["id"] and usage_b["key_id"] == b["id"]
    models_a = {row["model"] for row in usage_a["totals"]}
    assert usage_b["totals"] == [{"model": "test/priced-card", "images": 1, "amount": "0.010000"}]
    assert "test/priced-card" not in models_a
    assert "local/testcard" in models_a
    assert json.dumps(usage_b).count(a["id"]) == 0


def test_an_idempotency_key_is_per_api_key(gateway: str, two_keys) -> None:
    a, b = two_keys
    body = {"model": "local/testcard", "prompt": "same body", "size": "32x32"}
    header = {"Idempotency-Key": "shared-" + secrets.token_hex(4), "Prefer": "respond-async"}
    first = _generate(gateway, a["key"], body, **header)
    again = _generate(gateway, a["key"], body, **header)
    other = _generate(gateway, b["key"], body, **header)
    assert first.status_code == again.status_code == other.status_code == 202
    assert first.json()["id"] == again.json()["id"]  # A's retry replays A's job
    assert other.json()["id"] != first.json()["id"]  # B gets its own, not A's
    peek = requests.get(
        f"{gateway}/v1/images/generations/{first.json()['id']}",
        headers=_auth(b["key"]),
        timeout=TIMEOUT,
    )
    assert peek.status_code == 404


def test_another_keys_images_need_their_own_signature(gateway: str, two_keys) -> None:
    a, b = two_keys
    mine = _generate(gateway, a["key"], {"model": "local/testcard", "prompt": "a", "size": "32x32"})
    theirs = _generate(
        gateway, b["key"], {"model": "local/testcard", "prompt": "b", "size": "32x32"}
    )
    origin, key_a, _, _ = _split(mine.json()["data"][0]["url"])
    _, key_b, expires_b, signature_b = _split(theirs.json()["data"][0]["url"])
    # Image keys hold the job id, 96 random bits, so they cannot be guessed; and even a
    # known path of another key's image is refused without its own signature.
    assert re.search(r"imgjob_[0-9a-f]{24}/", key_a)
    for url, headers in (
        (_file_url(origin, key_a, ""), _auth(b["key"])),
        (_file_url(origin, key_a, f"expires={expires_b}&signature={signature_b}"), {}),
        (
            _file_url(origin, key_a, f"expires={expires_b}&signature={signature_b}"),
            _auth(b["key"]),
        ),
    ):
        _refused(url, headers=headers)
    assert key_a != key_b
