"""Audit events name the method and the permission of a call refused with PERMISSION_MISSING.

Both NULL for every other event, and for every event written before this revision.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 23:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("method", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("permission", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("permission")
        batch.drop_column("method")
