"""Deployment settings: one typed, frozen object built from ``IMAGEGATE_*`` variables.

This is the only module that reads the environment, in :meth:`Settings.from_env`.
Each field is read from ``IMAGEGATE_<FIELD NAME>`` unless it names its variable
(``PORT``, ``IMAGEGATE_HOST``); an empty or blank value counts as unset. Besides
these it reads the upstream credentials whose names the catalog lists (``key_env``
of each family, e.g. ``OPENAI_API_KEY``), and per-family base URL overrides
``IMAGEGATE_BASE_URL_<FAMILY>`` (e.g. ``IMAGEGATE_BASE_URL_OPENAI``) so a
deployment can point a family at a proxy, a regional host or a simulator.
A value that cannot be used raises :class:`SettingsError` naming the variable.

``Settings(...)`` itself reads nothing: the defaults below and the arguments given.

Every variable is documented in the settings table of the docs site (docs/hooks.py builds it
from these models and docs/settings_meanings.toml).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    InstanceOf,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from shared.catalog import Catalog, Family, load_catalog
from shared.storage.base import StorageConfig

PREFIX = "IMAGEGATE_"
DAY_SECONDS = 86400
BASE_URL_PREFIX = PREFIX + "BASE_URL_"


class SettingsError(ValueError):
    """An environment variable has a value that cannot be used."""


def _flag(value: Any) -> bool:
    """On for ``1``, ``true`` or ``yes`` (any case); any other value is off."""
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def _split(separator: str, lower: bool = False) -> BeforeValidator:
    """A list written as one variable: the non-blank items between ``separator``."""

    def split(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        items = (item.strip() for item in value.split(separator))
        return tuple(item.lower() if lower else item for item in items if item)

    return BeforeValidator(split)


def _seconds_list(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        seconds = tuple(float(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise ValueError("must be comma-separated seconds") from None
    if any(x < 0 for x in seconds):
        raise ValueError("must not be negative")
    return seconds


def _port(value: Any) -> Any:
    if isinstance(value, str) and not (value.isdigit() and 0 < int(value) < 65536):
        raise ValueError("is not a port number")
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]
Seconds = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]
Cap = Annotated[int, Field(ge=0)]  # 0: no cap, or planned (see the field)
Hosts = Annotated[tuple[str, ...], NoDecode, _split(",", lower=True)]
BaseUrl = Annotated[str, AfterValidator(lambda url: url.rstrip("/"))]
FrozenMap = Annotated[Mapping[str, str], AfterValidator(lambda m: MappingProxyType(dict(m)))]


class _Variables(BaseSettings):
    """Settings read by :meth:`read` from a mapping of environment variables."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, extra="forbid", frozen=True, validate_by_name=True
    )

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: Any, **_: Any
    ) -> tuple[Any, ...]:
        return (init_settings,)  # constructing reads nothing: read() passes the environment

    @classmethod
    def read(cls, environ: Mapping[str, str], **given: Any) -> Any:
        """The variables of ``environ`` (``given`` instead where set), or SettingsError."""
        try:
            return cls(**{**_Environment(cls, environ)(), **given})
        except ValidationError as exc:
            raise SettingsError("; ".join(_explain(cls, e) for e in exc.errors())) from None


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, over a given mapping rather than os.environ.

    Values are stripped; names match as written, upper case. A field that names
    its variable (``validation_alias``) is read from that variable only.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            name.lower(): value.strip()
            for name, value in self._environ.items()
            if name.isupper() and value.strip()
        }

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in _NOT_FROM_ENV:
            return None, field_name, False
        if isinstance(field.validation_alias, str):
            return self.env_vars.get(field.validation_alias.lower()), field.validation_alias, False
        return super().get_field_value(field, field_name)


_NOT_FROM_ENV = frozenset({"storage", "upstream_base_urls", "credentials"})  # see from_env
# What is wrong with a value, by pydantic's error type (formatted with the error's ctx).
_REASONS = {
    "value_error": "{error}",  # our validators' own words
    "int_parsing": "is not a number",
    "float_parsing": "is not a number",
    "int_from_float": "is not a number",
    "finite_number": "is not a number",
    "greater_than_equal": "must be at least {ge:g}",
    "greater_than": "must be more than {gt:g}",
    "literal_error": "must be {expected}",
}


def _explain(model: type[BaseSettings], error: Any) -> str:
    """One validation error as the variable, its value and what is wrong with it."""
    reason = _REASONS.get(error["type"], "is not valid: {msg}")
    reason = reason.format(**error.get("ctx", {}), msg=error["msg"])
    if not error["loc"]:  # a check across variables: its message says it all
        return reason
    name = str(error["loc"][0])
    field = model.model_fields.get(name)
    variable = name if field is None else field.validation_alias or PREFIX + name.upper()
    return f"{variable}={error['input']!r} {reason}"


class _StorageVariables(_Variables):
    """The ``IMAGEGATE_STORAGE*``, ``IMAGEGATE_S3_*`` variables: a StorageConfig's fields."""

    backend: Literal["local", "s3"] = Field(
        StorageConfig.backend, validation_alias="IMAGEGATE_STORAGE"
    )
    local_dir: str = Field(StorageConfig.local_dir, validation_alias="IMAGEGATE_STORAGE_DIR")
    public_base_url: BaseUrl = ""
    s3_bucket: str = ""
    s3_region: str | None = None
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_prefix: str = StorageConfig.s3_prefix
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = Field(None, repr=False)
    local_min_free_bytes: Annotated[int, Field(ge=0)] = Field(
        StorageConfig.local_min_free_bytes, validation_alias="IMAGEGATE_STORAGE_MIN_FREE_BYTES"
    )

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> _StorageVariables:
        if self.backend == "s3" and not self.s3_bucket:
            raise ValueError(f"{PREFIX}S3_BUCKET is required when {PREFIX}STORAGE=s3")
        return self


class Settings(_Variables):
    """The deployment's settings (see the module docstring); build it with :meth:`from_env`."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = ""  # empty: same as redis_url
    # The SQL system of record (shared/db.py): SQLite in a file (relative to the working
    # directory) or postgresql+psycopg://user:password@host/db.
    database_url: str = Field("sqlite:///var/imagegate.sqlite3", repr=False)  # may hold a password
    # Run the migrations when a process that uses the database starts (web, sink); off:
    # `imagegate db upgrade` at deploy time.
    database_migrate: Flag = True
    sink_interval_seconds: Seconds = 1.0  # the sink's pause when nothing is left to move
    sink_batch: Count = 1000  # ledger entries per SQL transaction
    storage: InstanceOf[StorageConfig] = Field(default_factory=StorageConfig)
    # Base of image URLs and webhook payloads. Empty: the request's Host if it is one of
    # allowed_hosts, else the listen address (listen_host:listen_port); never any Host.
    public_base_url: BaseUrl = ""
    allowed_hosts: Hosts = ()  # Host header values (host[:port]) URLs may use
    listen_host: str = Field("0.0.0.0", validation_alias="IMAGEGATE_HOST")  # the web's
    listen_port: Annotated[int, BeforeValidator(_port)] = Field(8080, validation_alias="PORT")
    url_ttl_seconds: Count = 3600
    sync_budget_seconds: Seconds = 120.0
    async_budget_seconds: Seconds = 900.0
    idempotency_ttl_seconds: Count = 86400
    webhook_timeout_seconds: Seconds = 10.0
    webhook_concurrency_per_key: Cap = 4  # deliveries of one API key in flight at once
    # Seconds after the first failed delivery of each retry (Standard Webhooks' example).
    webhook_retry_schedule: Annotated[
        tuple[float, ...], NoDecode, BeforeValidator(_seconds_list)
    ] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    allow_http_callbacks: Flag = False  # webhook and image URLs must be https unless set
    allowed_internal_hosts: Hosts = ()  # hosts exempt from the SSRF address check
    breaker_failures: Count = 5  # upstream failures within the window that open a breaker
    breaker_window_seconds: Seconds = 60.0
    breaker_cooldown_seconds: Seconds = 30.0  # open this long, then one trial (half-open)
    # Hand a job to the next candidate only with this much left.
    fallback_min_seconds: Annotated[float, Field(ge=0)] = 3.0
    job_retention_seconds: Count = 86400
    # Stored images and uploaded reference images are deleted this long after they were
    # stored (shared/retention.py); 0: a day past the URL lifetime (url_ttl_seconds).
    image_retention_seconds: Cap = 0
    # The janitor that deletes them runs in every worker process; one acts at a time
    # (a Redis lease), every janitor_interval_seconds, at most janitor_batch jobs a pass.
    janitor_interval_seconds: Seconds = 60.0
    janitor_batch: Count = 200
    # Liveness (see shared/jobs.py): a running job whose worker stopped beating for
    # job_stale_seconds is taken over; workers beat every heartbeat_seconds and reap
    # every reaper_interval_seconds; a job not sent to a queue within enqueue_grace_seconds
    # of its creation is sent by a reaper; a sent job still queued resend_after_seconds
    # later is sent once more.
    job_stale_seconds: Seconds = 15.0
    heartbeat_seconds: Seconds = 3.0
    reaper_interval_seconds: Seconds = 5.0
    enqueue_grace_seconds: Seconds = 10.0
    resend_after_seconds: Seconds = 60.0
    catalog_path: str = ""  # empty: the catalog shipped with the package
    # TOML files merged on top, in order (os.pathsep-separated).
    catalog_overlays: Annotated[tuple[str, ...], NoDecode, _split(os.pathsep)] = ()
    default_model: str = "local/testcard"
    # Refuse OpenAI clients' tuning fields (user, quality, style) a model does not take,
    # instead of mapping or ignoring them (also per key: `imagegate keys strict-params`).
    strict_params: Flag = False
    # Images a job did not deliver go back to the rate-limit windows they were counted in
    # (off: they stay counted, the upstream's capacity was used); see shared/billing.py.
    limits_return_failed_images: Flag = False
    # GET /v1/usage also shows what the upstreams charged and the margin (an operator's
    # own keys; a reseller's customers need not see it). The CLI always shows them.
    usage_shows_cost: Flag = False
    max_body_bytes: Count = 16 * 1024 * 1024
    # Request-body bytes parsed per second per key (a token bucket; see api.parse_limit).
    parse_bytes_per_second: Count = 64 * 1024 * 1024
    max_image_bytes: Count = 50 * 1024 * 1024
    # Largest reference image a client may send inline (``image`` as a data: URL), decoded.
    max_reference_image_bytes: Count = 10 * 1024 * 1024
    # Largest job spec kept in Redis (the request and its routes, never image bytes).
    max_job_spec_bytes: Count = 512 * 1024
    # Uploads of POST /v1/images/edits and /variations (multipart files, or JSON with
    # data: URLs): the whole body, each file, and how many files (16 images and a mask).
    max_upload_bytes: Count = 64 * 1024 * 1024
    max_upload_file_bytes: Count = 50 * 1024 * 1024
    max_upload_files: Count = 17
    # Streaming (stream=true, api/streaming.py): an SSE comment this often while nothing
    # else is sent, so proxies that cut idle connections keep a long generation open; and
    # the largest partial image relayed from worker to web (shared/progress.py), decoded.
    stream_keepalive_seconds: Seconds = 15.0
    stream_partial_image_max_bytes: Count = 4 * 1024 * 1024
    upstream_attempt_timeout_seconds: Seconds = 90.0
    upstream_max_retries: Cap = 3
    signing_secret: str = Field("", repr=False)  # empty: made once at random, kept in Redis
    # 0: derived from the budget (see broker_visibility_timeout).
    visibility_timeout_seconds: Cap = Field(
        0, validation_alias="IMAGEGATE_BROKER_VISIBILITY_TIMEOUT_SECONDS"
    )
    # Admin API (api/admin.py): failed admin authentications a client address may make
    # per minute before all its admin requests get 429 for the rest of it (0: no limit),
    # and origins (scheme://host[:port]) besides the gateway's own that may call it.
    admin_auth_failures_per_minute: Cap = 20
    admin_allowed_origins: Hosts = ()
    # Operator console (api/console.py): a signed-in session ends after this long unused.
    console_idle_timeout_seconds: Annotated[int, Field(ge=60, le=86400)] = 1800
    log_level: Annotated[str, AfterValidator(str.upper)] = "INFO"
    # Observability (shared/metrics.py, shared/logs.py, api/app.py's /readyz).
    # Where this host's processes keep their Prometheus samples; empty: a directory
    # under the system's temporary directory.
    metrics_dir: str = ""
    log_format: Literal["text", "json"] = "text"
    log_prompts: Flag = False  # JSON logs: may a line carry a job's prompt?
    tracing: Literal["off", "otlp"] = "off"  # OpenTelemetry (shared/tracing.py, otel extra)
    # Families /readyz wants a live worker for; empty: those this process has a key for.
    ready_families: Annotated[tuple[str, ...], NoDecode, _split(",")] = ()
    # Worker pools (workers/pool.py): 0 = planned from the catalog per consumed queue.
    worker_concurrency: Cap = 0
    worker_processes: Cap = 0  # per Procfile worker line (workers/launch.py); 0 = 2 / 1
    worker_uncapped_concurrency: Count = 2000  # jobs in flight per process, family without a cap
    webhook_concurrency: Count = 16
    # The web front-end (api/gunicorn_conf.py): processes (0 = one per core) and the
    # requests each holds at once.
    web_processes: Cap = 0
    web_connections: Count = 2000
    upstream_base_urls: FrozenMap = Field(default_factory=lambda: MappingProxyType({}))
    credentials: FrozenMap = Field(default_factory=lambda: MappingProxyType({}), repr=False)

    @model_validator(mode="after")
    def _images_outlive_their_urls(self) -> Settings:
        if self.image_retention_seconds and self.image_retention_seconds < self.url_ttl_seconds:
            raise ValueError(
                f"{PREFIX}IMAGE_RETENTION_SECONDS={self.image_retention_seconds} must be at "
                f"least {PREFIX}URL_TTL_SECONDS={self.url_ttl_seconds}: an image must not be "
                "deleted while a URL given for it is still valid"
            )
        return self

    @property
    def image_retention(self) -> int:
        """Seconds a stored image (or upload) is kept: the setting, or a day past the URL
        lifetime. With the default job retention (a day), a job's record goes first."""
        return self.image_retention_seconds or self.url_ttl_seconds + DAY_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of ``environ`` (default: ``os.environ``).

        SettingsError names a variable whose value cannot be used; CatalogError
        a catalog (and the entry) that cannot be loaded.
        """
        env = os.environ if environ is None else environ
        base_urls = {
            name[len(BASE_URL_PREFIX) :].lower(): value.rstrip("/")
            for name, value in env.items()
            if name.startswith(BASE_URL_PREFIX) and value
        }
        storage = StorageConfig(**_StorageVariables.read(env).model_dump())
        settings = cls.read(env, storage=storage, upstream_base_urls=base_urls)
        names = settings.load_catalog().key_env_names()
        credentials = {name: env[name] for name in names if env.get(name)}
        return settings.model_copy(update={"credentials": MappingProxyType(credentials)})

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def listen_base_url(self) -> str:
        """``http://`` + the listen address, as a base URL (a wildcard address as loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(
            self.listen_host, self.listen_host
        )
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.listen_port}"

    @property
    def broker_visibility_timeout(self) -> int:
        """Seconds before Redis hands an unacknowledged task to another worker.

        Above the longest job deadline, so a slow job is never run twice by
        the broker while its first run is still within its budget.
        """
        longest = max(self.sync_budget_seconds, self.async_budget_seconds)
        return self.visibility_timeout_seconds or int(2 * longest) + 300

    def load_catalog(self) -> Catalog:
        return load_catalog(self.catalog_path or None, self.catalog_overlays)

    def base_url_for(self, family_name: str, catalog_base_url: str) -> str:
        return self.upstream_base_urls.get(family_name.lower(), catalog_base_url)

    def credential(self, key_env: str | None) -> str | None:
        return self.credentials.get(key_env) if key_env else None

    def why_unusable(self, family: Family) -> str:
        """Why this deployment cannot serve the family's models, or "" when it can."""
        if not family.available:
            return family.unavailable_reason or "the family is switched off in the catalog"
        if family.key_env and not self.credential(family.key_env):
            return (
                f"the gateway has no upstream key for '{family.name}' "
                f"(set the environment variable {family.key_env})"
            )
        return ""

    def credentials_for(self, key_env: str | None) -> list[str]:
        """Every upstream key in the variable: several, comma-separated, are used in rotation."""
        value = self.credential(key_env) or ""
        return [k.strip() for k in value.split(",") if k.strip()]
