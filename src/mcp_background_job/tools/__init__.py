"""The MCP tools and resource templates, one module-level function each, grouped by what they
do: ``start`` (execute, rerun), ``read`` (list, status, output, tail, audit and the ``job://``
templates), ``control`` (interact, kill) and ``wait`` (wait, wait_many). Each is a thin typed
function over ``App``: the App and the client come from FastMCP dependencies (``common``), so a
tool can be imported and called alone with an App passed in. ``register`` puts them on a server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastmcp import FastMCP

from .control import interact, kill
from .find import grep, search
from .read import audit, job_output_resource, job_resource, list_jobs, output, status, tail
from .start import execute, rerun
from .wait import wait, wait_many

#: In the order tools/list shows them (clients list them in this order).
TOOLS: tuple[Callable[..., Any], ...] = (
    execute, rerun, list_jobs, status, output, tail, grep, search, interact, kill, wait, wait_many,
    audit,
)  # fmt: skip
RESOURCE_TEMPLATES: tuple[Callable[..., Any], ...] = (job_resource, job_output_resource)


def register(mcp: FastMCP) -> None:
    """Add every resource template and tool to ``mcp``."""
    for template in RESOURCE_TEMPLATES:
        mcp.add_resource(template)
    for fn in TOOLS:
        mcp.add_tool(fn)
