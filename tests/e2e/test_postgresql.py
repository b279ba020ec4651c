"""Over MCP on stdio, with --db a PostgreSQL URL: two servers (two "hosts") on one database,
as agents on two machines would use it; one runs a job queued for the other's host and both
read it. The servers run from the console script, like a client starts them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from ..pg import PgServer
from .helpers import CALL_TIMEOUT_S, CONSOLE_SCRIPT, wait_for


def _client(url: str, host: str, tmp_path: Path) -> Client[StdioTransport]:
    env = {
        **os.environ,
        "MCP_BACKGROUND_JOB_HOST": host,
        "MCP_BACKGROUND_JOB_SPOOL_DIR": str(tmp_path / f"spool-{host}"),
    }
    transport = StdioTransport(
        str(CONSOLE_SCRIPT), ["--db", url], env=env, cwd=str(tmp_path), keep_alive=False,
        log_file=tmp_path / f"server-{host}.log",
    )  # fmt: skip
    return Client(transport, timeout=CALL_TIMEOUT_S)


async def _call(client: Client[StdioTransport], tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert result.structured_content is not None
    return result.structured_content


async def test_two_hosts_share_one_postgresql_database(pg_server: PgServer, tmp_path: Path) -> None:
    url = pg_server.new_database()
    async with _client(url, "laptop", tmp_path) as laptop:
        here = await _call(laptop, "execute", command="printf 'here\\n'")
        there = await _call(
            laptop, "execute", command="printf 'there\\n'", host="buildbox", cwd=str(tmp_path)
        )
        assert here["host"] == "laptop" and there["status"] == "queued"
        done = await _call(laptop, "wait", job_id=here["id"], timeout_s=30)
        assert done["finished"] and done["job"]["status"] == "completed"
        async with _client(url, "buildbox", tmp_path) as buildbox:

            async def ended() -> bool:
                view = await _call(laptop, "status", job_id=there["id"])
                return bool(view["status"] == "completed")

            await wait_for(ended, timeout=30)
            for client in (laptop, buildbox):
                tail = await _call(client, "tail", job_id=there["id"], lines=5)
                assert tail["text"] == "there\n"
                mine = await _call(client, "list", host="buildbox")
                assert [j["id"] for j in mine["jobs"]] == [there["id"]]
            output = await _call(buildbox, "output", job_id=here["id"])
            assert output["text"] == "here\n"
