"""Apply Alembic migrations from code, for `taskservice migrate`, the container and the tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

#: The repository's Alembic directory; the package is installed editable, next to it.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: URL | str) -> Config:
    """An Alembic config aimed at `database_url`, independent of the working directory."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise FileNotFoundError(f"Alembic migrations not found at {MIGRATIONS_DIR}")
    config = Config(MIGRATIONS_DIR.parent / "alembic.ini")
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: URL | str, revision: str = "head") -> None:
    """Bring the schema up to `revision`. Runs its own event loop: call it outside one."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: URL | str, revision: str) -> None:
    """Take the schema down to `revision` (`base` removes every table)."""
    command.downgrade(alembic_config(database_url), revision)
