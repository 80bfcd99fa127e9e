"""The registry as the hand-written migrations left it (``PRAGMA user_version`` 3).

A new database gets the tables here. A SQLite registry written before Alembic
(versions 1 to 3) is brought to version 3 in place by the same steps the
hand-written migrations took, in this revision's transaction.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from controller.storage import registry_schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    present = set(sa.inspect(bind).get_table_names())
    if "tasks" in present:
        registry_schema.upgrade_legacy(bind)
    else:
        op.create_table(
            "tasks",
            sa.Column("task_id", sa.Text, primary_key=True),
            sa.Column("target_kind", sa.Text, nullable=False),
            sa.Column("target_user", sa.Text, nullable=False),
            sa.Column("target_host", sa.Text, nullable=False),
            sa.Column("target_port", sa.Integer, nullable=False),
            sa.Column("target_key", sa.Text, nullable=False),
            sa.Column("ui_home", sa.Text, nullable=False),
            sa.Column("spec_json", sa.Text, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("finished_at", sa.Double),
            sa.Column("state", sa.Text, nullable=False),
            sa.Column("launched", sa.Integer, nullable=False, server_default="0"),
            sa.Column("progress_json", sa.Text),
            sa.Column("not_before", sa.Double),
            sa.Column("retry_of", sa.Text),
            sa.Column("retried_by", sa.Text),
            sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
            sa.Column("auto_retry", sa.Integer, nullable=False, server_default="0"),
            sa.Column("total_nodes", sa.Integer, nullable=False, server_default="0"),
            sa.Column("processed", sa.Integer, nullable=False, server_default="0"),
            sa.Column("successful", sa.Integer, nullable=False, server_default="0"),
            sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
            sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
            sa.Column("current_node", sa.Text),
            sa.Column("error", sa.Text),
            sa.Column("error_code", sa.Text),
            sa.Column("updated_at", sa.Text),
            sa.Column("node_summary", sa.Text),
            sa.Column("pruned", sa.Integer, nullable=False, server_default="0"),
            sa.Column("target_route", sa.Text),
            sa.Column("notes_json", sa.Text),
        )
        op.create_index("tasks_running", "tasks", ["target_key", "ui_home", "state"])
        op.create_index("tasks_created", "tasks", ["created_at"])
        op.create_index("tasks_page", "tasks", ["pruned", "created_at", "task_id"])
        op.create_index("tasks_home_history", "tasks", ["target_key", "ui_home", "created_at"])
        op.create_index("tasks_finished", "tasks", ["finished_at"])
        op.create_table(
            "resolutions",
            sa.Column("task_id", sa.Text, primary_key=True),
            sa.Column("plan_json", sa.Text, nullable=False),
        )
    if "fleets" not in present:
        op.create_table(
            "fleets",
            sa.Column("fleet_id", sa.Text, primary_key=True),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("request_json", sa.Text, nullable=False),
        )
        op.create_table(
            "fleet_members",
            sa.Column(
                "fleet_id",
                sa.Text,
                sa.ForeignKey("fleets.fleet_id", ondelete="CASCADE"),
                nullable=False,
            ),
            sa.Column("position", sa.Integer, nullable=False),
            sa.Column("target", sa.Text, nullable=False),
            sa.Column("ui_home", sa.Text, nullable=False),
            sa.Column("task_id", sa.Text),
            sa.Column("error_code", sa.Text),
            sa.Column("error", sa.Text),
            sa.PrimaryKeyConstraint("fleet_id", "position"),
        )
        op.create_index("fleet_members_task", "fleet_members", ["task_id"])
    if bind.dialect.name == "sqlite":
        # What the hand-written migrations checked; kept so an older controller
        # opening this file sees a registry it knows.
        bind.exec_driver_sql(f"PRAGMA user_version = {registry_schema.VERSION}")


def downgrade() -> None:
    raise NotImplementedError("the registry does not downgrade")
