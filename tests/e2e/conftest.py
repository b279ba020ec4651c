"""Fixtures for the end-to-end tests: a database path per test, server logs on failure, and no
job process left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import job_processes


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture(autouse=True)
def _server_logs_and_leftovers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    """Show the servers' logs when a test fails; kill job processes a failed test left behind.

    Only processes started by this test's servers are touched: they carry the job marker in
    their environment and run below this test's tmp_path.
    """
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for log in sorted(tmp_path.glob("server-*.log")):
            text = log.read_text(errors="replace")
            sys.stderr.write(f"\n----- {log.name} (last 4000 chars) -----\n{text[-4000:]}\n")
    for pid in job_processes(under=tmp_path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)
