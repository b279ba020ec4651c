"""``serve --http`` end to end: a real fastmcp Client over streamable HTTP with bearer tokens
made by the ``token`` command; what a read token may not do; refused requests (401/429) and
their audit rows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastmcp.exceptions import ToolError

from .helpers import query, wait_for
from .httpserver import cli, http_server, make_token

pytestmark = pytest.mark.timeout(300)


async def call(client: Any, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert r.structured_content is not None
    content: dict[str, Any] = r.structured_content
    return content


async def test_every_tool_with_a_run_token_and_the_audit_names_the_token(db: Path) -> None:
    run = make_token(db, "agent-1", "run")
    # Two clients at once: the server takes several connections.
    async with http_server(db) as srv, srv.client(run) as c, srv.client(run) as c2:
        tools = {t.name for t in await c.list_tools()}
        assert {"execute", "rerun", "list", "status", "output", "tail", "interact", "kill",
                "wait", "wait_many", "audit"} <= tools  # fmt: skip
        job = (await call(c, "execute", command="printf 'one\\ntwo\\n'"))["id"]
        done = await call(c2, "wait", job_id=job, timeout_s=30)
        assert done["finished"] and done["job"]["status"] == "completed"
        assert (await call(c, "status", job_id=job))["exit_code"] == 0
        assert (await call(c, "output", job_id=job))["text"] == "one\ntwo\n"
        assert (await call(c, "tail", job_id=job, lines=1))["text"] == "two\n"
        assert job in [j["id"] for j in (await call(c2, "list"))["jobs"]]
        again = (await call(c, "rerun", job_id=job))["id"]
        many = await call(c, "wait_many", job_ids=[job, again], timeout_s=30)
        assert many["finished"]
        cat = (await call(c, "execute", command="cat"))["id"]
        said = await call(c, "interact", job_id=cat, input="hello\n", until="hello")
        assert "hello" in said["output"]
        killed = await call(c, "kill", job_id=cat)
        assert killed["id"] == cat
        events = (await call(c, "audit", limit=50))["events"]
    by_kind = {(e["kind"], e["job_id"]): e for e in events}
    for key in (("execute", job), ("execute", again), ("interact", cat), ("kill", cat)):
        assert by_kind[key]["token"] == "agent-1", (key, by_kind.get(key))
    rows = query(db, "select token from audit_events where kind = 'execute' and job_id = ?", job)
    assert rows == [("agent-1",)]


async def test_a_read_token_reads_but_may_not_execute_kill_or_interact(db: Path) -> None:
    run = make_token(db, "runner", "run")
    read = make_token(db, "viewer", "read")
    async with http_server(db) as srv:
        async with srv.client(run) as rc:
            job = (await call(rc, "execute", command="cat"))["id"]
        async with srv.client(read) as c:
            assert job in [j["id"] for j in (await call(c, "list"))["jobs"]]
            assert (await call(c, "status", job_id=job))["status"] in ("queued", "running")
            # Finding things is reading: grep and search are open to a read token.
            assert (await call(c, "grep", job_id=job, pattern="x"))["matches"] == []
            assert "jobs" in await call(c, "search", pattern="x")
            for tool, args in (
                ("execute", {"command": "touch refused"}),
                ("kill", {"job_id": job}),
                ("interact", {"job_id": job, "input": "x\n"}),
                ("rerun", {"job_id": job}),
            ):
                with pytest.raises(ToolError, match=r"read scope.*needs a run token") as why:
                    await call(c, tool, **args)
                assert "grep, search" in str(why.value)  # the read-only tools, as annotated
        assert not (db.parent / "refused").exists()
        async with srv.client(run) as rc:
            assert (await call(rc, "status", job_id=job))["status"] == "running"
            await call(rc, "kill", job_id=job)
    refused = query(db, "select token, detail from audit_events where kind = 'auth_refused'")
    assert len(refused) == 4 and {r[0] for r in refused} == {"viewer"}
    assert query(
        db, "select count(*) from audit_events where kind = 'execute' and token = 'viewer'"
    ) == [(0,)]


async def _status(url: str, token: str | None) -> int:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx2.AsyncClient() as h:
        r = await h.post(url, json=body, headers=headers, timeout=30)
    return r.status_code


async def test_no_bad_revoked_or_expired_token_is_401_and_audited(db: Path) -> None:
    revoked = make_token(db, "old", "run")
    expired = make_token(db, "brief", "run", "--expires", "1s")
    assert cli(db, "token", "revoke", "old").returncode == 0
    listed = cli(db, "token", "list").stdout
    assert "old\trun\trevoked" in listed and revoked not in listed
    async with http_server(db) as srv:
        await wait_for(lambda: "expired" in cli(db, "token", "list").stdout, timeout=30)
        cases = [(None, "missing", None), ("mbj_" + "x" * 43, "unknown", None),
                 (revoked, "revoked", "old"), (expired, "expired", "brief")]  # fmt: skip
        for token, _, _ in cases:
            assert await _status(srv.mcp_url, token) == 401
        # The real client is refused too (its message does not carry the status).
        with pytest.raises(Exception, match="error response"):
            async with srv.client(revoked) as c:
                await c.list_tools()
    rows = query(
        db, "select token, detail from audit_events where kind = 'auth_failed' order by id"
    )
    seen = [(tok, json.loads(d)) for tok, d in rows]
    assert sum(d["reason"] == "revoked" for _, d in seen) >= 2  # the client's attempt too
    for _, reason, name in cases:
        assert any(d["reason"] == reason and tok == name and d["client_address"] == "127.0.0.1"
                   for tok, d in seen), (reason, seen)  # fmt: skip
    # Tokens are stored as hashes only.
    stored = query(db, "select name, sha256 from api_tokens")
    assert all(revoked not in h and expired not in h for _, h in stored)


async def test_failed_attempts_are_rate_limited_per_address(db: Path) -> None:
    run = make_token(db, "ok", "run")
    # One more try per minute: a loaded machine's slow requests do not refill the bucket here.
    async with http_server(db, env={"MCP_BACKGROUND_JOB_HTTP_AUTH_REFILL_S": "60"}) as srv:
        codes = [await _status(srv.mcp_url, f"mbj_guess{i}") for i in range(14)]
        assert codes[:10] == [401] * 10 and codes[-1] == 429, codes
        # Even the right token waits: the answer does not depend on it.
        assert await _status(srv.mcp_url, run) == 429
        await asyncio.sleep(0)  # (the limit refills with time; not waited for here)
    limited = query(db, "select count(*) from audit_events where kind = 'auth_failed' "
                        "and detail like '%rate_limited%'")  # fmt: skip
    assert limited[0][0] >= 1
