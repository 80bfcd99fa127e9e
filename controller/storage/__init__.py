"""Where the controller keeps what must outlive it: the task registry, fleets,
accepted host keys and the API token, in one database. SQLite in the data dir by
default (embedded, nothing to run); PostgreSQL (``database_url``) when several
controllers share one registry. SQLAlchemy Core writes the statements for both,
Alembic migrates the schema (``migrations/``)."""
