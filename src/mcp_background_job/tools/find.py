"""Tools that find lines in output: ``grep`` (one job) and ``search`` (the whole history)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import Field

from ..app import App
from ..jobs import JobStatus
from ..matching import GrepResult, SearchResult
from .common import (
    LABEL_MAX,
    PATTERN_MAX,
    READ_ONLY,
    SHORT_MAX,
    JobId,
    StreamArg,
    get_app,
    tool_call,
)

Regex = Annotated[str, Field(min_length=1, max_length=PATTERN_MAX, description="RE2 regex.")]
IgnoreCase = Annotated[bool, Field(description="Match case-insensitively.")]


@tool(title="Find lines in a job's output", annotations=READ_ONLY)
async def grep(
    job_id: JobId,
    pattern: Regex,
    stream: StreamArg = "both",
    context: Annotated[int, Field(ge=0, le=20, description="Lines around each match.")] = 0,
    max_matches: Annotated[int, Field(ge=1, le=500)] = 50,
    ignore_case: IgnoreCase = False,
    cursor: Annotated[
        str | None, Field(max_length=SHORT_MAX, description="next_cursor of the previous call.")
    ] = None,
    app: App = Depends(get_app),
) -> GrepResult:
    """Matching lines (as `output` shows them, secrets masked) with line numbers and cursors
    for `output`; stdout's first, then stderr's."""
    return await tool_call(
        app.grep(job_id, pattern, stream, context, max_matches, ignore_case, cursor)
    )


@tool(title="Search all jobs' output", annotations=READ_ONLY)
async def search(
    pattern: Regex,
    label: Annotated[str | None, Field(max_length=LABEL_MAX)] = None,
    status: Literal["queued", "running", "completed", "failed", "killed", "timed_out"]
    | None = None,
    since: Annotated[
        str | None, Field(max_length=SHORT_MAX, description="ISO time or age: 2h, 7d.")
    ] = None,
    command_contains: Annotated[str | None, Field(max_length=PATTERN_MAX)] = None,
    limit: Annotated[int, Field(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Field(max_length=SHORT_MAX, description="next_cursor of the previous call.")
    ] = None,
    ignore_case: IgnoreCase = False,
    app: App = Depends(get_app),
) -> SearchResult:
    """Jobs whose output matches, newest first, with match counts. Bounded work per call:
    go on with next_cursor."""
    return await tool_call(
        app.search(
            pattern,
            label,
            JobStatus(status) if status else None,
            since,
            command_contains,
            limit,
            cursor,
            ignore_case,
        )
    )
