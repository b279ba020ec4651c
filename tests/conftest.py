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
