"""Alembic environment: runs the revisions on the engine that `alignment.service.store.migrate` passes in."""

from __future__ import annotations

from alembic import context

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(connection=connection, render_as_batch=engine.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
