"""Preference-data service: HTTP API over a SQLAlchemy store, snapshots, and alignment rounds as jobs."""
