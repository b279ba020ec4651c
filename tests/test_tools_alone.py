"""Each tool is a module-level function: importable and callable on its own, with the App (and
the client) passed in instead of resolved from a server's lifespan."""

from __future__ import annotations

from typing import Any, cast

import pytest
from fastmcp.exceptions import ToolError

from mcp_background_job.app import App, Client
from mcp_background_job.tools import RESOURCE_TEMPLATES, TOOLS
from mcp_background_job.tools.read import job_resource, status, tail
from mcp_background_job.tools.start import execute

from .conftest import wait_for


async def test_a_tool_runs_without_a_server(app: App) -> None:
    who = Client(name="test", version="1", session_id=None)
    started = await execute("echo alone", app=app, client=who)

    async def ended() -> bool:
        return (await status(started.id, app=app)).status == "completed"

    await wait_for(ended)
    assert (await tail(started.id, app=app)).text == "alone\n"
    assert f'"id": "{started.id}"' in await job_resource(started.id, app=app)


async def test_domain_errors_become_tool_errors_with_their_message(app: App) -> None:
    with pytest.raises(ToolError, match="No job with id 'ffffffffffff'"):
        await tail("ffffffffffff", app=app)


def test_every_tool_and_template_is_registered_once() -> None:
    names = [cast(Any, fn).__fastmcp__.name or fn.__name__ for fn in TOOLS]
    assert names == [
        "execute", "rerun", "list", "status", "output", "tail", "grep", "search", "interact",
        "kill", "wait", "wait_many", "audit",
    ]  # fmt: skip
    assert [cast(Any, fn).__fastmcp__.uri for fn in RESOURCE_TEMPLATES] == [
        "job://{job_id}",
        "job://{job_id}/output",
    ]
