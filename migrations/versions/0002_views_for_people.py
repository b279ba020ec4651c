"""views for people: job_summary, output_text, job_output

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Read-only conveniences for ``sqlite3`` users (the README's queries use them); no table changes.
A later migration that rebuilds ``jobs`` or ``output_chunks`` in batch mode keeps these views
valid (``db.migrate_to`` runs with ``legacy_alter_table=ON``); one that renames or drops a column
they use must drop and recreate them.
"""

from collections.abc import Sequence

from alembic import op


revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Durations: a running job's counts up to now. Labels: comma-separated, sorted.
JOB_SUMMARY = """
CREATE VIEW job_summary AS
SELECT
    j.id,
    j.status,
    j.exit_code,
    j.signal,
    j.reason,
    j.command,
    j.cwd,
    (SELECT group_concat(label, ',')
       FROM (SELECT l.label FROM job_labels l WHERE l.job_id = j.id ORDER BY l.label)) AS labels,
    j.created_at,
    j.started_at,
    j.ended_at,
    round((julianday(coalesce(j.ended_at, 'now')) - julianday(j.started_at)) * 86400, 3)
        AS duration_s,
    j.stdout_bytes,
    j.stderr_bytes,
    j.stdout_bytes + j.stderr_bytes AS output_bytes,
    j.stdout_stored + j.stderr_stored AS stored_bytes,
    j.stdout_dropped + j.stderr_dropped AS dropped_bytes,
    j.timeout_s,
    j.pid,
    j.owner_id
FROM jobs j
"""

# One row per stored chunk; CAST shows the bytes as they are (a character split between two
# chunks shows as two broken halves here, and whole in job_output).
OUTPUT_TEXT = """
CREATE VIEW output_text AS
SELECT
    c.job_id,
    c.stream,
    c.seq,
    c.byte_offset,
    length(c.data) AS bytes,
    CAST(c.data AS TEXT) AS text
FROM output_chunks c
"""

# Each job's whole output: stdout and stderr in byte order, and `output` (both streams in the
# order they were stored). group_concat keeps the order of an ORDER BY subquery in SQLite; a
# correlated subquery per column means only the selected columns are computed.
JOB_OUTPUT = """
CREATE VIEW job_output AS
SELECT
    j.id AS job_id,
    (SELECT group_concat(t, '') FROM (
        SELECT CAST(c.data AS TEXT) AS t FROM output_chunks c
        WHERE c.job_id = j.id AND c.stream = 'stdout' ORDER BY c.byte_offset)) AS stdout,
    (SELECT group_concat(t, '') FROM (
        SELECT CAST(c.data AS TEXT) AS t FROM output_chunks c
        WHERE c.job_id = j.id AND c.stream = 'stderr' ORDER BY c.byte_offset)) AS stderr,
    (SELECT group_concat(t, '') FROM (
        SELECT CAST(c.data AS TEXT) AS t FROM output_chunks c
        WHERE c.job_id = j.id ORDER BY c.seq)) AS output
FROM jobs j
"""


# The same views on PostgreSQL (``psql`` users). ``mbj_text`` shows bytes as UTF-8 text where
# they are valid UTF-8, and with invalid sequences escaped where not (``convert_from`` alone
# would make the whole query fail on one bad byte).
PG_TEXT = """
CREATE FUNCTION mbj_text(data bytea) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN convert_from(data, 'UTF8');
EXCEPTION WHEN character_not_in_repertoire OR untranslatable_character THEN
    RETURN encode(data, 'escape');
END
$$
"""

PG_JOB_SUMMARY = """
CREATE VIEW job_summary AS
SELECT
    j.id, j.status, j.exit_code, j.signal, j.reason, j.command, j.cwd,
    (SELECT string_agg(l.label, ',' ORDER BY l.label) FROM job_labels l WHERE l.job_id = j.id)
        AS labels,
    j.created_at, j.started_at, j.ended_at,
    round(extract(epoch FROM coalesce(j.ended_at, now() AT TIME ZONE 'UTC') - j.started_at), 3)
        AS duration_s,
    j.stdout_bytes, j.stderr_bytes,
    j.stdout_bytes + j.stderr_bytes AS output_bytes,
    j.stdout_stored + j.stderr_stored AS stored_bytes,
    j.stdout_dropped + j.stderr_dropped AS dropped_bytes,
    j.timeout_s, j.pid, j.owner_id
FROM jobs j
"""

PG_OUTPUT_TEXT = """
CREATE VIEW output_text AS
SELECT c.job_id, c.stream, c.seq, c.byte_offset, length(c.data) AS bytes, mbj_text(c.data) AS text
FROM output_chunks c
"""

# Whole streams are joined as bytes first, so a character split between chunks shows whole.
PG_JOB_OUTPUT = """
CREATE VIEW job_output AS
SELECT
    j.id AS job_id,
    (SELECT mbj_text(string_agg(c.data, ''::bytea ORDER BY c.byte_offset)) FROM output_chunks c
      WHERE c.job_id = j.id AND c.stream = 'stdout') AS stdout,
    (SELECT mbj_text(string_agg(c.data, ''::bytea ORDER BY c.byte_offset)) FROM output_chunks c
      WHERE c.job_id = j.id AND c.stream = 'stderr') AS stderr,
    (SELECT mbj_text(string_agg(c.data, ''::bytea ORDER BY c.seq)) FROM output_chunks c
      WHERE c.job_id = j.id) AS output
FROM jobs j
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for sql in (PG_TEXT, PG_JOB_SUMMARY, PG_OUTPUT_TEXT, PG_JOB_OUTPUT):
            op.execute(sql)
        return
    op.execute(JOB_SUMMARY)
    op.execute(OUTPUT_TEXT)
    op.execute(JOB_OUTPUT)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS job_output")
    op.execute("DROP VIEW IF EXISTS output_text")
    op.execute("DROP VIEW IF EXISTS job_summary")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS mbj_text(bytea)")
