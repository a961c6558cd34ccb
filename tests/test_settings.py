"""Settings from the environment (shared/settings.py) and the catalog's refusal of unknown
keys at load (shared/catalog.py): in process, no servers."""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
from pathlib import Path

import pytest
from click.testing import CliRunner
from gunicorn import util
from pydantic import ValidationError

from shared.catalog import CatalogError, default_catalog_path, load_catalog
from shared.cli import main as imagegate
from shared.settings import PREFIX, Settings, SettingsError, _StorageVariables
from shared.storage.base import StorageConfig

pytestmark = pytest.mark.fast

REPO = Path(__file__).parents[1]


# --- defaults -------------------------------------------------------------------------


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()  # constructing reads nothing: the same defaults
    assert s.redis_url == s.effective_broker_url == "redis://127.0.0.1:6379/0"
    assert (s.listen_host, s.listen_port, s.listen_base_url) == (
        "0.0.0.0",
        8080,
        "http://127.0.0.1:8080",
    )
    assert (s.sync_budget_seconds, s.async_budget_seconds) == (120.0, 900.0)
    assert s.broker_visibility_timeout == 2 * 900 + 300
    assert s.webhook_retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    assert (s.web_processes, s.web_connections) == (0, 2000)
    assert (s.worker_processes, s.worker_concurrency, s.webhook_concurrency) == (0, 0, 16)
    assert s.max_body_bytes == 16 * 1024 * 1024 and s.upstream_max_retries == 3
    assert (s.allow_http_callbacks, s.strict_params) == (False, False)
    assert (s.allowed_hosts, s.catalog_overlays, s.log_level) == ((), (), "INFO")
    assert (s.storage.backend, s.storage.local_dir, s.storage.s3_prefix) == (
        "local",
        "var/images",
        "images/",
    )
    assert dict(s.credentials) == {} and dict(s.upstream_base_urls) == {}


def test_constructing_reads_nothing_and_from_env_reads_os_environ(monkeypatch) -> None:
    monkeypatch.setenv("IMAGEGATE_REDIS_URL", "redis://elsewhere:1/2")
    assert Settings().redis_url == "redis://127.0.0.1:6379/0"
    assert Settings(redis_url="redis://given:1/0").redis_url == "redis://given:1/0"
    assert Settings.from_env().redis_url == "redis://elsewhere:1/2"
    assert Settings.from_env({}).redis_url == "redis://127.0.0.1:6379/0"


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(ValidationError):
        s.redis_url = "redis://other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.credentials["OPENAI_API_KEY"] = "k"  # type: ignore[index]


# --- parsing --------------------------------------------------------------------------


def test_numbers_flags_lists_and_named_variables() -> None:
    s = Settings.from_env(
        {
            "IMAGEGATE_SYNC_BUDGET_SECONDS": "30.5",
            "IMAGEGATE_URL_TTL_SECONDS": "60",
            "IMAGEGATE_UPSTREAM_MAX_RETRIES": "0",
            "IMAGEGATE_WEB_PROCESSES": "3",
            "IMAGEGATE_WEB_CONNECTIONS": "500",
            "IMAGEGATE_ALLOW_HTTP_CALLBACKS": "Yes",
            "IMAGEGATE_STRICT_PARAMS": "1",
            "IMAGEGATE_ALLOWED_HOSTS": " Img.Example.com:8443, ,localhost ",
            "IMAGEGATE_WEBHOOK_RETRY_SCHEDULE": "1, 2.5,",
            "IMAGEGATE_PUBLIC_BASE_URL": "https://img.example.com/",
            "IMAGEGATE_LOG_LEVEL": "debug",
            "IMAGEGATE_HOST": "::",
            "PORT": "9000",
            "IMAGEGATE_BROKER_VISIBILITY_TIMEOUT_SECONDS": "77",
        }
    )
    assert (s.sync_budget_seconds, s.url_ttl_seconds, s.upstream_max_retries) == (30.5, 60, 0)
    assert (s.web_processes, s.web_connections) == (3, 500)
    assert s.allow_http_callbacks and s.strict_params
    assert s.allowed_hosts == ("img.example.com:8443", "localhost")
    assert s.webhook_retry_schedule == (1.0, 2.5)
    assert s.public_base_url == s.storage.public_base_url == "https://img.example.com"
    assert s.log_level == "DEBUG"
    assert s.listen_base_url == "http://[::1]:9000"
    assert s.broker_visibility_timeout == 77
    overlays = os.pathsep.join(["", "a.toml", "b.toml", ""])  # parsed, not loaded, here
    assert Settings(catalog_overlays=overlays).catalog_overlays == ("a.toml", "b.toml")


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "on", "maybe"])
def test_a_flag_is_on_only_for_1_true_or_yes(value: str) -> None:
    assert not Settings.from_env({"IMAGEGATE_STRICT_PARAMS": value}).strict_params


def test_blank_values_and_lowercase_names_are_unset() -> None:
    s = Settings.from_env(
        {
            "IMAGEGATE_REDIS_URL": "   ",
            "IMAGEGATE_SYNC_BUDGET_SECONDS": "",
            "imagegate_log_level": "debug",
            "IMAGEGATE_STORAGE_DIR": "  /srv/images  ",
        }
    )
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.sync_budget_seconds == 120.0
    assert s.log_level == "INFO"
    assert s.storage.local_dir == "/srv/images"


def test_the_scripts_own_variables_are_not_settings_and_are_ignored() -> None:
    # scripts/run-local.sh, scripts/lib.sh and bench/ set these for themselves.
    scripts = {
        "IMAGEGATE_LOCAL_REDIS_PORT": "6390",
        "IMAGEGATE_VENV": ".venv",
        "IMAGEGATE_PYTHON": "python3",
        "IMAGEGATE_BENCH_PEER": "litellm",
        "PORT": "8080",
        "IMAGEGATE_STORAGE_DIR": "/srv/imagegate/var/images",
    }
    local_dir = "/srv/imagegate/var/images"
    assert Settings.from_env(scripts) == Settings(storage=StorageConfig(local_dir=local_dir))


def test_a_field_that_names_its_variable_is_read_from_that_variable_only() -> None:
    s = Settings.from_env(
        {
            "IMAGEGATE_LISTEN_PORT": "1",
            "IMAGEGATE_LISTEN_HOST": "10.0.0.1",
            "IMAGEGATE_VISIBILITY_TIMEOUT_SECONDS": "5",
            "IMAGEGATE_CREDENTIALS": '{"OPENAI_API_KEY": "sk-injected"}',
            "IMAGEGATE_UPSTREAM_BASE_URLS": '{"openai": "http://injected"}',
        }
    )
    assert (s.listen_port, s.listen_host, s.visibility_timeout_seconds) == (8080, "0.0.0.0", 0)
    assert dict(s.credentials) == {} and dict(s.upstream_base_urls) == {}


def test_upstream_keys_and_base_urls() -> None:
    s = Settings.from_env(
        {
            "OPENAI_API_KEY": "sk-a, sk-b",
            "BFL_API_KEY": "",
            "UNRELATED_API_KEY": "x",
            "IMAGEGATE_BASE_URL_OPENAI": "http://127.0.0.1:9/v1/",
        }
    )
    assert dict(s.credentials) == {"OPENAI_API_KEY": "sk-a, sk-b"}  # only the catalog's names
    assert s.credentials_for("OPENAI_API_KEY") == ["sk-a", "sk-b"]
    assert s.base_url_for("OpenAI", "https://api.openai.com/v1") == "http://127.0.0.1:9/v1"
    assert s.base_url_for("bfl", "https://api.bfl.ai") == "https://api.bfl.ai"
    catalog = s.load_catalog()
    assert s.why_unusable(catalog.families["openai"]) == ""
    assert "BFL_API_KEY" in s.why_unusable(catalog.families["bfl"])


def test_s3_storage() -> None:
    s = Settings.from_env(
        {
            "IMAGEGATE_STORAGE": "s3",
            "IMAGEGATE_S3_BUCKET": "images",
            "IMAGEGATE_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
            "IMAGEGATE_S3_SECRET_ACCESS_KEY": "hidden",
        }
    )
    assert (s.storage.backend, s.storage.s3_bucket, s.storage.s3_region) == ("s3", "images", None)
    assert s.storage.s3_endpoint_url == "http://127.0.0.1:9000"
    assert "hidden" not in repr(s)


# --- values that cannot be used ---------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGEGATE_URL_TTL_SECONDS": "abc"}, "IMAGEGATE_URL_TTL_SECONDS='abc' is not a number"),
        ({"IMAGEGATE_MAX_BODY_BYTES": "1.5"}, "IMAGEGATE_MAX_BODY_BYTES='1.5' is not a number"),
        ({"IMAGEGATE_BREAKER_FAILURES": "0"}, "IMAGEGATE_BREAKER_FAILURES='0' must be at least 1"),
        (
            {"IMAGEGATE_HEARTBEAT_SECONDS": "0"},
            "IMAGEGATE_HEARTBEAT_SECONDS='0' must be more than 0",
        ),
        (
            {"IMAGEGATE_WORKER_PROCESSES": "-1"},
            "IMAGEGATE_WORKER_PROCESSES='-1' must be at least 0",
        ),
        ({"IMAGEGATE_WEB_CONNECTIONS": "lots"}, "IMAGEGATE_WEB_CONNECTIONS='lots' is not a number"),
        ({"IMAGEGATE_FALLBACK_MIN_SECONDS": "-1"}, "must be at least 0"),
        ({"PORT": "http"}, "PORT='http' is not a port number"),
        ({"PORT": "65536"}, "PORT='65536' is not a port number"),
        ({"IMAGEGATE_WEBHOOK_RETRY_SCHEDULE": "5,soon"}, "must be comma-separated seconds"),
        ({"IMAGEGATE_WEBHOOK_RETRY_SCHEDULE": "5,-1"}, "must not be negative"),
        ({"IMAGEGATE_STORAGE": "gcs"}, "IMAGEGATE_STORAGE='gcs' must be 'local' or 's3'"),
        ({"IMAGEGATE_STORAGE": "s3"}, "IMAGEGATE_S3_BUCKET is required when IMAGEGATE_STORAGE=s3"),
    ],
)
def test_a_value_that_cannot_be_used_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)  # one readable line, no pydantic dump


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(SettingsError, match=r"TTL_SECONDS='x'.*; .*MAX_RETRIES='-2'"):
        Settings.from_env(
            {"IMAGEGATE_URL_TTL_SECONDS": "x", "IMAGEGATE_UPSTREAM_MAX_RETRIES": "-2"}
        )


def test_the_admin_command_prints_the_error_without_a_traceback() -> None:
    result = CliRunner().invoke(imagegate, ["check"], env={"IMAGEGATE_HEARTBEAT_SECONDS": "x"})
    assert result.exit_code == 1
    assert result.output == "Error: IMAGEGATE_HEARTBEAT_SECONDS='x' is not a number\n"


# --- the docs' settings table and the web server's config ----------------------------------


def _variables(model: type) -> set[str]:
    return {
        field.validation_alias or PREFIX + name.upper()
        for name, field in model.model_fields.items()
        if name not in ("storage", "upstream_base_urls", "credentials")  # built by from_env
    }


def test_the_docs_settings_table_lists_every_variable_read() -> None:
    """The settings page of the docs site (docs/hooks.py builds it from the settings models
    and docs/settings_meanings.toml) has one row for every variable the settings read."""
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    documented = {row[0] for row in hooks.setting_rows()}
    assert _variables(Settings) | _variables(_StorageVariables) == documented
    page = hooks.settings_reference()
    assert all(f"`{name}`" in page for name in documented)


def test_gunicorn_takes_its_values_from_the_settings(monkeypatch) -> None:
    monkeypatch.setattr(util, "write_error", util.write_error)  # the config replaces it
    for name, value in {
        "PORT": "9123",
        "IMAGEGATE_HOST": "127.0.0.1",
        "IMAGEGATE_WEB_PROCESSES": "3",
        "IMAGEGATE_WEB_CONNECTIONS": "700",
        "IMAGEGATE_SYNC_BUDGET_SECONDS": "40.5",
    }.items():
        monkeypatch.setenv(name, value)
    conf = runpy.run_path(str(REPO / "api" / "gunicorn_conf.py"))
    assert conf["bind"] == "127.0.0.1:9123"
    assert (conf["workers"], conf["worker_connections"], conf["graceful_timeout"]) == (3, 700, 45)
    monkeypatch.setenv("IMAGEGATE_WEB_PROCESSES", "0")  # one per core
    assert runpy.run_path(str(REPO / "api" / "gunicorn_conf.py"))["workers"] == os.cpu_count()


def test_gunicorn_stops_with_the_message_before_forking(monkeypatch) -> None:
    monkeypatch.setattr(util, "write_error", util.write_error)
    monkeypatch.setenv("IMAGEGATE_WEB_PROCESSES", "many")
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "api" / "gunicorn_conf.py"))
    assert info.value.code == "imagegate: IMAGEGATE_WEB_PROCESSES='many' is not a number"


# --- a typo in the catalog stops the deployment ---------------------------------------------

FAMILY = """
[families.mine]
adapter = "openai"
base_url = "https://upstream.example/v1"
key_env = "MINE_API_KEY"
{extra}
"""
MODEL = """
[[models]]
id = "mine/model"
family = "{family}"
price = "0.001"
size_rule = {{ kind = "max_side", min = 64, max = 1024 }}
{extra}
"""


def test_a_typo_in_a_family_names_the_file_the_entry_and_the_key(tmp_path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        FAMILY.format(extra="max_concurent = 4") + MODEL.format(family="mine", extra="")
    )
    with pytest.raises(CatalogError) as info:
        Settings.from_env({"IMAGEGATE_CATALOG_PATH": str(catalog)})
    assert str(info.value) == (
        f"{catalog}: families.mine: unknown key 'max_concurent' (did you mean 'max_concurrent'?)"
    )
    catalog.write_text(
        FAMILY.format(extra="max_concurrent = 4") + MODEL.format(family="mine", extra="")
    )
    loaded = Settings.from_env({"IMAGEGATE_CATALOG_PATH": str(catalog)}).load_catalog()
    assert loaded.families["mine"].max_concurrent == 4


def test_the_admin_command_prints_a_catalog_typo(tmp_path) -> None:
    overlay = tmp_path / "mine.toml"
    overlay.write_text(FAMILY.format(extra="worker_concurency = 4"))
    env = {"IMAGEGATE_CATALOG_OVERLAYS": str(overlay)}
    result = CliRunner().invoke(imagegate, ["models"], env=env)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {overlay}: families.mine: unknown key 'worker_concurency' "
        "(did you mean 'worker_concurrency'?)\n"
    )


def test_a_typo_in_an_overlays_model_names_the_overlay(tmp_path) -> None:
    overlay = tmp_path / "mine.toml"
    overlay.write_text(MODEL.format(family="openai", extra='defualt_size = "512x512"'))
    env = {"IMAGEGATE_CATALOG_OVERLAYS": str(overlay)}
    with pytest.raises(CatalogError) as info:
        Settings.from_env(env)
    assert str(info.value) == (
        f"{overlay}: models[0] (mine/model): unknown key 'defualt_size' "
        "(did you mean 'default_size'?)"
    )
    assert str(default_catalog_path()) not in str(info.value)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("[familes.x]\n", "unknown key 'familes' (did you mean 'families'?)"),
        ("[accounts]\ndefault_teir = 'free'\n", "accounts: unknown key 'default_teir'"),
        ("[tiers.t]\nlimits = [{ models = ['dall-e-3'], per_mintue = 1 }]\n", "tiers.t.limits[0]"),
        (
            "[[virtual_models]]\nid = 'v'\ncandidates = [{ model = 'dall-e-3', wieght = 2 }]\n",
            "virtual_models[0] (v).candidates[0] (dall-e-3): unknown key 'wieght'",
        ),
        (MODEL.format(family="openai", extra="max_n = 0"), "(mine/model).max_n: "),
    ],
)
def test_every_table_refuses_what_it_does_not_know(tmp_path, text: str, found: str) -> None:
    overlay = tmp_path / "overlay.toml"
    overlay.write_text(text)
    with pytest.raises(CatalogError, match=re.escape(f"{overlay}: ")) as info:
        load_catalog(None, (str(overlay),))
    assert found in str(info.value)


def test_options_stay_the_adapters_business(tmp_path) -> None:
    overlay = tmp_path / "overlay.toml"
    overlay.write_text(MODEL.format(family="openai", extra='options = { anything = "goes" }'))
    model = load_catalog(None, (str(overlay),)).models["mine/model"]
    assert dict(model.options) == {"anything": "goes"}
