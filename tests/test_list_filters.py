"""``list`` filters on a real migrated file: the results are exactly those of ``LIKE`` whichever
plan the store takes for ``command_contains``, labels come newest first, and the command index
follows every write (the store's, pruning, VACUUM, and ``sqlite3`` users')."""

from __future__ import annotations

import sqlite3
import string
from collections.abc import Callable
from datetime import timedelta

import pytest

from mcp_background_job.db import utcnow
from mcp_background_job.jobs import JobStatus, ServerInstance
from mcp_background_job.store import JobFilter, Store, search_match
from mcp_background_job.store import listing as store_module

from .fixtures.schema import assert_search_in_sync

COMMANDS = (
    "make target42",
    "make TARGET42 --verbose",
    "make target420 && ./run-tests --shard 3",
    "echo 100%",
    "echo 100% done",
    "echo 1000 done",
    "ls a_b",
    "ls axb",
    r"printf 'a\\b'",
    r"echo C:\temp\new",
    "echo 'quoted \"double\" words'",
    "grep -E 'a|b' AND OR NOT NEAR x* ^start (group) col:val",
    "echo Éclair éclair",
    "echo Éclat",  # the index folds É to é, LIKE does not: only LIKE may decide
    "echo straße STRASSE",
    "echo ǅ ǆ Ǆ",
    "echo 日本語のテキスト",
    "echo emoji 🚀🚀 launch",
    "true",
    "x",
    "ab",
)

PATTERNS = (
    "target42", "TARGET42", "Target4", "get4", "arget42 ", "100%", "0%", "%", "%%", "_", "a_b",
    "a\\b", "\\", "\\\\", "C:\\temp", "\\t", '"double"', '"', '""', "AND", "a|b", "x*", "NEAR",
    "^start", "(group)", "col:val", "éclair", "ÉCLAIR", "Éclair", "clair", "éclat", "Éclat",
    "ÉCLAT", "straße", "STRASSE",
    "ǅ", "ǆ Ǆ", "日本語", "本", "のテキ", "🚀", "🚀🚀 l", "e", "ec", "ech", "echo", "ECHO",
    "no such text", "true", "x", "ab", "  ", "make target42 --",
)  # fmt: skip


def _like(command: str, needle: str) -> bool:
    """SQLite's LIKE '%needle%' (with the wildcards escaped): case-insensitive for ASCII only."""
    fold = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
    return needle.translate(fold) in command.translate(fold)


async def _jobs(
    store: Store,
    commands: tuple[str, ...],
    labels: Callable[[int], tuple[str, ...]] = lambda i: (),
) -> list[str]:
    sid = "srv000000001"
    await store.register_server(
        ServerInstance(sid, 1, None, "boot", "host", utcnow(), None), version="test"
    )
    ids = []
    for i, command in enumerate(commands):
        job_id = f"{i:012x}"
        await store.create_job(
            job_id=job_id, command=command, cwd="/", shell="/bin/sh", env={},
            labels=labels(i), timeout_s=None, owner_id=sid,
        )  # fmt: skip
        ids.append(job_id)
    return ids


async def _all(store: Store, flt: JobFilter, page: int = 3) -> list[str]:
    """Every job the filter gives, page by page."""
    seen: list[str] = []
    cursor = None
    while True:
        jobs, cursor = await store.list_jobs(flt, limit=page, cursor=cursor)
        seen += [j.id for j in jobs]
        if cursor is None:
            return seen


def _newest_first(store: Store, ids: set[str]) -> list[str]:
    con = sqlite3.connect(store.path)
    try:
        rows = con.execute("select id, created_at from jobs").fetchall()
    finally:
        con.close()
    return [i for i, _ in sorted((r for r in rows if r[0] in ids), key=lambda r: (r[1], r[0]))][
        ::-1
    ]


@pytest.mark.parametrize(
    ("lookup_max", "max_candidates"),
    [(200, 5000), (0, 5000), (0, 0)],
    ids=["candidates-looked-up", "index-walk-checks-candidates", "like-scan"],
)
async def test_command_filter_is_exactly_like_whatever_the_plan(
    store: Store, monkeypatch: pytest.MonkeyPatch, lookup_max: int, max_candidates: int
) -> None:
    monkeypatch.setattr(store_module, "SEARCH_LOOKUP_MAX", lookup_max)
    monkeypatch.setattr(store_module, "SEARCH_MAX_CANDIDATES", max_candidates)
    ids = await _jobs(store, COMMANDS)
    for needle in PATTERNS:
        expected = {i for i, c in zip(ids, COMMANDS, strict=True) if _like(c, needle)}
        found = await _all(store, JobFilter(command_contains=needle))
        assert found == _newest_first(store, expected), needle


async def test_command_filter_with_other_filters(store: Store) -> None:
    ids = await _jobs(store, COMMANDS, labels=lambda i: ("odd",) if i % 2 else ("even",))
    await store.transition(ids[1], JobStatus.RUNNING, server_id="s")
    odd = {i for n, i in enumerate(ids) if n % 2}
    make = {i for i, c in zip(ids, COMMANDS, strict=True) if "make" in c}
    assert await _all(store, JobFilter(command_contains="make", label="odd")) == _newest_first(
        store, make & odd
    )
    running = JobFilter(command_contains="TARGET", status=JobStatus.RUNNING)
    assert await _all(store, running) == [ids[1]]
    later = JobFilter(command_contains="make", since=utcnow() + timedelta(hours=1))
    assert await _all(store, later) == []


def test_search_match_cannot_help_with_short_text_or_nul() -> None:
    assert search_match("ab") is None
    assert search_match("a\x00bcd") is None
    assert search_match("abc") == '"abc"'
    # Trigrams side by side, and the last one; double quotes doubled.
    assert search_match('say "hi"!') == '"say" AND " ""h" AND "i""!"'
    one = search_match("x" * 1000)
    assert one is not None and one.count("AND") == 0  # one distinct trigram
    eight = search_match(string.printable * 3)
    assert eight is not None and eight.count(" AND ") == 7  # at most 8 trigrams


async def test_nul_in_the_text_is_matched_by_like(store: Store) -> None:
    ids = await _jobs(store, ("printf 'a\x00b'", "printf ab"))
    assert await _all(store, JobFilter(command_contains="a\x00b")) == [ids[0]]


async def test_label_filter_newest_first_with_ties_status_since_and_cursor(store: Store) -> None:
    commands = tuple(f"job {n}" for n in range(30))
    ids = await _jobs(store, commands, labels=lambda n: ("a", "b") if n % 3 == 0 else ("a",))
    # Jobs created in the same microsecond come by id (descending), through a page boundary.
    # (Changing created_at by hand also changes the copy in job_labels, by a trigger.)
    con = sqlite3.connect(store.path)
    with con:
        con.execute(
            "update jobs set created_at = (select created_at from jobs where id = ?) "
            "where id in (?, ?, ?, ?)",
            (ids[10], ids[10], ids[11], ids[12], ids[13]),
        )
    con.close()
    for n in (0, 5, 6, 20):
        await store.transition(ids[n], JobStatus.RUNNING, server_id="s")
    every = set(ids)
    b = {i for n, i in enumerate(ids) if n % 3 == 0}
    running = {ids[n] for n in (0, 5, 6, 20)}
    for page in (1, 2, 7, 50):
        assert await _all(store, JobFilter(label="a"), page) == _newest_first(store, every)
        assert await _all(store, JobFilter(label="b"), page) == _newest_first(store, b)
        both = JobFilter(label="b", status=JobStatus.RUNNING)
        assert await _all(store, both, page) == _newest_first(store, b & running)
    assert await _all(store, JobFilter(label="nope")) == []
    con = sqlite3.connect(store.path)
    since_at = con.execute("select created_at from jobs where id = ?", (ids[12],)).fetchone()[0]
    con.close()
    newest = _newest_first(store, every)
    since = newest[: newest.index(ids[10]) + 1]  # ids 10..13 share the time
    from datetime import UTC, datetime

    flt = JobFilter(label="a", since=datetime.fromisoformat(since_at).replace(tzinfo=UTC))
    assert await _all(store, flt, 2) == since
    flt = JobFilter(label="a", until=datetime.fromisoformat(since_at).replace(tzinfo=UTC))
    assert await _all(store, flt, 2) == newest[len(since) :]


async def test_index_follows_the_store_pruning_and_vacuum(store: Store) -> None:
    ids = await _jobs(store, COMMANDS)
    assert_search_in_sync(store.path)
    for job_id in ids[:6]:
        await store.transition(job_id, JobStatus.RUNNING, server_id="s")
        await store.transition(job_id, JobStatus.COMPLETED, server_id="s")
    result = await store.delete_jobs([ids[0], ids[2], ids[4]])  # what `db prune` and retention do
    assert result.jobs == 3
    assert_search_in_sync(store.path)
    gone = await _all(store, JobFilter(command_contains="target42"))
    assert gone == [ids[1]]  # "make target42" (ids[0]) was deleted; ids[2] was target420
    await store.vacuum()
    assert_search_in_sync(store.path)
    assert await _all(store, JobFilter(command_contains="ARGET42")) == [ids[1]]
    # A new job after the deletions (rowids may be reused) is found, the old ones are not.
    sid = "srv000000001"
    await store.create_job(
        job_id="fff000000001", command="make target42 again", cwd="/", shell="/bin/sh", env={},
        labels=(), timeout_s=None, owner_id=sid,
    )  # fmt: skip
    assert_search_in_sync(store.path)
    assert await _all(store, JobFilter(command_contains="target42")) == ["fff000000001", ids[1]]


async def test_index_follows_writes_made_with_sqlite3(store: Store) -> None:
    ids = await _jobs(store, ("make alpha", "make beta"))
    con = sqlite3.connect(store.path)
    with con:
        con.execute(
            "insert into jobs (id, command, cwd, shell, env, status, created_at, stdout_bytes, "
            "stderr_bytes, stdout_stored, stderr_stored, stdout_dropped, stderr_dropped) "
            "values ('eee000000001', 'make gamma', '/', 'sh', '{}', 'completed', "
            "'2001-01-01 00:00:00.000000', 0, 0, 0, 0, 0, 0)"
        )
        con.execute("update jobs set command = 'make delta' where id = ?", (ids[0],))
        con.execute("delete from jobs where id = ?", (ids[1],))
    con.close()
    assert_search_in_sync(store.path)
    assert await _all(store, JobFilter(command_contains="gamma")) == ["eee000000001"]
    assert await _all(store, JobFilter(command_contains="delta")) == [ids[0]]
    assert await _all(store, JobFilter(command_contains="alpha")) == []
    assert await _all(store, JobFilter(command_contains="beta")) == []
