"""Many controllers, one registry: who is launching a task and until when
(``owner``, ``lease_until``), host keys accepted for the whole fleet, and the API
token every replica answers to.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("owner", sa.Text))
    op.add_column("tasks", sa.Column("lease_until", sa.Double))
    op.create_index("tasks_state", "tasks", ["state", "created_at"])
    op.create_table(
        "host_keys",
        sa.Column("entry", sa.Text, nullable=False),
        sa.Column("key_type", sa.Text, nullable=False),
        sa.Column("key_base64", sa.Text, nullable=False),
        sa.Column("added_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("entry", "key_type"),
    )
    op.create_table(
        "controller_secrets",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("the registry does not downgrade")
