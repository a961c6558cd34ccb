"""The playground's page and files, in-process (Flask's ``test_client``, ``fakeredis``).

What a browser cannot easily show is checked here: every answer carries the strict
Content-Security-Policy; the page has no inline script, style or event handler (the
policy would block them, so the page would break); the script never turns text into
markup; only the page's own files are served. ``test_playground_browser_e2e.py``
drives the page in a real Chromium.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from api.playground import ASSETS
from shared.keys import KeyStore
from shared.settings import Settings
from shared.storage import StorageConfig

pytestmark = pytest.mark.fast

STATIC = Path(__file__).resolve().parents[1] / "api" / "static" / "playground"


def _app(tmp_path: Path, **settings) -> Flask:
    return create_app(
        Settings(storage=StorageConfig(local_dir=str(tmp_path / "images")), **settings),
        redis_client=fakeredis.FakeRedis(decode_responses=True),
    )


@pytest.fixture()
def client(tmp_path: Path) -> FlaskClient:
    return _app(tmp_path).test_client()


def _policy(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


class _Page(HTMLParser):
    """The tags and attributes of the page, to look for what the policy would block."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_script = True


@pytest.mark.parametrize(
    "path", ["/playground", "/playground/playground.js", "/playground/playground.css"]
)
def test_every_file_has_the_strict_policy(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    policy = _policy(response.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["img-src"] == ["'self'", "data:", "blob:"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["form-action"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["x-request-id"]


def test_the_page_has_nothing_inline_and_only_its_own_files(client: FlaskClient) -> None:
    response = client.get("/playground")
    assert response.mimetype == "text/html"
    page = _Page()
    page.feed(response.get_data(as_text=True))
    assert not page.inline_script
    for tag, attrs in page.tags:
        assert "style" not in attrs, f"inline style on <{tag}>"
        assert tag != "style"
        assert not [a for a in attrs if a.startswith("on")], f"event handler on <{tag}>"
    scripts = [attrs["src"] for tag, attrs in page.tags if tag == "script"]
    sheets = [
        attrs["href"]
        for tag, attrs in page.tags
        if tag == "link" and attrs.get("rel") == "stylesheet"
    ]
    assert scripts == ["/playground/playground.js"]
    assert sheets == ["/playground/playground.css"]
    for url in scripts + sheets:  # every file it names is served, with its own type
        served = client.get(url)
        assert served.status_code == 200
        assert served.mimetype == ASSETS[url.rsplit("/", 1)[1]].split(";")[0]
    # The key input has no name: a form submitted without the script carries no key.
    key_input = next(attrs for tag, attrs in page.tags if attrs.get("id") == "api-key")
    assert "name" not in key_input and key_input["type"] == "password"


def test_the_script_never_parses_text_as_markup() -> None:
    script = (STATIC / "playground.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "localStorage"):  # fmt: skip
        assert sink not in script, sink
    # The key is kept in sessionStorage and sent in the Authorization header only.
    assert re.search(r"sessionStorage\.setItem\(KEY_STORAGE", script)
    assert 'headers.set("Authorization", `Bearer ${state.key}`)' in script


@pytest.mark.parametrize(
    "path",
    [
        "/playground/index.html",
        "/playground/nope.js",
        "/playground/",
        "/playground/%2e%2e/app.py",
        "/playground/..%2fapp.py",
        "/playground/playground.js%00",
        "/playground/playground.js/",
        "/playground/PLAYGROUND.JS",
        "/playground/" + "a" * 5000,
        "/playground/%3Cscript%3E.js",
    ],
)
def test_nothing_else_is_served(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.get_json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_the_page_only_answers_get(client: FlaskClient, method: str) -> None:
    response = getattr(client, method)("/playground", data=b"x")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_a_file_is_revalidated_by_its_etag(client: FlaskClient) -> None:
    first = client.get("/playground/playground.js")
    assert first.headers["Cache-Control"] == "no-cache" and first.headers["ETag"]
    again = client.get(
        "/playground/playground.js", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert again.status_code == 304
    assert "Content-Security-Policy" in again.headers


def test_images_may_come_from_the_public_base_url(tmp_path: Path) -> None:
    app = _app(tmp_path, public_base_url="https://images.example.com/gw")
    policy = _policy(app.test_client().get("/playground").headers["Content-Security-Policy"])
    assert policy["img-src"] == ["'self'", "data:", "blob:", "https://images.example.com"]


def test_usage_says_the_tiers_limits(tmp_path: Path) -> None:
    """The playground shows a key's limits from GET /v1/usage: its tier's, from the catalog."""
    redis_client = fakeredis.FakeRedis(decode_responses=True)
    app = create_app(
        Settings(storage=StorageConfig(local_dir=str(tmp_path / "images"))),
        redis_client=redis_client,
    )
    plaintext, _ = KeyStore(redis_client).create("limits", tier="free")
    usage = app.test_client().get("/v1/usage", headers={"Authorization": f"Bearer {plaintext}"})
    limits = usage.get_json()["limits"]
    assert limits["requests_per_minute"] == 60 and limits["all_models"] is False
    by_model = {entry["model"]: entry for entry in limits["models"]}
    assert by_model["image-turbo"] == {"model": "image-turbo", "per_minute": 1, "per_day": 5}
    assert by_model["local/testcard"]["per_day"] == 200
    assert "image-pro" not in by_model  # the free tier does not have it
