"""The ``imagegate`` admin command.

    imagegate keys create --name demo [--tier free] [--balance 5.00 | --balance unlimited]
    imagegate keys list
    imagegate keys topup KEY_ID 10.00
    imagegate keys set-tier KEY_ID premium
    imagegate keys strict-params KEY_ID on|off
    imagegate keys usage KEY_ID [--ledger]
    imagegate keys webhook-secret KEY_ID [--rotate]
    imagegate keys revoke KEY_ID
    imagegate db upgrade                  # run the SQL migrations (IMAGEGATE_DATABASE_URL)
    imagegate sink                        # move ledger entries Redis -> SQL (Procfile line)
    imagegate ledger verify [KEY_ID...]   # each balance against its ledger in SQL
    imagegate models                      # the catalog, with what is usable right now
    imagegate check                       # settings, catalog, Redis and the database reachable

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

from shared import db
from shared.billing import Accounts, format_money, parse_money
from shared.catalog import CatalogError
from shared.errors import NotFound
from shared.health import Breakers, policy_from
from shared.history import History
from shared.keys import KeyStore
from shared.redis_client import connect
from shared.route import model_breaker
from shared.settings import Settings, SettingsError
from shared.sink import record_audit, serve


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
    _audit(record.id, "create", name=record.name, tier=tier, unlimited=unlimited)
    if micros:
        _accounts().top_up(record.id, micros)
        _audit(record.id, "topup", amount=micros)
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
    _audit(key.id, "topup", amount=micros)
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
    _audit(key.id, "set-tier", tier=key.tier)
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
    _audit(key.id, "strict-params", strict=key.strict_params)
    click.echo(f"{key.id} strict-params: {'on' if key.strict_params else 'off'}")


@keys.command("usage")
@click.argument("key_id")
@click.option("--ledger", is_flag=True, help="Also print the latest ledger entries.")
def keys_usage(key_id: str, ledger: bool) -> None:
    """Balance, images and spend by day and model of any key."""
    try:
        key = _keys().get(key_id)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    accounts = _accounts()
    history = _history()
    balance = "unlimited" if key.unlimited else format_money(accounts.balance(key.id))
    click.echo(f"{key.id} ({key.name}) tier {key.tier}, balance {balance}")
    for row in history.usage(key.id):
        click.echo(
            f"{row.day}\t{row.model}\t{row.images} images\t{format_money(row.amount_micros)}"
        )
    if ledger:
        for entry in history.ledger(key.id):
            amount = format_money(int(entry.get("amount", 0)))
            click.echo(
                f"{entry['id']}\t{entry.get('kind')}\t{entry.get('job')}\t{entry.get('model')}"
                f"\t{entry.get('images')}\t{amount}"
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
        _audit(key_id, "rotate-webhook-secret")
    click.echo(secret)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: its next request gets 401."""
    try:
        key = _keys().revoke(key_id)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    _audit(key.id, "revoke")
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


if __name__ == "__main__":
    main()
