"""Persistence: the async engine and session factory, and the typed models Alembic migrates."""
