"""The server over HTTP for end-to-end tests: ``serve --http`` as a subprocess on a free port of
127.0.0.1, tokens made with the ``token`` command, and a fastmcp Client with bearer auth."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from .helpers import CALL_TIMEOUT_S, wait_for

_numbers = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_background_job.cli", "--db", str(db), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def make_token(db: Path, name: str, scope: str, *extra: str) -> str:
    done = cli(db, "token", "create", name, "--scope", scope, *extra)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("mbj_") and "\n" not in token, done.stdout
    return token


@dataclass
class HttpServer:
    url: str
    db: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    def client(self, token: str | None) -> Client[StreamableHttpTransport]:
        return Client(StreamableHttpTransport(self.mcp_url, auth=token), timeout=CALL_TIMEOUT_S)


@contextlib.asynccontextmanager
async def http_server(db: Path, env: dict[str, str] | None = None) -> AsyncIterator[HttpServer]:
    """``mcp-background-job serve --http 127.0.0.1:PORT``, ready to take requests; stopped
    with SIGTERM (its lifespan records running jobs as killed) when the block ends."""
    port = free_port()
    log = db.with_name(f"server-{next(_numbers)}.log")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mcp_background_job.cli", "--db", str(db), "serve",
             "--http", f"127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=db.parent,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        assert process.poll() is None, f"server exited: {log.read_text()[-3000:]}"
        try:
            async with httpx2.AsyncClient() as c:
                r = await c.get(f"{url}/login", timeout=2)
            return r.status_code == 200
        except httpx2.TransportError:
            return False

    try:
        await wait_for(ready, timeout=180, interval=0.2, message="the HTTP server to listen")
        yield HttpServer(url=url, db=db, log=log, process=process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
