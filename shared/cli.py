"""The ``imagegate`` admin command.

    imagegate keys create --name demo     # prints the new key once; Redis keeps only its hash
    imagegate keys list
    imagegate keys revoke KEY_ID
    imagegate models                      # the catalog, with what is usable right now
    imagegate check                       # settings, catalog and Redis reachable

Settings come from the same ``IMAGEGATE_*`` environment as the services.
"""

from __future__ import annotations

import json
import sys
import time

import click
import redis

from shared.catalog import CatalogError
from shared.errors import NotFound
from shared.keys import KeyStore
from shared.redis_client import connect
from shared.settings import Settings, SettingsError


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except (SettingsError, CatalogError) as exc:
        raise click.ClickException(str(exc)) from exc


def _keys() -> KeyStore:
    return KeyStore(connect(_settings().redis_url))


@click.group()
def main() -> None:
    """Administer an imagegate deployment."""


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--name", required=True, help="A label for the key (who or what uses it).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def keys_create(name: str, as_json: bool) -> None:
    """Create a key and print it. It is shown only this once."""
    try:
        plaintext, record = _keys().create(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from exc
    if as_json:
        click.echo(json.dumps({"id": record.id, "name": record.name, "key": plaintext}))
    else:
        click.echo(f"id:   {record.id}\nname: {record.name}\nkey:  {plaintext}")
        click.echo("Store the key now: only its SHA-256 hash is kept.", err=True)


@keys.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    for key in _keys().list():
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(key.created))
        state = "revoked" if key.revoked else "active"
        click.echo(f"{key.id}\t{state}\t{created}\t{key.name}")


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
    """List the catalog and whether each model can be used with the current environment."""
    settings = _settings()
    catalog = settings.load_catalog()
    for model in catalog.models.values():
        family = catalog.family_of(model)
        if not family.available:
            state = "unavailable"
        elif family.key_env and not settings.credential(family.key_env):
            state = f"needs {family.key_env}"
        else:
            state = "ready"
        click.echo(f"{model.id}\t{family.name}\t${model.price}/image\t{state}")


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


if __name__ == "__main__":
    main()
