"""Alembic environment: uses the connection the server passes in, or opens the configured DB."""

from alembic import context
from sqlalchemy import Connection

from mcp_background_job.config import Settings
from mcp_background_job.db import ensure_db_file, include_name, make_sync_engine, metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode recreates tables
        compare_type=True,
        include_name=include_name,  # the command search index (FTS5) is not a model
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    settings = Settings()
    if isinstance(settings.db, str):  # PostgreSQL: transactional DDL, nothing to switch off
        pg_engine = make_sync_engine(settings.db)
        with pg_engine.connect() as conn:
            run(conn)
            conn.commit()
        pg_engine.dispose()
        raise SystemExit(0)
    ensure_db_file(settings.db)
    engine = make_sync_engine(settings.db)
    with engine.connect() as conn:
        # As db.migrate_to does for servers: no cascades while batch mode rebuilds tables, and
        # views that stay valid when a rebuilt table is renamed back.
        # (Through the driver: foreign_keys is a no-op inside the transaction SQLAlchemy begins.)
        raw = conn.connection.dbapi_connection
        assert raw is not None, "a connection just opened has its DBAPI connection"
        raw.execute("PRAGMA foreign_keys=OFF")
        raw.execute("PRAGMA legacy_alter_table=ON")
        run(conn)
        conn.commit()
    engine.dispose()
