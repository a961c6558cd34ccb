"""Alembic's environment for imagegate: the engine comes from :func:`shared.db.upgrade`
(``config.attributes["engine"]``), or from the settings when Alembic's own command line
runs it. On PostgreSQL an advisory lock makes processes that start together migrate one
after the other."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from shared.db import engine_for, metadata

# Any constant: the advisory lock that serialises imagegate's migrations.
_PG_LOCK = 0x696D6167  # "imag"


def run_migrations_online() -> None:
    config = context.config
    engine = config.attributes.get("engine")
    if engine is None:
        from shared.settings import Settings

        engine = engine_for(Settings.from_env().database_url)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK})
            connection.commit()
        try:
            context.configure(connection=connection, target_metadata=metadata)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK})
                connection.commit()


run_migrations_online()
