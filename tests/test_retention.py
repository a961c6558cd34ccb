"""Image retention and a full disk (shared/retention.py, shared/storage/).

* The storage backends delete a job's folder (local: and the empty folders above
  it; S3 against moto), report their health, and (S3) install and check the bucket's
  lifecycle rule. s3rver, the suite's other S3 server, answers ``NotImplemented`` to
  every ``?lifecycle`` request, so the rule is tested against moto only.
* The janitor's pass on a real Redis: it deletes what is due and only that, at most a
  batch, never while another janitor holds the lease, again after a crash between the
  deletion and the index update, and later (not at once) what failed.
* A full disk, for real: a small tmpfs this test mounts (needs root, as CI has). The
  pipeline fails the job with 503 ``storage_full`` and refunds it; the readiness probe
  (``storage_health``) says the storage is full.
* End to end, with real workers and gunicorn on that tmpfs: a deleted image's fresh URL
  answers 404, and a job that meets the full disk answers the official client 503.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
import redis
import requests
from click.testing import CliRunner, Result
from openai import InternalServerError, OpenAI
from PIL import Image

from shared.billing import Accounts
from shared.cli import main as imagegate
from shared.errors import STORAGE_FULL, NotFound, ServiceUnavailable
from shared.keys import KeyStore
from shared.redis_client import connect
from shared.retention import (
    BACKSTOP_MARGIN_SECONDS,
    INDEX,
    LEASE,
    RETRY_SECONDS,
    ImageRetention,
    Sweep,
    results_folder,
    uploads_folder,
)
from shared.settings import Settings, SettingsError
from shared.storage import LocalStorage, S3Storage, StorageConfig, storage_health
from shared.storage.s3 import LIFECYCLE_RULE_ID
from shared.uploads import upload_key
from tests.conftest import start_worker
from tests.support.jobs import admit_job
from tests.support.processes import BIN
from workers.context import build_context
from workers.janitor import Janitor
from workers.pipeline import run_job

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
OVERLAY = str(Path(__file__).parent / "data" / "test_models.toml")
DB = 13  # in-process tests; the end-to-end stack uses DB + 1


def _db_url(redis_server, db: int) -> str:
    return redis_server.url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture()
def client(redis_server) -> Iterator[redis.Redis]:
    client = connect(_db_url(redis_server, DB))
    client.delete(INDEX, LEASE)
    yield client
    client.delete(INDEX, LEASE)


# -- a small file system to fill --------------------------------------------------------


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this module (root only), unmounted at its end."""
    mount = tmp_path_factory.mktemp("small-disk")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """A file taking all the space of ``directory``'s file system but ``leave`` bytes."""
    stat = os.statvfs(directory)
    filler = directory / f"filler-{uuid.uuid4().hex[:8]}"
    with open(filler, "wb") as out:
        left = stat.f_bavail * stat.f_frsize - leave
        while left > 0:
            try:
                left -= out.write(b"\0" * min(left, 1 << 20))
            except OSError:
                break
    return filler


# -- the storage backends ---------------------------------------------------------------


@pytest.mark.fast
def test_the_folders_are_where_the_keys_are_written() -> None:
    created = 1764892800.0  # 2025-12-05
    assert results_folder("imgjob_a", created) == "2025/12/05/imgjob_a"
    assert upload_key("imgjob_a", created, "png", 2).startswith(
        uploads_folder("imgjob_a", created) + "/"
    )


@pytest.mark.fast
def test_the_retention_defaults_to_a_day_past_the_url_lifetime_and_never_less() -> None:
    assert Settings.from_env({}).image_retention == 3600 + 86400
    assert Settings.from_env({"IMAGEGATE_URL_TTL_SECONDS": "60"}).image_retention == 86460
    given = {"IMAGEGATE_IMAGE_RETENTION_SECONDS": "7200", "IMAGEGATE_STORAGE_MIN_FREE_BYTES": "0"}
    settings = Settings.from_env(given)
    assert settings.image_retention == 7200 and settings.storage.local_min_free_bytes == 0
    with pytest.raises(
        SettingsError, match="IMAGEGATE_IMAGE_RETENTION_SECONDS=60 must be at least"
    ):
        Settings.from_env({"IMAGEGATE_IMAGE_RETENTION_SECONDS": "60"})


@pytest.mark.fast
def test_local_delete_prefix_removes_the_folder_and_the_empty_folders_above(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(StorageConfig(local_dir=str(tmp_path)))
    for key in ("2026/12/05/imgjob_a/1/0.png", "2026/12/05/imgjob_a/2/0.png",
                "2026/12/05/imgjob_ab/1/0.png"):  # fmt: skip
        storage.put(key, PNG, "image/png")
    assert storage.delete_prefix("2026/12/05/imgjob_a") == 2
    assert not (tmp_path / "2026/12/05/imgjob_a").exists()
    assert storage.get("2026/12/05/imgjob_ab/1/0.png") == PNG  # a name that starts alike
    assert storage.delete_prefix("2026/12/05/imgjob_ab") == 1
    assert not (tmp_path / "2026").exists() and tmp_path.is_dir()
    assert storage.delete_prefix("2026/12/05/imgjob_a") == 0  # gone already: no error
    storage.put("2026/12/06/imgjob_c/1/0.png", PNG, "image/png")
    storage.delete("2026/12/06/imgjob_c/1/0.png")
    assert not (tmp_path / "2026").exists()
    with pytest.raises(ValueError):
        storage.delete_prefix("2026/../etc")


def test_s3_deletes_a_folder_reports_health_and_keeps_its_lifecycle_rule(
    moto_endpoint: str,
) -> None:
    bucket = f"imagegate-retention-{uuid.uuid4().hex[:8]}"
    raw = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
    )  # fmt: skip
    raw.create_bucket(Bucket=bucket)
    config = StorageConfig(
        backend="s3", s3_bucket=bucket, s3_region="us-east-1", s3_endpoint_url=moto_endpoint,
        s3_prefix="images/", s3_access_key_id="test", s3_secret_access_key="test",
        s3_max_attempts=1,
    )  # fmt: skip
    storage = S3Storage(config)
    for key in ("2026/12/05/imgjob_a/1/0.png", "2026/12/05/imgjob_a/1/1.png",
                "2026/12/05/imgjob_ab/1/0.png"):  # fmt: skip
        storage.put(key, PNG, "image/png")
    url = storage.url("2026/12/05/imgjob_a/1/0.png", 600)
    assert requests.get(url, timeout=10).content == PNG
    assert storage.delete_prefix("2026/12/05/imgjob_a") == 2
    with pytest.raises(NotFound):
        storage.get("2026/12/05/imgjob_a/1/0.png")
    gone = requests.get(url, timeout=10)  # S3's own answer to a deleted object
    assert gone.status_code == 404 and b"NoSuchKey" in gone.content
    assert storage.get("2026/12/05/imgjob_ab/1/0.png") == PNG
    assert storage_health(storage).ok
    missing = storage_health(S3Storage(dataclasses.replace(config, s3_bucket="nope")))
    assert not missing.ok and "nope does not exist" in missing.reason

    # The lifecycle rule: missing, installed next to the bucket's own rule, then wrong.
    other = {"ID": "theirs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled",
             "Expiration": {"Days": 30}}  # fmt: skip
    raw.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [other]})
    day = 86400
    assert storage.lifecycle_problems(day + 3600) == [
        f"bucket {bucket} has no lifecycle rule {LIFECYCLE_RULE_ID!r}"
    ]
    rule = storage.install_lifecycle(day + 3600)
    assert rule["Expiration"] == {"Days": 2} and rule["Filter"] == {"Prefix": "images/"}
    assert storage.lifecycle_problems(day + 3600) == []
    rules = raw.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert sorted(r["ID"] for r in rules) == sorted(["theirs", LIFECYCLE_RULE_ID])
    assert [p for p in storage.lifecycle_problems(5 * day) if "after 2 days, not 5" in p]

    # The CLI: check fails (exit 1), --install puts it, then the check passes.
    env = {
        "IMAGEGATE_STORAGE": "s3", "IMAGEGATE_S3_BUCKET": bucket,
        "IMAGEGATE_S3_ENDPOINT_URL": moto_endpoint, "IMAGEGATE_S3_REGION": "us-east-1",
        "IMAGEGATE_S3_ACCESS_KEY_ID": "test", "IMAGEGATE_S3_SECRET_ACCESS_KEY": "test",
        "IMAGEGATE_IMAGE_RETENTION_SECONDS": str(7 * day),
    }  # fmt: skip

    def lifecycle(*args: str) -> Result:
        return CliRunner().invoke(imagegate, ["storage", "lifecycle", *args], env=env)

    checked = lifecycle()
    assert checked.exit_code == 1 and "not 7 (IMAGEGATE_IMAGE_RETENTION_SECONDS)" in checked.output
    installed = lifecycle("--install")  # installs, then checks what the bucket now has
    assert installed.exit_code == 0 and "expires 'images/' after 7 days" in installed.output
    assert storage.lifecycle_problems(7 * day) == []


# -- the janitor's pass ---------------------------------------------------------------------


def _stored(storage: LocalStorage, retention: ImageRetention, folder: str, now: float) -> str:
    retention.track(folder, now=now)
    key = f"{folder}/1/0.png"
    storage.put(key, PNG, "image/png")
    return key


def test_the_janitor_deletes_what_is_due_and_only_that(client: redis.Redis, tmp_path: Path) -> None:
    storage = LocalStorage(StorageConfig(local_dir=str(tmp_path)))
    retention = ImageRetention(client, storage, 100)
    t0 = time.time()
    old = _stored(storage, retention, results_folder("imgjob_old", t0), t0)
    new = _stored(storage, retention, uploads_folder("imgjob_new", t0), t0 + 50)
    assert retention.sweep(batch=10, now=t0 + 99) == Sweep()
    assert retention.sweep(batch=10, now=t0 + 100.001) == Sweep(folders=1, objects=1)
    with pytest.raises(NotFound):
        storage.get(old)
    assert storage.get(new) == PNG and retention.pending() == 1
    # Noting a folder again only moves it later.
    retention.track(uploads_folder("imgjob_new", t0), after=1, now=t0)
    assert retention.due(limit=10, now=t0 + 149) == []
    # A janitor that died after deleting, before updating the index: done again, no error.
    storage.delete_prefix(uploads_folder("imgjob_new", t0))
    assert retention.sweep(batch=10, now=t0 + 150.001) == Sweep(folders=1, objects=0)
    assert retention.pending() == 0


def test_one_janitor_acts_at_a_time_and_a_pass_is_bounded(
    client: redis.Redis, tmp_path: Path
) -> None:
    storage = LocalStorage(StorageConfig(local_dir=str(tmp_path)))
    retention = ImageRetention(client, storage, 10)
    t0 = time.time()
    for i in range(5):
        _stored(storage, retention, results_folder(f"imgjob_{i}", t0), t0)
    holder = client.lock(LEASE, timeout=30, blocking=False)
    assert holder.acquire()
    assert retention.sweep(batch=10, now=t0 + 60) is None  # another janitor is acting
    assert retention.pending() == 5
    holder.release()
    janitor = Janitor(retention, interval_seconds=60, batch=2)
    assert retention.sweep(batch=2, now=t0 + 60) == Sweep(folders=2, objects=2)
    assert retention.pending() == 3 and client.get(LEASE) is None  # released after the pass
    assert janitor.run_once() == Sweep()  # Redis' clock: nothing is due for ten seconds yet


@pytest.mark.fast
def test_local_storage_lists_the_job_folders_of_days_before_a_day_oldest_first(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(StorageConfig(local_dir=str(tmp_path)))
    for key in ("2025/12/31/imgjob_b/1/0.png", "2026/01/02/imgjob_c/1/0.png",
                "2025/12/31/imgjob_a/1/0.png", "2026/01/03/imgjob_d/1/0.png",
                "2026/10/01/imgjob_e/1/0.png", "uploads/2026/01/01/imgjob_u/0.png"):  # fmt: skip
        storage.put(key, PNG, "image/png")
    (tmp_path / ".imagegate-storage-marker").write_text("token\n")
    (tmp_path / "2026" / "notes").mkdir()  # not a day: never listed
    assert storage.expired_folders("", "2026/01/03", 10) == [
        "2025/12/31/imgjob_a", "2025/12/31/imgjob_b", "2026/01/02/imgjob_c",
    ]  # fmt: skip
    assert storage.expired_folders("", "2026/01/03", 2) == [
        "2025/12/31/imgjob_a", "2025/12/31/imgjob_b",
    ]  # fmt: skip
    assert storage.expired_folders("uploads", "2026/01/02", 10) == ["uploads/2026/01/01/imgjob_u"]
    assert storage.expired_folders("", "2025/01/01", 10) == []
    assert storage.expired_folders("uploads", "2027/01/01", 10) == ["uploads/2026/01/01/imgjob_u"]


def test_the_backstop_deletes_folders_the_index_lost(client: redis.Redis, tmp_path: Path) -> None:
    storage = LocalStorage(StorageConfig(local_dir=str(tmp_path)))
    retention = ImageRetention(client, storage, 86400)
    now = time.time()
    long_ago = now - 86400 - BACKSTOP_MARGIN_SECONDS - 86400  # a whole day before the cutoff
    lost = [f"{results_folder('imgjob_lost', long_ago)}/1/0.png",
            f"{uploads_folder('imgjob_lost', long_ago)}/0.png"]  # fmt: skip
    for key in lost:
        storage.put(key, PNG, "image/png")  # never noted: Redis lost the index entry
    recent = _stored(storage, retention, results_folder("imgjob_recent", now - 3 * 86400), now)
    unnoted = f"{results_folder('imgjob_today', now)}/1/0.png"
    storage.put(unnoted, PNG, "image/png")
    assert retention.sweep(batch=10) == Sweep(folders=2, objects=2, orphans=2)
    for key in lost:
        with pytest.raises(NotFound):
            storage.get(key)
    assert storage.get(recent) == PNG and storage.get(unnoted) == PNG
    assert retention.sweep(batch=10) == Sweep()


def test_the_cli_runs_one_pass_and_says_what_it_did(
    client: redis.Redis, redis_server, tmp_path: Path
) -> None:
    env = {"IMAGEGATE_REDIS_URL": _db_url(redis_server, DB), "IMAGEGATE_STORAGE_DIR": str(tmp_path)}
    storage = LocalStorage(StorageConfig(local_dir=str(tmp_path)))
    retention = ImageRetention(client, storage, 10)
    past = time.time() - 3600  # noted an hour ago, due fifty minutes ago
    _stored(storage, retention, results_folder("imgjob_cli", past), past)
    _stored(storage, retention, results_folder("imgjob_kept", time.time()), time.time())
    result = CliRunner().invoke(imagegate, ["storage", "sweep"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output == "deleted 1 objects in 1 folders (0 failed); 1 folders still kept\n"
    health = CliRunner().invoke(imagegate, ["storage", "health"], env=env)
    assert health.exit_code == 0 and health.output.startswith("ok: local storage is writable (")


def test_a_folder_that_cannot_be_deleted_is_tried_again_later(
    client: redis.Redis, moto_endpoint: str
) -> None:
    # A bucket that does not exist: every deletion fails, as S3 refusing them would.
    storage = S3Storage(
        StorageConfig(
            backend="s3", s3_bucket=f"missing-{uuid.uuid4().hex[:8]}", s3_region="us-east-1",
            s3_endpoint_url=moto_endpoint, s3_access_key_id="test",
            s3_secret_access_key="test", s3_max_attempts=1,
        )
    )  # fmt: skip
    retention = ImageRetention(client, storage, 10)
    t0 = time.time()
    retention.track("2026/12/05/imgjob_stuck", now=t0)
    assert retention.sweep(batch=10, now=t0 + 10.001) == Sweep(failed=1)
    assert retention.pending() == 1
    assert client.zscore(INDEX, "2026/12/05/imgjob_stuck") >= t0 + 10 + RETRY_SECONDS - 1


# -- a full disk ------------------------------------------------------------------------


def test_a_full_disk_fails_the_job_with_503_and_refunds_it(
    redis_server, small_disk: Path, client: redis.Redis
) -> None:
    directory = small_disk / "inproc"
    directory.mkdir()
    settings = Settings.from_env({
        "IMAGEGATE_REDIS_URL": _db_url(redis_server, DB), "IMAGEGATE_STORAGE_DIR": str(directory),
        "IMAGEGATE_CATALOG_OVERLAYS": OVERLAY, "IMAGEGATE_STORAGE_MIN_FREE_BYTES": "65536",
    })  # fmt: skip
    ctx = build_context(settings)
    assert storage_health(ctx.storage).ok
    accounts = Accounts(ctx.redis, ctx.catalog)
    _, key = KeyStore(ctx.redis).create("retention", tier="test-billing")
    accounts.set_balance(key.id, 1_000_000)
    filler = fill(directory, leave=4096)
    try:
        health = storage_health(ctx.storage)
        assert not health.ok and "is full" in health.reason and health.free_bytes is not None
        job = admit_job(
            accounts, ctx.jobs, ctx.catalog, key, "test/priced-card", budget=30,
            size="512x512", response_format="url",
        )  # fmt: skip
        assert accounts.balance(key.id) == 1_000_000 - 10_000  # reserved
        assert run_job(job.id, ctx).status == "failed"
        error = ctx.jobs.get(job.id).error
        assert (error["status"], error["type"], error["code"]) == (
            503, "service_unavailable", STORAGE_FULL,
        )  # fmt: skip
        assert accounts.balance(key.id) == 1_000_000  # refunded in full
        assert not [p for p in directory.rglob("*") if p.name.startswith(".tmp-")]
        with pytest.raises(ServiceUnavailable) as info:  # an upload on the web side too
            ctx.storage.put("uploads/2026/12/05/imgjob_x/0.png", PNG * 8, "image/png")
        assert info.value.code == STORAGE_FULL
    finally:
        filler.unlink()
    assert storage_health(ctx.storage).ok
    job = admit_job(accounts, ctx.jobs, ctx.catalog, key, "test/priced-card", budget=30)
    assert run_job(job.id, ctx).status == "succeeded"
    stored = ctx.jobs.get(job.id).images[0].key
    folder = results_folder(job.id, job.created)
    assert stored.startswith(folder + "/") and folder in retention_members(client)
    ctx.retention.sweep(batch=10, now=time.time() + settings.image_retention + 1)
    with pytest.raises(NotFound):
        ctx.storage.get(stored)


def retention_members(client: redis.Redis) -> list[str]:
    return list(client.zrange(INDEX, 0, -1))


# -- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def disk_stack(
    run_dir: Path,
    redis_server,
    stack_env: dict[str, str],
    start_gateway: Callable[..., str],
    small_disk: Path,
) -> Iterator[dict[str, str]]:
    """A web process and a local-queue worker of their own (own Redis database, storage
    on the small disk), with URLs living 1 s and images 2 s, the janitor every 0.2 s."""
    env = {
        **stack_env,
        "IMAGEGATE_REDIS_URL": _db_url(redis_server, DB + 1),
        "IMAGEGATE_STORAGE_DIR": str(small_disk / "stack"),
        "IMAGEGATE_URL_TTL_SECONDS": "1",
        "IMAGEGATE_IMAGE_RETENTION_SECONDS": "2",
        "IMAGEGATE_JANITOR_INTERVAL_SECONDS": "0.2",
        "IMAGEGATE_STORAGE_MIN_FREE_BYTES": "65536",
    }
    connect(env["IMAGEGATE_REDIS_URL"]).flushdb()
    worker = start_worker(run_dir, env, "local", name="worker-retention")
    try:
        overrides = {k: v for k, v in env.items() if k not in stack_env or stack_env[k] != v}
        url = start_gateway("web-retention", **overrides)
        yield {**env, "url": url}
    finally:
        worker.stop()


def _key(stack: dict[str, str], name: str, tier: str, micros: int) -> tuple[Accounts, str, str]:
    """A key of the stack's own database (in process: the CLI costs a second a call)."""
    client = connect(stack["IMAGEGATE_REDIS_URL"])
    plaintext, record = KeyStore(client).create(name, tier=tier, unlimited=not micros)
    accounts = Accounts(client, Settings.from_env(stack).load_catalog())
    if micros:
        accounts.top_up(record.id, micros)
    return accounts, plaintext, record.id


def _openai(stack: dict[str, str], key: str) -> OpenAI:
    return OpenAI(api_key=key, base_url=f"{stack['url']}/v1", max_retries=0, timeout=60)


def _until(what: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < end, "never happened"
        time.sleep(0.1)


def _reference_png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_a_deleted_images_fresh_url_answers_404(disk_stack: dict[str, str]) -> None:
    key = _key(disk_stack, "retention-e2e", "internal", 0)[1]
    raw = _openai(disk_stack, key).images.with_raw_response.generate(
        model="test/edit", prompt="kept a while", size="64x64", response_format="url",
        extra_headers={"Prefer": "respond-async"}, extra_body={"image": _reference_png()},
    )  # fmt: skip
    accepted = raw.http_response.json()
    job_id = accepted["id"]
    auth = {"Authorization": f"Bearer {key}"}
    fetch = f"{disk_stack['url']}/v1/images/generations/{job_id}"

    def job() -> dict:
        return requests.get(fetch, headers=auth, timeout=10).json()

    index = connect(disk_stack["IMAGEGATE_REDIS_URL"])
    noted = uploads_folder(job_id, accepted["created"])
    assert index.zscore(INDEX, noted) is not None  # the web noted the upload's folder
    _until(lambda: job()["status"] == "succeeded")
    folder = Path(disk_stack["IMAGEGATE_STORAGE_DIR"]) / results_folder(job_id, accepted["created"])
    first = requests.get(job()["result"]["data"][0]["url"], timeout=10)
    assert first.status_code == 200 or not folder.exists()  # (the janitor may be quicker)
    _until(lambda: not folder.exists())  # the workers' janitor deleted it
    gone = requests.get(job()["result"]["data"][0]["url"], timeout=10)  # freshly signed
    assert gone.status_code == 404
    assert gone.json()["error"]["type"] == "not_found_error"
    _until(lambda: index.zscore(INDEX, noted) is None)  # the uploads' folder is done too
    assert not (Path(disk_stack["IMAGEGATE_STORAGE_DIR"]) / noted).exists()


def test_a_full_disk_answers_the_client_503_and_refunds(disk_stack: dict[str, str]) -> None:
    accounts, key, key_id = _key(disk_stack, "full-disk", "test-billing", 1_000_000)
    client = _openai(disk_stack, key)
    filler = fill(Path(disk_stack["IMAGEGATE_STORAGE_DIR"]), leave=4096)
    try:
        with pytest.raises(InternalServerError) as info:
            client.images.generate(model="test/priced-card", prompt="no room", size="512x512")
        assert info.value.status_code == 503
        assert info.value.body["type"] == "service_unavailable"
        assert info.value.body["code"] == STORAGE_FULL
        health = subprocess.run(
            [str(BIN / "imagegate"), "storage", "health"],
            env={**os.environ, **disk_stack}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert health.returncode == 1 and "is full" in health.stderr
    finally:
        filler.unlink()
    assert accounts.balance(key_id) == 1_000_000  # refunded in full
    assert client.images.generate(model="test/priced-card", prompt="room", size="64x64").data
