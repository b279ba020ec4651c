"""Shared fixtures: real SQLite files migrated by Alembic, real settings, a real App; a real
PostgreSQL server per test process for the tests that run on both engines (``db_target``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_background_job.app import App
from mcp_background_job.config import Settings
from mcp_background_job.store import Store

from .pg import PgServer, running_server, server_bin

#: The engines the storage, migration and the core app/e2e tests run on (``db_target``).
ENGINES = ("sqlite", "postgresql")


async def wait_for(
    predicate: Callable[[], Awaitable[Any]] | Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL cluster for this test process (each xdist worker has its own)."""
    if server_bin() is None:
        pytest.skip("the PostgreSQL server is not installed (apt-get install postgresql)")
    with running_server() as server:
        yield server


@pytest.fixture(params=ENGINES)
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """A new database on each engine: an SQLite file path, or a new PostgreSQL database's URL."""
    if request.param == "sqlite":
        return tmp_path / "state" / "jobs.db"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.new_database()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(db=tmp_path / "state" / "jobs.db", subreaper=False, kill_grace_s=2.0)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    s = Store(settings.db)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    a = await App.open(settings)
    yield a
    await a.close()


#: Files that take the longest (minutes of real servers, a wheel build, a browser, PostgreSQL),
#: handed out first: with one file per worker (``--dist loadfile``), one of them started last
#: would keep the whole run waiting on it alone after the other workers are done.
SLOW_FIRST = (  # by their time in a full run (junit XML), longest single tests first
    "tests/e2e/test_faults.py",
    "tests/test_packaging.py",
    "tests/test_cli.py",
    "tests/test_storage_faults.py",
    "tests/e2e/test_security.py",
    "tests/e2e/test_masking.py",
    "tests/e2e/test_output.py",
    "tests/e2e/test_trees.py",
    "tests/test_readme.py",
    "tests/e2e/test_grep_pages.py",
    "tests/e2e/test_detach.py",
    "tests/test_bootstrap.py",
    "tests/e2e/test_policy_e2e.py",
    "tests/e2e/test_interactive.py",
    "tests/test_cli_grep.py",
    "tests/test_app.py",
    "tests/e2e/test_protocol.py",
    "tests/e2e/test_storage.py",
    "tests/e2e/test_http.py",
    "tests/e2e/test_grep.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}
    root = Path(str(config.rootpath))

    def order(item: pytest.Item) -> int:
        path = Path(str(item.path)).relative_to(root).as_posix()
        return rank.get(path, len(SLOW_FIRST))

    items.sort(key=order)  # stable: each file keeps its tests in order
