"""Alembic migrations of the service store (applied by `alignment.service.store.migrate`)."""
