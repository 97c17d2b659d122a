"""Jobs remember which bot process (shard set) created them, so that a process restarting closes only
its own interrupted jobs, not the running jobs of the other processes sharing the database.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 19:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL = a job from before this revision: any process may close it (there was only one).
    op.add_column("jobs", sa.Column("owner", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite rebuilds the table to drop a column
        batch.drop_column("owner")
