"""The ``imagegate`` admin command.

    imagegate keys create --name demo [--tier free] [--balance 5.00 | --balance unlimited]
    imagegate keys list
    imagegate keys topup KEY_ID 10.00
    imagegate keys set-tier KEY_ID premium
    imagegate keys strict-params KEY_ID on|off
    imagegate keys usage KEY_ID [--ledger]
    imagegate keys webhook-secret KEY_ID [--rotate]
    imagegate keys revoke KEY_ID
    imagegate models                      # the catalog, with what is usable right now
    imagegate check                       # settings, catalog and Redis reachable
    imagegate metrics-serve [--port 9464]  # Prometheus metrics of this host's processes

Settings come from the same ``IMAGEGATE_*`` environment as the services.
"""

from __future__ import annotations

import json
import sys
import time

import click
import redis

from shared import logs
from shared.billing import Accounts, format_money, parse_money
from shared.catalog import CatalogError
from shared.errors import NotFound
from shared.health import Breakers, policy_from
from shared.keys import KeyStore
from shared.redis_client import connect
from shared.route import model_breaker
from shared.settings import Settings, SettingsError


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
    if micros:
        _accounts().top_up(record.id, micros)
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
        balance = _accounts().top_up(key.id, _money(amount, "AMOUNT"))
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="AMOUNT") from exc
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
    balance = "unlimited" if key.unlimited else format_money(accounts.balance(key.id))
    click.echo(f"{key.id} ({key.name}) tier {key.tier}, balance {balance}")
    for row in accounts.usage(key.id):
        click.echo(
            f"{row.day}\t{row.model}\t{row.images} images\t{format_money(row.amount_micros)}"
        )
    if ledger:
        for entry in accounts.ledger(key.id):
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
    click.echo(secret)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: its next request gets 401."""
    try:
        key = _keys().revoke(key_id)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"revoked {key.id} ({key.name})")


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
    """Validate settings and catalog, and reach Redis."""
    settings = _settings()
    catalog = settings.load_catalog()
    try:
        connect(settings.redis_url).ping()
    except redis.RedisError as exc:
        click.echo(f"Redis at {settings.redis_url} is not reachable: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"ok: {len(catalog.models)} models in {len(catalog.families)} families; Redis reachable"
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
