"""What the store's SQL means on PostgreSQL where SQLite spells it differently.

The store writes its queries once, in SQLite's terms; these compile rules give PostgreSQL the
same meaning, so no query is written twice:

- ``max(a, b)`` with two or more arguments is SQLite's scalar maximum: ``GREATEST`` there.
- ``json_group_array(x)``: a JSON array of ``x`` (``[]`` for none): ``json_agg`` (``NULL`` for
  none, so coalesced).
- ``tail_bytes(data, n)``: the last ``n`` bytes of a value (SQLite's ``substr(data, -n)``).
- ``run_seconds(started, ended)``: a job's run time so far (SQLite's ``julianday`` arithmetic).

Importing this module registers the rules (``db`` does).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Connection, Integer, LargeBinary
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import functions
from sqlalchemy.sql.compiler import SQLCompiler


class json_group_array(functions.GenericFunction[Any]):
    inherit_cache = True


class tail_bytes(functions.GenericFunction[bytes]):
    type = LargeBinary()
    inherit_cache = True


@compiles(functions.max, "postgresql")
def _pg_max(element: functions.max[Any], compiler: SQLCompiler, **kw: Any) -> str:
    args = list(element.clauses)
    name = "GREATEST" if len(args) > 1 else "max"
    return f"{name}({', '.join(compiler.process(a, **kw) for a in args)})"


@compiles(json_group_array, "postgresql")
def _pg_json_array(element: json_group_array, compiler: SQLCompiler, **kw: Any) -> str:
    return f"coalesce(json_agg({compiler.process(element.clauses, **kw)}), '[]'::json)::text"


@compiles(tail_bytes)
def _tail_sqlite(element: tail_bytes, compiler: SQLCompiler, **kw: Any) -> str:
    data, n = (compiler.process(a, **kw) for a in element.clauses)
    return f"substr({data}, -({n}))"


@compiles(tail_bytes, "postgresql")
def _tail_pg(element: tail_bytes, compiler: SQLCompiler, **kw: Any) -> str:
    data, n = (compiler.process(a, **kw) for a in element.clauses)
    return f"substr({data}, GREATEST(length({data}) - ({n}) + 1, 1))"


#: Byte counts, offsets and process start times: 64-bit on PostgreSQL (its INTEGER is 32-bit;
#: output passes 2 GiB). SQLite's INTEGER is 64-bit already, and its schema stays as it was.
INT64 = Integer().with_variant(BigInteger(), "postgresql")


class run_seconds(functions.GenericFunction[float]):
    """Seconds from ``started`` to ``ended``, or to now where ``ended`` is NULL."""

    inherit_cache = True


@compiles(run_seconds)
def _run_seconds_sqlite(element: run_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    started, ended = (compiler.process(a, **kw) for a in element.clauses)
    return f"(julianday(coalesce({ended}, datetime('now'))) - julianday({started})) * 86400"


@compiles(run_seconds, "postgresql")
def _run_seconds_pg(element: run_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    started, ended = (compiler.process(a, **kw) for a in element.clauses)
    return f"extract(epoch FROM coalesce({ended}, now() AT TIME ZONE 'UTC') - {started})"


def page_stats(conn: Connection) -> tuple[int, int, int]:
    """Page size, pages and free pages of the database (PostgreSQL: its size in 8 KiB pages,
    none counted free: VACUUM there reuses space in place)."""
    if conn.dialect.name == "postgresql":
        size = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()
        return 8192, int(size) // 8192, 0
    size, count, free = (
        conn.exec_driver_sql(f"PRAGMA {p}").scalar_one()
        for p in ("page_size", "page_count", "freelist_count")
    )
    return int(size), int(count), int(free)


class substr(functions.GenericFunction[bytes]):
    """SQLite's ``substr``; PostgreSQL's takes ``integer`` positions only (not ``bigint``
    offsets): positions within one row are small, so they are cast."""

    inherit_cache = True


@compiles(substr, "postgresql")
def _substr_pg(element: substr, compiler: SQLCompiler, **kw: Any) -> str:
    data, *rest = (compiler.process(a, **kw) for a in element.clauses)
    return f"substr({', '.join([data, *(f'CAST({r} AS INTEGER)' for r in rest)])})"
