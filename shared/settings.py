"""Deployment settings: one typed, frozen object built from ``IMAGEGATE_*`` variables.

This is the only module that reads the environment. Besides the ``IMAGEGATE_*``
variables it reads the upstream credentials whose names the catalog lists
(``key_env`` of each family, e.g. ``OPENAI_API_KEY``), and per-family base URL
overrides ``IMAGEGATE_BASE_URL_<FAMILY>`` (e.g. ``IMAGEGATE_BASE_URL_OPENAI``)
so a deployment can point a family at a proxy, a regional host or a simulator.

Every variable is documented in the README's "Settings" table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from shared.catalog import Catalog, Family, load_catalog
from shared.storage.base import StorageConfig

PREFIX = "IMAGEGATE_"
BASE_URL_PREFIX = PREFIX + "BASE_URL_"


class SettingsError(ValueError):
    """An environment variable has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = ""  # empty: same as redis_url
    storage: StorageConfig = field(default_factory=StorageConfig)
    # Base of image URLs and webhook payloads. Empty: the request's Host if it is one of
    # allowed_hosts, else the listen address (listen_host:listen_port); never any Host.
    public_base_url: str = ""
    allowed_hosts: tuple[str, ...] = ()  # Host header values (host[:port]) URLs may use
    listen_host: str = "0.0.0.0"  # IMAGEGATE_HOST, where the web process listens
    listen_port: int = 8080  # PORT
    url_ttl_seconds: int = 3600
    sync_budget_seconds: float = 120.0
    async_budget_seconds: float = 900.0
    idempotency_ttl_seconds: int = 86400
    webhook_timeout_seconds: float = 10.0
    webhook_concurrency_per_key: int = 4  # deliveries of one API key in flight at once; 0: no cap
    # Seconds after the first failed delivery of each retry (Standard Webhooks' example).
    webhook_retry_schedule: tuple[float, ...] = (
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        50400,
        72000,
        86400,
    )
    allow_http_callbacks: bool = False  # webhook and image URLs must be https unless set
    allowed_internal_hosts: tuple[str, ...] = ()  # hosts exempt from the SSRF address check
    breaker_failures: int = 5  # upstream failures within the window that open a breaker
    breaker_window_seconds: float = 60.0
    breaker_cooldown_seconds: float = 30.0  # open this long, then one trial (half-open)
    fallback_min_seconds: float = 3.0  # hand a job to the next candidate only with this much left
    job_retention_seconds: int = 86400
    # Liveness (see shared/jobs.py): a running job whose worker stopped beating for
    # job_stale_seconds is taken over; workers beat every heartbeat_seconds and reap
    # every reaper_interval_seconds; a job not sent to a queue within enqueue_grace_seconds
    # of its creation is sent by a reaper; a sent job still queued resend_after_seconds
    # later is sent once more.
    job_stale_seconds: float = 15.0
    heartbeat_seconds: float = 3.0
    reaper_interval_seconds: float = 5.0
    enqueue_grace_seconds: float = 10.0
    resend_after_seconds: float = 60.0
    catalog_path: str = ""  # empty: the catalog shipped with the package
    catalog_overlays: tuple[str, ...] = ()  # TOML files merged on top, in order
    default_model: str = "local/testcard"
    # Refuse OpenAI clients' tuning fields (user, quality, style) a model does not take,
    # instead of mapping or ignoring them (also per key: `imagegate keys strict-params`).
    strict_params: bool = False
    max_body_bytes: int = 16 * 1024 * 1024
    max_image_bytes: int = 50 * 1024 * 1024
    # Largest reference image a client may send inline (``image`` as a data: URL), decoded.
    max_reference_image_bytes: int = 10 * 1024 * 1024
    # Largest job spec kept in Redis (the request and its routes, never image bytes).
    max_job_spec_bytes: int = 512 * 1024
    upstream_attempt_timeout_seconds: float = 90.0
    upstream_max_retries: int = 3
    signing_secret: str = ""  # empty: a random secret is created once and kept in Redis
    visibility_timeout_seconds: int = 0  # 0: derived from the budget (see below)
    log_level: str = "INFO"
    # Worker pools (workers/pool.py): 0 = planned from the catalog per consumed queue.
    worker_concurrency: int = 0
    worker_processes: int = 0  # per Procfile worker line (workers/launch.py); 0 = 2 / 1
    worker_uncapped_concurrency: int = 2000  # jobs in flight per process, family without a cap
    webhook_concurrency: int = 16
    upstream_base_urls: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    credentials: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str, default: str = "") -> str:
            return env.get(PREFIX + name, default).strip()

        def number(name: str, default: float, kind: type = float, minimum: float = 1e-9) -> float:
            raw = get(name)
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(f"{PREFIX}{name}={raw!r} is not a number") from None
            if value < minimum:
                raise SettingsError(f"{PREFIX}{name} must be at least {minimum:g}")
            return value

        catalog_path = get("CATALOG_PATH")
        overlays = tuple(p for p in get("CATALOG_OVERLAYS").split(os.pathsep) if p)
        catalog = load_catalog(catalog_path or None, overlays)
        credentials = {name: env[name] for name in catalog.key_env_names() if env.get(name)}
        base_urls = {
            name[len(BASE_URL_PREFIX) :].lower(): value.rstrip("/")
            for name, value in env.items()
            if name.startswith(BASE_URL_PREFIX) and value
        }
        schedule_raw = get("WEBHOOK_RETRY_SCHEDULE")
        try:
            schedule = (
                tuple(float(x) for x in schedule_raw.split(",") if x.strip())
                if schedule_raw
                else cls.webhook_retry_schedule
            )
        except ValueError:
            raise SettingsError(
                f"{PREFIX}WEBHOOK_RETRY_SCHEDULE must be comma-separated seconds"
            ) from None
        if any(x < 0 for x in schedule):
            raise SettingsError(f"{PREFIX}WEBHOOK_RETRY_SCHEDULE must not be negative")
        backend = get("STORAGE", "local")
        if backend not in ("local", "s3"):
            raise SettingsError(f"{PREFIX}STORAGE must be 'local' or 's3', not {backend!r}")
        storage = StorageConfig(
            backend=backend,
            local_dir=get("STORAGE_DIR", "var/images"),
            public_base_url=get("PUBLIC_BASE_URL").rstrip("/"),
            s3_bucket=get("S3_BUCKET"),
            s3_region=get("S3_REGION") or None,
            s3_endpoint_url=get("S3_ENDPOINT_URL") or None,
            s3_prefix=get("S3_PREFIX", "images/"),
            s3_access_key_id=get("S3_ACCESS_KEY_ID") or None,
            s3_secret_access_key=get("S3_SECRET_ACCESS_KEY") or None,
        )
        if backend == "s3" and not storage.s3_bucket:
            raise SettingsError(f"{PREFIX}S3_BUCKET is required when {PREFIX}STORAGE=s3")
        return cls(
            redis_url=get("REDIS_URL", cls.redis_url),
            broker_url=get("BROKER_URL"),
            storage=storage,
            public_base_url=storage.public_base_url,
            url_ttl_seconds=int(number("URL_TTL_SECONDS", cls.url_ttl_seconds, int)),
            sync_budget_seconds=number("SYNC_BUDGET_SECONDS", cls.sync_budget_seconds),
            async_budget_seconds=number("ASYNC_BUDGET_SECONDS", cls.async_budget_seconds),
            idempotency_ttl_seconds=int(
                number("IDEMPOTENCY_TTL_SECONDS", cls.idempotency_ttl_seconds, int)
            ),
            webhook_timeout_seconds=number("WEBHOOK_TIMEOUT_SECONDS", cls.webhook_timeout_seconds),
            webhook_retry_schedule=schedule,
            webhook_concurrency_per_key=int(
                number("WEBHOOK_CONCURRENCY_PER_KEY", cls.webhook_concurrency_per_key, int, 0)
            ),
            allow_http_callbacks=get("ALLOW_HTTP_CALLBACKS").lower() in ("1", "true", "yes"),
            breaker_failures=int(number("BREAKER_FAILURES", cls.breaker_failures, int)),
            breaker_window_seconds=number("BREAKER_WINDOW_SECONDS", cls.breaker_window_seconds),
            breaker_cooldown_seconds=number(
                "BREAKER_COOLDOWN_SECONDS", cls.breaker_cooldown_seconds
            ),
            fallback_min_seconds=number(
                "FALLBACK_MIN_SECONDS", cls.fallback_min_seconds, minimum=0
            ),
            allowed_hosts=tuple(
                h.strip().lower() for h in get("ALLOWED_HOSTS").split(",") if h.strip()
            ),
            listen_host=get("HOST", cls.listen_host),
            listen_port=_port(env.get("PORT", ""), cls.listen_port),
            allowed_internal_hosts=tuple(
                h.strip().lower() for h in get("ALLOWED_INTERNAL_HOSTS").split(",") if h.strip()
            ),
            job_retention_seconds=int(
                number("JOB_RETENTION_SECONDS", cls.job_retention_seconds, int)
            ),
            job_stale_seconds=number("JOB_STALE_SECONDS", cls.job_stale_seconds),
            heartbeat_seconds=number("HEARTBEAT_SECONDS", cls.heartbeat_seconds),
            reaper_interval_seconds=number("REAPER_INTERVAL_SECONDS", cls.reaper_interval_seconds),
            enqueue_grace_seconds=number("ENQUEUE_GRACE_SECONDS", cls.enqueue_grace_seconds),
            resend_after_seconds=number("RESEND_AFTER_SECONDS", cls.resend_after_seconds),
            catalog_path=catalog_path,
            catalog_overlays=overlays,
            default_model=get("DEFAULT_MODEL", cls.default_model),
            strict_params=get("STRICT_PARAMS").lower() in ("1", "true", "yes"),
            max_body_bytes=int(number("MAX_BODY_BYTES", cls.max_body_bytes, int)),
            max_image_bytes=int(number("MAX_IMAGE_BYTES", cls.max_image_bytes, int)),
            max_reference_image_bytes=int(
                number("MAX_REFERENCE_IMAGE_BYTES", cls.max_reference_image_bytes, int)
            ),
            max_job_spec_bytes=int(number("MAX_JOB_SPEC_BYTES", cls.max_job_spec_bytes, int)),
            upstream_attempt_timeout_seconds=number(
                "UPSTREAM_ATTEMPT_TIMEOUT_SECONDS", cls.upstream_attempt_timeout_seconds
            ),
            upstream_max_retries=int(
                number("UPSTREAM_MAX_RETRIES", cls.upstream_max_retries, int, minimum=0)
            ),
            signing_secret=get("SIGNING_SECRET"),
            visibility_timeout_seconds=int(
                number("BROKER_VISIBILITY_TIMEOUT_SECONDS", 0, int, minimum=0)
            ),
            log_level=get("LOG_LEVEL", cls.log_level).upper(),
            worker_concurrency=int(number("WORKER_CONCURRENCY", 0, int, minimum=0)),
            worker_processes=int(number("WORKER_PROCESSES", 0, int, minimum=0)),
            worker_uncapped_concurrency=int(
                number("WORKER_UNCAPPED_CONCURRENCY", cls.worker_uncapped_concurrency, int)
            ),
            webhook_concurrency=int(number("WEBHOOK_CONCURRENCY", cls.webhook_concurrency, int)),
            upstream_base_urls=MappingProxyType(base_urls),
            credentials=MappingProxyType(credentials),
        )

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


def _port(raw: str, default: int) -> int:
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SettingsError(f"PORT={raw!r} is not a port number")
    return int(raw)
