"""The registry's tables as SQLAlchemy Core sees them (the statements are built
from these). The schema itself is made and changed by the Alembic revisions in
``migrations/versions``; these must describe their result."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

tasks = sa.Table(
    "tasks",
    metadata,
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
    # revision 0002: who is launching a task, and until when that claim holds.
    sa.Column("owner", sa.Text),
    sa.Column("lease_until", sa.Double),
)

resolutions = sa.Table(
    "resolutions",
    metadata,
    sa.Column("task_id", sa.Text, primary_key=True),
    sa.Column("plan_json", sa.Text, nullable=False),
)

fleets = sa.Table(
    "fleets",
    metadata,
    sa.Column("fleet_id", sa.Text, primary_key=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("request_json", sa.Text, nullable=False),
)

fleet_members = sa.Table(
    "fleet_members",
    metadata,
    sa.Column("fleet_id", sa.Text, sa.ForeignKey("fleets.fleet_id", ondelete="CASCADE")),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("ui_home", sa.Text, nullable=False),
    sa.Column("task_id", sa.Text),
    sa.Column("error_code", sa.Text),
    sa.Column("error", sa.Text),
    sa.PrimaryKeyConstraint("fleet_id", "position"),
)

#: Host keys accepted for the whole fleet of controllers (trust on first use is
#: decided once, by whichever replica met the host first).
host_keys = sa.Table(
    "host_keys",
    metadata,
    sa.Column("entry", sa.Text, nullable=False),
    sa.Column("key_type", sa.Text, nullable=False),
    sa.Column("key_base64", sa.Text, nullable=False),
    sa.Column("added_at", sa.Double, nullable=False),
    sa.PrimaryKeyConstraint("entry", "key_type"),
)

#: Values every replica must agree on: the API token.
secrets = sa.Table(
    "controller_secrets",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
