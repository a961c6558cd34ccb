"""The ``imagegate`` admin command.

    imagegate keys create --name demo [--tier free] [--balance 5.00 | --balance unlimited]
    imagegate keys list
    imagegate keys topup KEY_ID 10.00
    imagegate keys set-tier KEY_ID premium
    imagegate keys strict-params KEY_ID on|off
    imagegate keys budget KEY_ID [--day 5.00|none] [--month 50.00|none]
    imagegate keys usage KEY_ID [--ledger]
    imagegate keys webhook-secret KEY_ID [--rotate]
    imagegate keys revoke KEY_ID
    imagegate admin-keys create --name ops [--scope read|write]
    imagegate admin-keys list
    imagegate admin-keys revoke ADMIN_KEY_ID
    imagegate storage health              # can images be stored now (disk full? bucket?)
    imagegate storage lifecycle [--install]   # S3: check (or install) the expiry rule
    imagegate storage sweep               # one image-janitor pass now
    imagegate db upgrade                  # run the SQL migrations (IMAGEGATE_DATABASE_URL)
    imagegate sink                        # move ledger entries Redis -> SQL (Procfile line)
    imagegate ledger verify [KEY_ID...]   # each balance against its ledger in SQL
    imagegate models                      # the catalog, with what is usable right now
    imagegate check                       # settings, catalog, Redis and the database reachable
    imagegate metrics-serve [--port 9464]  # Prometheus metrics of this host's processes

Settings come from the same ``IMAGEGATE_*`` environment as the services.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import click
import redis
import sqlalchemy

from shared import db, logs
from shared.adminkeys import AdminKeyStore, Scope
from shared.billing import Accounts, format_money, parse_money
from shared.catalog import CatalogError
from shared.errors import GatewayError, NotFound
from shared.health import Breakers, policy_from
from shared.history import History
from shared.keys import KeyStore
from shared.redis_client import connect
from shared.retention import ImageRetention
from shared.route import model_breaker
from shared.settings import Settings, SettingsError
from shared.sink import record_audit, serve
from shared.storage import build_storage, storage_for, storage_health


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except (SettingsError, CatalogError) as exc:
        raise click.ClickException(str(exc)) from exc


def _keys() -> KeyStore:
    return KeyStore(connect(_settings().redis_url))


def _accounts() -> Accounts:
    settings = _settings()
    return Accounts(connect(settings.redis_url), settings.load_catalog())


def _history() -> History:
    settings = _settings()
    engine = db.ensure_schema(settings.database_url, settings.database_migrate)
    return History(connect(settings.redis_url), engine)


def _audit(key_id: str, action: str, **detail: object) -> None:
    record_audit(connect(_settings().redis_url), key_id, action, **detail)


def _tier_name(name: str | None) -> str:
    catalog = _settings().load_catalog()
    name = name or catalog.default_tier
    if name not in catalog.tiers:
        raise click.BadParameter(
            f"no tier '{name}'; tiers: {', '.join(catalog.tiers)}", param_hint="--tier"
        )
    return name


def _money(text: str, hint: str) -> int:
    try:
        return parse_money(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from exc


@click.group()
def main() -> None:
    """Administer an imagegate deployment."""
    try:
        logs.configure(Settings.from_env(), "cli")
    except (SettingsError, CatalogError):
        pass  # each command reports a bad setting itself


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--name", required=True, help="A label for the key (who or what uses it).")
@click.option("--tier", default=None, help="Tier from the catalog (default: the catalog's).")
@click.option("--balance", default="0", help="Starting balance, e.g. 5.00, or 'unlimited'.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def keys_create(name: str, tier: str | None, balance: str, as_json: bool) -> None:
    """Create a key and print it. It is shown only this once."""
    tier = _tier_name(tier)
    unlimited = balance.strip().lower() == "unlimited"
    micros = 0 if unlimited else _money(balance, "--balance")
    if micros < 0:
        raise click.BadParameter("must be >= 0", param_hint="--balance")
    try:
        plaintext, record = _keys().create(name, tier=tier, unlimited=unlimited)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from exc
    _audit(record.id, "key.create", name=record.name, tier=tier, unlimited=unlimited)
    if micros:
        _accounts().top_up(record.id, micros)
        _audit(record.id, "balance.topup", amount=micros)
    shown = "unlimited" if unlimited else format_money(micros)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "id": record.id,
                    "name": record.name,
                    "tier": tier,
                    "balance": shown,
                    "key": plaintext,
                }
            )
        )
    else:
        click.echo(f"id:      {record.id}\nname:    {record.name}\ntier:    {tier}")
        click.echo(f"balance: {shown}\nkey:     {plaintext}")
        click.echo("Store the key now: only its SHA-256 hash is kept.", err=True)


@keys.command("list")
def keys_list() -> None:
    """List keys with tier and balance (never their secrets)."""
    accounts = _accounts()
    for key in _keys().list():
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(key.created))
        state = "revoked" if key.revoked else "active"
        balance = "unlimited" if key.unlimited else format_money(accounts.balance(key.id))
        click.echo(f"{key.id}\t{state}\t{key.tier}\t{balance}\t{created}\t{key.name}")


@keys.command("topup")
@click.argument("key_id")
@click.argument("amount")
def keys_topup(key_id: str, amount: str) -> None:
    """Add AMOUNT (e.g. 10.00) to a key's balance."""
    try:
        key = _keys().get(key_id)
        micros = _money(amount, "AMOUNT")
        balance = _accounts().top_up(key.id, micros)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="AMOUNT") from exc
    _audit(key.id, "balance.topup", amount=micros)
    click.echo(f"{key.id} balance: {format_money(balance)}")


@keys.command("set-tier")
@click.argument("key_id")
@click.argument("tier")
def keys_set_tier(key_id: str, tier: str) -> None:
    """Move a key to another tier; its next request is judged by the new tier."""
    try:
        key = _keys().set_tier(key_id, _tier_name(tier))
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    _audit(key.id, "key.set_tier", tier=key.tier)
    click.echo(f"{key.id} tier: {key.tier}")


@keys.command("strict-params")
@click.argument("key_id")
@click.argument("state", type=click.Choice(["on", "off"]))
def keys_strict_params(key_id: str, state: str) -> None:
    """Strict mode for one key: refuse user/quality/style a model does not take (400)
    instead of mapping or ignoring them."""
    try:
        key = _keys().set_strict_params(key_id, state == "on")
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    _audit(key.id, "key.strict_params", strict=key.strict_params)
    click.echo(f"{key.id} strict-params: {'on' if key.strict_params else 'off'}")


def _cap(text: str | None, hint: str) -> int | None:
    """A spending cap option: None (not given), 0 for ``none``/``0``, else micro-units."""
    if text is None:
        return None
    if text.strip().lower() in ("none", "off"):
        return 0
    micros = _money(text, hint)
    if micros < 0:
        raise click.BadParameter("must be >= 0 (or 'none')", param_hint=hint)
    return micros


def _cap_text(micros: int) -> str:
    return format_money(micros) if micros else "none"


@keys.command("budget")
@click.argument("key_id")
@click.option("--day", default=None, help="Spending cap per UTC day, e.g. 5.00, or 'none'.")
@click.option("--month", default=None, help="Spending cap per UTC month, or 'none'.")
def keys_budget(key_id: str, day: str | None, month: str | None) -> None:
    """Show or set a key's spending caps: once a UTC day's (month's) charges reach the
    cap, its requests get 402 daily_budget_exceeded (monthly_budget_exceeded) until the
    period ends. Without options, print the caps and what was spent."""
    day_micros, month_micros = _cap(day, "--day"), _cap(month, "--month")
    try:
        key = _keys().set_budget(key_id, day_micros=day_micros, month_micros=month_micros)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    for status in _accounts().budget_status(key):
        click.echo(
            f"{key.id} {status.period}: cap {_cap_text(status.cap_micros)}, "
            f"spent {format_money(status.spent_micros)}"
        )


@keys.command("usage")
@click.argument("key_id")
@click.option("--ledger", is_flag=True, help="Also print the latest ledger entries.")
def keys_usage(key_id: str, ledger: bool) -> None:
    """Balance, images, spend, upstream cost and margin by day and model of any key."""
    try:
        key = _keys().get(key_id)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    accounts = _accounts()
    history = _history()
    balance = "unlimited" if key.unlimited else format_money(accounts.balance(key.id))
    click.echo(f"{key.id} ({key.name}) tier {key.tier}, balance {balance}")
    free = accounts.free_status(key)
    if free is not None:
        click.echo(f"free images today: {free.remaining} of {free.per_day} left")
    for status in accounts.budget_status(key):
        if status.cap_micros:
            click.echo(
                f"budget per {status.period}: {format_money(status.spent_micros)} of "
                f"{format_money(status.cap_micros)} spent"
            )
    for row in history.usage(key.id):
        click.echo(
            f"{row.day}\t{row.model}\t{row.images} images\t{format_money(row.amount_micros)}"
            f"\tcost {format_money(row.cost_micros)}\tmargin {format_money(row.margin_micros)}"
        )
    if ledger:
        for entry in history.ledger(key.id):
            amount = format_money(int(entry.get("amount", 0)))
            cost = entry.get("cost")
            click.echo(
                f"{entry['id']}\t{entry.get('kind')}\t{entry.get('job')}\t{entry.get('model')}"
                f"\t{entry.get('images')}\t{amount}"
                + (f"\tcost {format_money(int(cost))}\tvia {entry.get('serving')}" if cost else "")
            )


@keys.command("webhook-secret")
@click.argument("key_id")
@click.option(
    "--rotate",
    is_flag=True,
    help="Replace the secret; deliveries are signed with the new one at once.",
)
def keys_webhook_secret(key_id: str, rotate: bool) -> None:
    """Show (or rotate) the whsec_ secret that signs this key's webhook deliveries."""
    store = _keys()
    try:
        secret = store.rotate_webhook_secret(key_id) if rotate else store.webhook_secret(key_id)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    if rotate:
        _audit(key_id, "key.rotate_webhook_secret")
    click.echo(secret)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: its next request gets 401."""
    try:
        key = _keys().revoke(key_id)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    _audit(key.id, "key.revoke")
    click.echo(f"revoked {key.id} ({key.name})")


@main.group("admin-keys")
def admin_keys() -> None:
    """Create, list and revoke admin keys (for /admin/v1, never for /v1)."""


def _admin_keys() -> AdminKeyStore:
    return AdminKeyStore(connect(_settings().redis_url))


@admin_keys.command("create")
@click.option("--name", required=True, help="Who holds it (a person, the billing system).")
@click.option(
    "--scope",
    type=click.Choice([s.value for s in Scope]),
    default=Scope.READ.value,
    show_default=True,
    help="read: every GET of the admin API; write: also every change.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def admin_keys_create(name: str, scope: str, as_json: bool) -> None:
    """Create an admin key and print it. It is shown only this once."""
    store = _admin_keys()
    try:
        plaintext, record = store.create(name, scope=Scope(scope))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from exc
    record_audit(store.client, record.id, "admin_key.create", name=record.name, scope=scope)
    if as_json:
        click.echo(
            json.dumps({"id": record.id, "name": record.name, "scope": scope, "key": plaintext})
        )
    else:
        click.echo(f"id:    {record.id}\nname:  {record.name}\nscope: {scope}")
        click.echo(f"key:   {plaintext}")
        click.echo("Store the key now: only its SHA-256 hash is kept.", err=True)


@admin_keys.command("list")
def admin_keys_list() -> None:
    """List admin keys (never their secrets)."""
    for key in _admin_keys().list():
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(key.created))
        state = "revoked" if key.revoked else "active"
        click.echo(f"{key.id}\t{state}\t{key.scope.value}\t{created}\t{key.name}")


@admin_keys.command("revoke")
@click.argument("admin_key_id")
def admin_keys_revoke(admin_key_id: str) -> None:
    """Revoke an admin key: its next request gets 401."""
    store = _admin_keys()
    try:
        key = store.revoke(admin_key_id)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    record_audit(store.client, key.id, "admin_key.revoke")
    click.echo(f"revoked {key.id} ({key.name})")


@main.group("db")
def db_group() -> None:
    """The SQL system of record (IMAGEGATE_DATABASE_URL)."""


@db_group.command("upgrade")
@click.option("--revision", default="head", help="Migrate up to this revision.")
def db_upgrade(revision: str) -> None:
    """Run the migrations (Alembic) up to the latest schema."""
    engine = db.engine_for(_settings().database_url)
    db.upgrade(engine, revision)
    click.echo(f"{engine.url.render_as_string()}: at revision {db.current_revision(engine)}")


@main.command("sink")
def sink() -> None:
    """Move ledger and audit entries from Redis to SQL, until stopped (the Procfile line)."""
    settings = _settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(
        connect(settings.redis_url),
        settings.database_url,
        migrate=settings.database_migrate,
        batch=settings.sink_batch,
        interval=settings.sink_interval_seconds,
    )


@main.group()
def ledger() -> None:
    """The ledger: Redis balances against the entries kept in SQL."""


@ledger.command("verify")
@click.argument("key_ids", nargs=-1)
def ledger_verify(key_ids: tuple[str, ...]) -> None:
    """Check that each key's balance in Redis equals its opening balance plus top-ups and
    adjustments minus what its jobs kept (reserves less refunds), from the entries in SQL
    and those not yet moved. Lists each difference; exits 1 if there is one."""
    keys = [k for k in _keys().list() if not k.unlimited and (not key_ids or k.id in key_ids)]
    missing = set(key_ids) - {k.id for k in keys}
    if missing:
        raise click.ClickException(f"no key (with a balance) {', '.join(sorted(missing))}")
    differences = _history().verify(k.id for k in keys)
    for d in differences:
        click.echo(
            f"{d.key_id}	balance {format_money(d.balance)}	ledger {format_money(d.expected)}"
            f"	difference {format_money(d.balance - d.expected)}"
            f"	({d.entries_sql} entries in SQL, {d.entries_redis} in Redis)"
        )
    click.echo(f"{len(keys)} keys checked, {len(differences)} differ")
    if differences:
        sys.exit(1)


@main.command("models")
def models() -> None:
    """The catalog: price, whether each model is usable now, and its circuit-breaker state."""
    settings = _settings()
    catalog = settings.load_catalog()
    breakers = Breakers(connect(settings.redis_url), policy_from(settings))
    for vm in catalog.virtual.values():
        click.echo(f"{vm.id}\tvirtual\t${vm.price}/image")
        for c in vm.candidates:
            state = breakers.status(model_breaker(c.model)).state.value
            click.echo(f"  -> {c.model}\tweight {c.weight:g}\t{state}")
    for model in catalog.models.values():
        family = catalog.family_of(model)
        reason = settings.why_unusable(family)
        state = f"unavailable: {reason}" if reason else "ready"
        health = breakers.status(model_breaker(model.id)).state.value
        click.echo(f"{model.id}\t{family.name}\t${model.price}/image\t{state}\t{health}")


@main.command("check")
def check() -> None:
    """Validate settings and catalog, and reach Redis and the database."""
    settings = _settings()
    catalog = settings.load_catalog()
    try:
        connect(settings.redis_url).ping()
    except redis.RedisError as exc:
        click.echo(f"Redis at {settings.redis_url} is not reachable: {exc}", err=True)
        sys.exit(1)
    engine = db.engine_for(settings.database_url)
    try:
        revision = db.current_revision(engine)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        where = engine.url.render_as_string()
        click.echo(f"The database at {where} is not reachable: {exc}", err=True)
        sys.exit(1)
    schema = f"schema {revision}" if revision else "no schema yet (imagegate db upgrade)"
    click.echo(
        f"ok: {len(catalog.models)} models in {len(catalog.families)} families; Redis reachable;"
        f" database reachable, {schema}"
    )


@main.group()
def storage() -> None:
    """Image storage: health, retention, the S3 lifecycle rule."""


@storage.command("health")
def storage_health_command() -> None:
    """Whether new images can be stored now; exit status 1 when not (disk full...)."""
    settings = _settings()
    health = storage_health(build_storage(settings.storage))
    free = "" if health.free_bytes is None else f" ({health.free_bytes} bytes free)"
    if not health.ok:
        click.echo(f"not writable: {health.reason}{free}", err=True)
        sys.exit(1)
    click.echo(f"ok: {settings.storage.backend} storage is writable{free}")


@storage.command("lifecycle")
@click.option("--install", is_flag=True, help="Put the rule into the bucket, then check it.")
def storage_lifecycle(install: bool) -> None:
    """S3: check that the bucket expires the gateway's objects after the image retention
    (IMAGEGATE_IMAGE_RETENTION_SECONDS, in whole days); exit status 1 when it does not.
    The bucket's other lifecycle rules are kept."""
    from shared.storage.s3 import S3Storage

    settings = _settings()
    bucket = build_storage(settings.storage)
    if not isinstance(bucket, S3Storage):
        raise click.ClickException(
            "the lifecycle rule is for S3 storage (IMAGEGATE_STORAGE=s3); local storage is "
            "cleaned by the workers' janitor alone"
        )
    retention = settings.image_retention
    try:
        if install:
            rule = bucket.install_lifecycle(retention)
            click.echo(f"installed: {json.dumps(rule, sort_keys=True)}")
        problems = bucket.lifecycle_problems(retention)
    except GatewayError as exc:
        raise click.ClickException(exc.message) from exc
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        click.echo("install it with: imagegate storage lifecycle --install", err=True)
        sys.exit(1)
    days = bucket.lifecycle_rule(retention)["Expiration"]["Days"]
    click.echo(
        f"ok: bucket {bucket.bucket} expires {settings.storage.s3_prefix!r} after {days} days"
    )


@storage.command("sweep")
@click.option("--batch", default=None, type=click.IntRange(min=1), help="Folders at most.")
def storage_sweep(batch: int | None) -> None:
    """One image-janitor pass now (as the workers run every IMAGEGATE_JANITOR_INTERVAL_SECONDS)."""
    settings = _settings()
    client = connect(settings.redis_url)
    retention = ImageRetention(client, storage_for(settings, client), settings.image_retention)
    sweep = retention.sweep(batch=batch or settings.janitor_batch)
    if sweep is None:
        click.echo("another janitor is acting now; nothing done")
        return
    click.echo(
        f"deleted {sweep.objects} objects in {sweep.folders} folders ({sweep.failed} failed); "
        f"{retention.pending()} folders still kept"
    )


@main.command("metrics-serve")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=9464, show_default=True, type=int)
def metrics_serve(host: str, port: int) -> None:
    """Serve /metrics for a host without a web process: the samples of every worker process
    of this host (IMAGEGATE_METRICS_DIR) and the cluster's gauges from Redis."""
    from prometheus_client import CollectorRegistry, start_http_server

    from shared import metrics
    from shared.broker import transport_for

    settings = _settings()
    client = connect(settings.redis_url)
    broker = settings.effective_broker_url
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.HostCollector(metrics.directory(settings.metrics_dir)))
    registry.register(
        metrics.ClusterCollector(
            client,
            settings.load_catalog(),
            None if transport_for(broker) is None else connect(broker),
        )
    )
    server, thread = start_http_server(port, addr=host, registry=registry)
    click.echo(f"metrics of {metrics.directory(settings.metrics_dir)} on {host}:{port}/metrics")
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
