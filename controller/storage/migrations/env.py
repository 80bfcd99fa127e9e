"""Alembic's entry point: migrations run on the connection the controller hands
over (``Database.migrate``), inside its transaction; never from a config file."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
