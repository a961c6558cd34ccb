"""Edits and variations in-process (Flask's ``test_client`` on ``fakeredis``): the
multipart and JSON checks of api/uploads.py and api/edits.py, what is stored and
what the job spec holds (keys, never bytes), and that a refused upload is neither
stored nor charged. The workers' side is in tests/test_edits_e2e.py."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from api.app import create_app
from api.services import EXTENSION, Services
from shared.keys import KeyStore
from shared.settings import Settings
from shared.storage import StorageConfig

pytestmark = pytest.mark.fast

EDITS = "/v1/images/edits"
VARIATIONS = "/v1/images/variations"
TESTCARD = "local/testcard"
ASYNC = {"Prefer": "respond-async"}


def png(width: int = 32, height: int = 32, *, alpha: bool = False, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    mode = "RGBA" if alpha else "RGB"
    Image.new(mode, (width, height), (10, 200, 30, 0) if alpha else (10, 200, 30)).save(
        out, format=fmt
    )
    return out.getvalue()


def data_url(raw: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(raw).decode()


@pytest.fixture()
def app(tmp_path: Path) -> Flask:
    settings = Settings(
        storage=StorageConfig(local_dir=str(tmp_path / "images")),
        database_url=f"sqlite:///{tmp_path}/records.sqlite3",
        sync_budget_seconds=2.0,
        max_upload_bytes=2 * 1024 * 1024,
        max_upload_file_bytes=512 * 1024,
        max_upload_files=4,
        credentials={"OPENAI_API_KEY": "sk-test"},
    )
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    return create_app(settings, redis_client=redis)


def services_of(app: Flask) -> Services:
    return app.extensions[EXTENSION]


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def auth(app: Flask) -> Callable[..., dict[str, str]]:
    def make(balance: int | None = None, tier: str = "internal") -> dict[str, str]:
        svc = services_of(app)
        plaintext, key = KeyStore(svc.redis).create("up", tier=tier, unlimited=balance is None)
        if balance is not None:
            svc.accounts.set_balance(key.id, balance)
        return {"Authorization": f"Bearer {plaintext}"}

    return make


def stored_files(app: Flask) -> list[Path]:
    root = Path(services_of(app).settings.storage.local_dir)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def multipart(
    client: FlaskClient,
    headers: dict[str, str],
    fields: dict[str, str],
    files: list[tuple[str, bytes, str]],
    path: str = EDITS,
):
    data: dict[str, list[Any]] = {name: [value] for name, value in fields.items()}
    for name, raw, filename in files:
        data.setdefault(name, []).append((io.BytesIO(raw), filename))
    return client.post(path, data=data, headers=headers, content_type="multipart/form-data")


def error_of(response) -> dict[str, Any]:
    return response.get_json()["error"]


# --- accepted edits: uploads stored by key, the spec holds keys -------------------------


def test_a_multipart_edit_stores_each_upload_and_names_it_by_key(app, client, auth) -> None:
    headers = {**auth(), **ASYNC}
    images = [("image[]", png(40, 30), "a.png"), ("image[]", png(20, 20, fmt="WEBP"), "b.webp")]
    mask = ("mask", png(40, 30, alpha=True), "m.png")
    response = multipart(
        client, headers, {"model": TESTCARD, "prompt": "add a hat", "n": "2"}, [*images, mask]
    )
    assert response.status_code == 202, response.get_json()
    job = services_of(app).jobs.get(response.get_json()["id"])
    assert job.request["operation"] == "edit" and job.request["n"] == 2
    keys = [ref["key"] for ref in job.request["images"]] + [job.request["mask"]["key"]]
    assert [key.rsplit("/", 1)[1] for key in keys] == ["0.png", "1.webp", "2.png"]
    assert all(job.id in key for key in keys)
    assert [ref["key"] for ref in job.meta["uploads"]] == keys
    assert len(stored_files(app)) == 3
    spec = services_of(app).redis.hget(services_of(app).jobs.record_key(job.id), "spec") or ""
    assert "base64" not in json.dumps(job.request) and len(spec) < 4096


def test_a_json_edit_takes_data_urls_and_checks_https_urls(app, client, auth) -> None:
    body = {
        "model": TESTCARD,
        "prompt": "p",
        "images": [{"image_url": data_url(png())}],
        "mask": {"image_url": data_url(png(alpha=True))},
    }
    response = client.post(EDITS, json=body, headers={**auth(), **ASYNC})
    assert response.status_code == 202, response.get_json()
    job = services_of(app).jobs.get(response.get_json()["id"])
    assert set(job.request["images"][0]) == {"key", "content_type"}
    body["images"] = [{"image_url": "https://127.0.0.1/x.png"}]
    del body["mask"]
    refused = client.post(EDITS, json=body, headers=auth())
    assert refused.status_code == 400
    assert error_of(refused)["param"] == "images[0]"


def test_file_id_is_a_clear_400(client, auth) -> None:
    body = {"model": TESTCARD, "prompt": "p", "images": [{"file_id": "file-abc"}]}
    response = client.post(EDITS, json=body, headers=auth())
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "images[0].file_id" and "Files API" in error["message"]


# --- refusals name the part, store nothing, charge nothing ---------------------------------


@pytest.mark.parametrize(
    ("files", "fields", "status", "param", "code"),
    [
        ([("image", b"not an image at all", "x.png")], {}, 400, "image", "invalid_image"),
        ([("image", png(), "a.png"), ("image", b"GIF89a...", "b.gif")], {}, 400, "image[1]",
         "invalid_image"),
        ([("image", png(), "a.png"), ("mask", png(16, 16, alpha=True), "m.png")], {}, 400,
         "mask", "invalid_mask"),
        ([("image", png(), "a.png"), ("mask", png(fmt="JPEG"), "m.jpg")], {}, 400, "mask",
         "invalid_mask"),
        ([("image", png(), "a.png")] * 5, {}, 400, "image", "too_many_images"),
        ([], {}, 400, "image", "missing_required_parameter"),
        ([("picture", png(), "a.png")], {}, 400, "picture", "unknown_parameter"),
        ([("image", png(), "a.png")], {"n": "two"}, 400, "n", "invalid_value"),
        ([("image", png(), "a.png")], {"image": "https://x"}, 400, "image", "invalid_value"),
        ([("image", png(), "a.png")], {"stream": "true", "webhook_url": "https://a.example/h"},
         400, "stream", "invalid_value"),
        ([("image", png(), "a.png")], {"stream": "maybe"}, 400, "stream", "invalid_value"),
        ([("image", png(), "a.png")], {"model": "dall-e-3"}, 400, "model", "invalid_value"),
        ([("image", png(), "a.png")], {"model": "image"}, 400, "model", "invalid_value"),
        ([("image", png(), "a.png")], {"input_fidelity": "high"}, 400, "input_fidelity",
         "unsupported_parameter"),
    ],
)  # fmt: skip
def test_refused_uploads_name_the_part_and_leave_nothing(
    app, client, auth, files, fields, status, param, code
) -> None:
    response = multipart(client, auth(balance=1_000_000), {"prompt": "p", **fields}, files)
    assert response.status_code == status, response.get_json()
    error = error_of(response)
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert stored_files(app) == []


def test_too_many_images_for_the_model(app, client, auth) -> None:
    # dall-e-2 takes one image per edit.
    files = [("image[]", png(), "a.png"), ("image[]", png(), "b.png")]
    response = multipart(client, auth(), {"prompt": "p", "model": "dall-e-2"}, files)
    assert response.status_code == 400
    assert (error_of(response)["param"], error_of(response)["code"]) == ("image", "too_many_images")
    assert stored_files(app) == []


def test_a_file_above_the_per_file_limit_is_413_naming_it(app, client, auth) -> None:
    big = png(8, 8) + b"\0" * (600 * 1024)  # over max_upload_file_bytes (512 KiB)
    files = [("image[]", png(), "a.png"), ("image[]", big, "b.png")]
    response = multipart(client, auth(), {"prompt": "p"}, files)
    assert response.status_code == 413
    assert (error_of(response)["param"], error_of(response)["code"]) == (
        "image[1]",
        "image_too_large",
    )
    assert stored_files(app) == []


def test_a_body_above_the_per_request_limit_is_413(client, auth) -> None:
    files = [("image[]", png() + b"\0" * (400 * 1024), f"{i}.png") for i in range(6)]
    response = multipart(client, auth(), {"prompt": "p"}, files)  # ~2.4 MiB > 2 MiB
    assert response.status_code == 413


def test_a_decompression_bomb_is_refused_before_decoding(client, auth) -> None:
    out = io.BytesIO()
    Image.new("1", (9000, 9000)).save(out, format="PNG")  # 81 M pixels, a few KB
    response = multipart(client, auth(), {"prompt": "p"}, [("image", out.getvalue(), "b.png")])
    assert response.status_code == 400
    assert error_of(response)["code"] == "image_dimensions_too_large"


def test_nothing_is_charged_for_a_refused_upload(app, client, auth) -> None:
    headers = auth(balance=1_000_000)
    before = client.get("/v1/usage", headers=headers).get_json()["balance"]
    response = multipart(
        client, headers, {"prompt": "p", "model": "dall-e-2"}, [("image", b"junk", "a.png")]
    )
    assert response.status_code == 400
    assert client.get("/v1/usage", headers=headers).get_json()["balance"] == before


def test_a_tier_refusal_deletes_the_uploads(app, client, auth) -> None:
    # The free tier cannot use gpt-image-1: 403 after the checks, before the job exists.
    response = multipart(
        client, auth(tier="free", balance=1_000_000), {"prompt": "p", "model": "gpt-image-1"},
        [("image", png(), "a.png")],
    )  # fmt: skip
    assert response.status_code == 403
    assert stored_files(app) == []


def test_idempotency_key_replays_a_multipart_edit(app, client, auth) -> None:
    headers = {**auth(), **ASYNC, "Idempotency-Key": "edit-1"}
    files = [("image", png(), "a.png")]
    first = multipart(client, headers, {"prompt": "p", "model": TESTCARD}, files)
    again = multipart(client, headers, {"prompt": "p", "model": TESTCARD}, files)
    assert first.status_code == again.status_code == 202
    assert first.get_json()["id"] == again.get_json()["id"]
    assert len(stored_files(app)) == 1  # the replay's upload was deleted
    other = multipart(
        client, headers, {"prompt": "p", "model": TESTCARD}, [("image", png(8, 8), "b.png")]
    )
    assert other.status_code == 409


# --- variations --------------------------------------------------------------------------


def test_a_variation_takes_one_image_of_a_model_that_makes_them(app, client, auth) -> None:
    headers = {**auth(), **ASYNC}
    ok = multipart(client, headers, {"model": TESTCARD, "n": "2"}, [("image", png(), "a.png")],
                   VARIATIONS)  # fmt: skip
    assert ok.status_code == 202, ok.get_json()
    job = services_of(app).jobs.get(ok.get_json()["id"])
    assert job.request["operation"] == "variation" and job.request["prompt"] == ""
    refused = multipart(client, headers, {"model": "gpt-image-1"}, [("image", png(), "a.png")],
                        VARIATIONS)  # fmt: skip
    assert refused.status_code == 400 and error_of(refused)["param"] == "model"
    masked = multipart(client, headers, {"model": TESTCARD},
                       [("image", png(), "a.png"), ("mask", png(alpha=True), "m.png")],
                       VARIATIONS)  # fmt: skip
    assert masked.status_code == 400 and error_of(masked)["param"] == "mask"
    prompted = multipart(client, headers, {"model": TESTCARD, "prompt": "p"},
                         [("image", png(), "a.png")], VARIATIONS)  # fmt: skip
    assert prompted.status_code == 400 and error_of(prompted)["param"] == "prompt"


def test_models_list_edit_capabilities(client, auth) -> None:
    models = {m["id"]: m for m in client.get("/v1/models", headers=auth()).get_json()["data"]}
    assert (models["gpt-image-1"]["max_reference_images"], models["gpt-image-1"]["mask"]) == (
        16,
        True,
    )
    assert models["dall-e-2"]["variations"] and not models["dall-e-3"]["max_reference_images"]
