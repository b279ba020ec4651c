"""End-to-end helpers: the real server as a stdio subprocess driven by a real fastmcp Client,
polling, the database read from the outside, and processes read from /proc.

Every server gets its own log file next to the database (``server-N.log``); the conftest prints
the logs of a failed test's servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from fastmcp import Client
from fastmcp.client.transports import StdioTransport

T = TypeVar("T")

MARKER = "MCP_BACKGROUND_JOB_ID"
#: The installed console script (same venv as the interpreter running the tests).
CONSOLE_SCRIPT = Path(sys.executable).with_name("mcp-background-job")
#: Request timeout of every client: generous, a hung call fails the test instead of hanging it.
CALL_TIMEOUT_S = 60.0

_server_numbers = itertools.count(1)


# --- polling -------------------------------------------------------------------------------


# The value returned is truthy, so never None: the overloads say so to the callers.
@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T | None]],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...
@overload
async def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...
async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        last = result
        if loop.time() >= deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {message} (last: {last!r})"
            )
        await asyncio.sleep(interval)


# --- the server under test -----------------------------------------------------------------


@dataclass
class Server:
    """One running server process and the MCP client connected to it."""

    client: Client[StdioTransport]
    db: Path
    log: Path
    pid: int
    server_id: str

    async def call(self, tool: str, /, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Call a tool and return its structured content (raises ToolError on a tool error)."""
        result = await self.client.call_tool(tool, args, timeout=timeout)
        assert result.structured_content is not None, f"{tool} returned no structured content"
        return result.structured_content

    async def execute(self, command: str, **args: Any) -> dict[str, Any]:
        return await self.call("execute", command=command, **args)

    async def wait_done(self, job_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """``wait`` until the job has ended; returns the job view. Fails if it does not end."""
        r = await self.call("wait", job_id=job_id, timeout_s=timeout_s)
        assert r["finished"], f"job {job_id} did not end in {timeout_s} s: {r}"
        job: dict[str, Any] = r["job"]
        return job

    async def read_all(
        self,
        job_id: str,
        stream: str = "stdout",
        max_bytes: int = 65536,
        max_calls: int = 100_000,
    ) -> tuple[str, list[dict[str, Any]]]:
        """Page through a finished job's output with ``output``: the text and every page."""
        pages: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(max_calls):
            args: dict[str, Any] = {"job_id": job_id, "stream": stream, "max_bytes": max_bytes}
            if cursor is not None:
                args["cursor"] = cursor
            page = await self.call("output", **args)
            pages.append(page)
            if page["end"]:
                return "".join(p["text"] for p in pages), pages
            assert page["cursor"] != (cursor or "0:0"), (
                f"output made no progress at cursor {cursor!r} with max_bytes={max_bytes} "
                f"and did not reach the end: {page}"
            )
            cursor = page["cursor"]
        raise AssertionError(f"output did not reach the end in {max_calls} calls")


def server_command(
    db: Path, *, console_script: bool = False, extra: tuple[str, ...] = ()
) -> tuple[str, list[str]]:
    if console_script:
        return str(CONSOLE_SCRIPT), ["--db", str(db), *extra]
    return sys.executable, ["-m", "mcp_background_job.cli", "--db", str(db), *extra]


def newest_server(db: Path) -> tuple[str, int]:
    """(id, pid) of the server that registered last in the database."""
    with connect(db) as con:
        row = con.execute("select id, pid from servers order by started_at desc limit 1").fetchone()
    assert row is not None, "no server registered in the database"
    return row[0], row[1]


@contextlib.asynccontextmanager
async def start_server(
    db: Path,
    *,
    env: dict[str, str] | None = None,
    mode: Literal["auto", "legacy"] = "auto",
    console_script: bool = False,
    cwd: Path | None = None,
) -> AsyncIterator[Server]:
    """Start ``mcp-background-job --db DB`` on stdio and connect a client, like an agent would.

    Leaving the block closes the client: stdin is closed and the server shuts down gracefully.
    """
    log = db.with_name(f"server-{next(_server_numbers)}.log")
    command, args = server_command(db, console_script=console_script)
    transport = StdioTransport(
        command,
        args,
        env=env,
        cwd=str(cwd or db.parent),
        keep_alive=False,
        log_file=log,
    )
    async with Client(transport, timeout=CALL_TIMEOUT_S, mode=mode) as client:
        # The lifespan (migrate, register) has run before the client is connected; reconciling
        # what servers that are gone left runs in the background.
        server_id, pid = newest_server(db)
        yield Server(client=client, db=db, log=log, pid=pid, server_id=server_id)


# --- SQLite, read from the outside ---------------------------------------------------------


@contextlib.contextmanager
def connect(db: Path) -> Iterator[sqlite3.Connection]:
    """A short-lived connection to the server's database (it is in WAL mode: reads are fine)."""
    con = sqlite3.connect(db, timeout=10)
    try:
        yield con
    finally:
        con.close()


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with connect(db) as con:
        return con.execute(sql, params).fetchall()


def stored_bytes(db: Path, job_id: str, stream: str = "stdout") -> bytes:
    """The job's stored output straight from ``output_chunks``, in byte order."""
    rows = query(
        db,
        "select byte_offset, data from output_chunks where job_id = ? and stream = ? "
        "order by byte_offset",
        job_id,
        stream,
    )
    at = 0
    for offset, data in rows:
        assert offset == at, f"chunk at {offset}, expected {at} (gap or overlap)"
        at += len(data)
    return b"".join(data for _, data in rows)


# --- processes, from /proc -----------------------------------------------------------------


def proc_state(pid: int) -> str | None:
    """The process's state letter, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2 :].split()[0].decode()


def _stat_field(pid: int, index: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(raw[raw.rindex(b")") + 2 :].split()[index])


def parent_pid(pid: int) -> int | None:
    return _stat_field(pid, 1)


def session_id(pid: int) -> int | None:
    return _stat_field(pid, 3)


def is_running(pid: int | None) -> bool:
    """True if the process exists and is not a zombie (a zombie has finished)."""
    return pid is not None and proc_state(pid) not in (None, "Z", "X")


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def job_processes(job_id: str | None = None, under: Path | None = None) -> set[int]:
    """Live processes that carry the job marker (of ``job_id``, or of any job), optionally only
    those whose working directory is inside ``under``."""
    needle = f"{MARKER}={job_id}\0".encode() if job_id else f"{MARKER}=".encode()
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if needle not in _read(f"/proc/{pid}/environ") or not is_running(pid):
            continue
        if under is not None:
            try:
                cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            except OSError:
                continue
            if not cwd.is_relative_to(under):
                continue
        found.add(pid)
    return found


def pids_with_cmdline(*argv: str) -> set[int]:
    """Live processes whose command line is exactly ``argv``."""
    want = b"\0".join(a.encode() for a in argv) + b"\0"
    return {
        int(e.name)
        for e in os.scandir("/proc")
        if e.name.isdigit() and _read(f"/proc/{e.name}/cmdline") == want and is_running(int(e.name))
    }
