"""The current authorisation state of users, as every authenticated call needs it.

A token stays valid only while its user exists, is active, and still has the credential generation
(`token_version`) the token was issued at. This store answers that per call. It reads the row
through the primary key: one indexed lookup, no joins.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from taskservice.db.engine import Database
from taskservice.db.models import User


@dataclass(frozen=True)
class AuthState:
    """What authorisation needs to know about a user right now."""

    is_active: bool
    is_admin: bool
    token_version: int


class AuthStateStore:
    """Reads users' authorisation state."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def get(self, user_id: int) -> AuthState | None:
        """The user's state, or None when the user does not exist."""
        query = select(User.is_active, User.is_admin, User.token_version).where(User.id == user_id)
        async with self._db.read() as session:
            row = (await session.execute(query)).one_or_none()
        return None if row is None else AuthState(*row)
