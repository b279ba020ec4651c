"""Jobs as MCP resources, and notifications when a job's status changes, through a real MCP
client in both protocol eras: 2025-11-25 (``mode="legacy"``: resources/subscribe) and
2026-07-28 (the default: subscriptions/listen)."""

from __future__ import annotations

import asyncio
import json
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mcp_types
import pytest
from fastmcp import Client
from fastmcp.client.transports import FastMCPTransport, StdioTransport
from fastmcp.exceptions import ResourceError
from mcp.client.subscriptions import listen
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from mcp_background_job import __version__
from mcp_background_job.app import App
from mcp_background_job.config import Settings
from mcp_background_job.server import create_server

from .conftest import wait_for


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(db=tmp_path / "jobs.db", subreaper=False, kill_grace_s=2.0)


async def _job(client: Client[Any], command: str) -> str:
    result = await client.call_tool("execute", {"command": command})
    assert result.structured_content is not None
    return str(result.structured_content["id"])


async def _text(client: Client[Any], uri: str) -> str:
    [content] = await client.read_resource(uri)
    assert isinstance(content, mcp_types.TextResourceContents)
    return content.text


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_jobs_are_listed_and_read_as_resources(db_target: Path | str, mode: str) -> None:
    # On each engine (``db_target``): the resources read the store like the tools.
    settings = Settings(db=db_target, subreaper=False, kill_grace_s=2.0)
    async with Client(create_server(settings), mode=mode) as client:
        job_id = await _job(client, "printf 'line one\\n'; printf 'oops\\n' >&2; exit 2")
        await client.call_tool("wait", {"job_id": job_id})
        listed = {str(r.uri): r for r in await client.list_resources()}
        assert {f"job://{job_id}", f"job://{job_id}/output"} <= set(listed)
        assert listed[f"job://{job_id}"].mime_type == "application/json"
        templates = {t.uri_template for t in await client.list_resource_templates()}
        assert templates == {"job://{job_id}", "job://{job_id}/output"}

        view = json.loads(await _text(client, f"job://{job_id[:6]}"))  # a prefix works
        assert (view["id"], view["status"], view["exit_code"]) == (job_id, "failed", 2)
        assert [t["status"] for t in view["transitions"]] == ["queued", "running", "failed"]
        assert await _text(client, f"job://{job_id}/output") == "line one\noops\n"

        with pytest.raises((ResourceError, MCPError), match="No job with id 'ffffffffffff'"):
            await client.read_resource("job://ffffffffffff")


async def test_long_output_resource_keeps_the_end_and_says_what_is_left_out(
    settings: Settings,
) -> None:
    async with Client(create_server(settings)) as client:
        job_id = await _job(client, "seq 1 30000")
        await client.call_tool("wait", {"job_id": job_id})
        text = await _text(client, f"job://{job_id}/output")
        assert text.startswith("[... the first ")
        assert "read them with the `output` tool" in text
        assert text.endswith("29999\n30000\n")
        assert len(text.encode()) < 70_000


async def test_legacy_subscribers_hear_about_status_changes(settings: Settings) -> None:
    updates: list[str] = []

    async def on_message(message: object) -> None:
        if isinstance(message, mcp_types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    async with Client(create_server(settings), mode="legacy", message_handler=on_message) as c:
        caps = c.initialize_result.capabilities if c.initialize_result else None
        assert caps is not None and caps.resources is not None and caps.resources.subscribe
        job_id = await _job(c, "read line; echo got $line")
        uri = f"job://{job_id}"
        with warnings.catch_warnings():  # deprecated in 2026-07-28, the era this mode avoids
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await c.session.subscribe_resource(uri)
        await wait_for(lambda: uri in updates)  # queued/running, seen after subscribing
        seen = len([u for u in updates if u == uri])
        await c.call_tool("interact", {"job_id": job_id, "input": "hi\n", "wait_s": 0})
        await c.call_tool("wait", {"job_id": job_id})
        # Sent later, outside any request: the job ended while nobody asked.
        await wait_for(lambda: len([u for u in updates if u == uri]) > seen)
        assert f"job://{job_id}/output" not in updates  # not subscribed to that one


async def test_listen_streams_carry_status_changes_in_the_new_era(
    settings: Settings, tmp_path: Path
) -> None:
    async with Client(create_server(settings)) as client:
        assert client.session.protocol_version == "2026-07-28"
        job_id = await _job(client, "sleep 30")
        uri = f"job://{job_id}"
        async with listen(client.session, resource_subscriptions=[uri]) as sub:
            assert sub.honored.resource_subscriptions == [uri]
            # Another process on the same database kills it: changes of other servers' jobs are
            # seen too (the server polls job_events, not its own runner).
            other = await App.open(settings)
            try:
                await other.kill(job_id, "KILL", 0)
            finally:
                await other.close()

            async def next_event() -> object:
                return await sub.__anext__()

            event = await asyncio.wait_for(next_event(), 30)
            assert getattr(event, "uri", None) == uri
        view = json.loads(await _text(client, uri))
        assert view["status"] == "killed"


@pytest.fixture
async def two_servers(
    settings: Settings,
) -> AsyncIterator[tuple[Client[FastMCPTransport], Client[FastMCPTransport]]]:
    async with (
        Client(create_server(settings)) as a,
        Client(create_server(settings)) as b,
    ):
        yield a, b


async def test_resources_show_jobs_of_every_server_on_the_database(
    two_servers: tuple[Client[FastMCPTransport], Client[FastMCPTransport]],
) -> None:
    a, b = two_servers
    job_id = await _job(a, "echo from a")
    await a.call_tool("wait", {"job_id": job_id})
    assert f"job://{job_id}" in {str(r.uri) for r in await b.list_resources()}
    assert await _text(b, f"job://{job_id}/output") == "from a\n"


async def test_over_stdio_both_eras(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("mcp-background-job")
    for mode in ("legacy", "auto"):
        transport = StdioTransport(
            str(exe), ["--db", str(tmp_path / "jobs.db")], keep_alive=False,
            log_file=tmp_path / f"{mode}.log",
        )  # fmt: skip
        async with Client(transport, mode=mode, timeout=60) as client:
            job_id = await _job(client, f"echo {mode}")
            await client.call_tool("wait", {"job_id": job_id})
            assert f"job://{job_id}" in {str(r.uri) for r in await client.list_resources()}
            assert await _text(client, f"job://{job_id}/output") == f"{mode}\n"


@pytest.mark.parametrize(("mode", "code"), [("legacy", -32002), ("auto", -32602)])
async def test_unknown_resources_are_not_found_in_the_era_s_words(
    settings: Settings, mode: str, code: int
) -> None:
    """Protocol 2025-11-25 says -32002; 2026-07-28 says -32602 (SEP-2164 retired -32002). Either
    way with the URI in data, never -32603 Internal error. Malformed ids and paths no template
    matches are not found too; an ambiguous prefix is an invalid parameter."""
    async with Client(create_server(settings), mode=mode) as client:
        assert client.server_info is not None
        assert client.server_info.version == __version__
        a = await _job(client, "true")
        while True:  # a second job whose id starts like the first: an ambiguous prefix
            b = await _job(client, "true")
            if b[0] == a[0]:
                break
        for uri in ("job://ffffffffffff", "job://ffffffffffff/output", "job://not-hex",
                    "job://", "job://abc/other", "job:///", "job://a%00b", "other://x",
                    "job://" + "a" * 5000):  # fmt: skip
            with pytest.raises(MCPError) as info:
                await client.read_resource(uri)
            assert info.value.error.code == code, (uri, info.value.error)
            assert info.value.error.data == {"uri": uri}
            assert info.value.error.message.startswith("Resource not found: ")
            assert len(info.value.error.message) < 1000
        with pytest.raises(MCPError) as info:
            await client.read_resource(f"job://{a[0]}")
        assert info.value.error.code == -32602
        assert "matches several jobs" in info.value.error.message
