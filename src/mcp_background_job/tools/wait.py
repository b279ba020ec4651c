"""Tools that wait for jobs to end: ``wait`` and ``wait_many``, with progress notifications."""

from __future__ import annotations

from typing import Annotated, Literal

from fastmcp import Context
from fastmcp.dependencies import CurrentContext, Depends
from fastmcp.tools import tool
from pydantic import Field

from ..app import MAX_WAIT_JOBS, App
from ..models import WaitManyResult, WaitResult
from .common import (
    LABEL_MAX,
    PATTERN_MAX,
    READ_ONLY,
    SHORT_MAX,
    JobId,
    JobIdItem,
    WaitTimeout,
    get_app,
    progress_of,
    tool_call,
)


@tool(title="Wait for a job", annotations=READ_ONLY)
async def wait(
    job_id: JobId,
    timeout_s: WaitTimeout = 30.0,
    until: Annotated[
        str | None,
        Field(max_length=PATTERN_MAX, description="RE2 regex: return once a new line matches."),
    ] = None,
    cursor: Annotated[
        str | None, Field(max_length=SHORT_MAX, description="With until: search from here.")
    ] = None,
    ctx: Context = CurrentContext(),
    app: App = Depends(get_app),
) -> WaitResult:
    """Return when the job has ended or TIMEOUT_S passed (finished=false: call again).
    Sends progress notifications while waiting."""

    return await tool_call(app.wait(job_id, timeout_s, progress_of(ctx), until, cursor))


@tool(title="Wait for several jobs", annotations=READ_ONLY)
async def wait_many(
    job_ids: Annotated[
        list[JobIdItem],
        Field(max_length=MAX_WAIT_JOBS, description="Ids of the jobs (unique prefixes work)."),
    ] = [],  # noqa: B006 (pydantic copies defaults)
    label: Annotated[
        str | None,
        Field(
            max_length=LABEL_MAX,
            description="Also every job with this label that is queued or running now.",
        ),
    ] = None,
    return_when: Annotated[
        Literal["all", "first"],
        Field(description="all: when every job has ended; first: when one has."),
    ] = "all",
    timeout_s: WaitTimeout = 30.0,
    ctx: Context = CurrentContext(),
    app: App = Depends(get_app),
) -> WaitManyResult:
    """Wait for a batch of jobs in one call (say the shards of a test run): returns when all
    have ended (or the first, return_when=first) or TIMEOUT_S passed (finished=false: call
    again), with each job's status and exit code and a count per status. Sends progress
    notifications while waiting."""

    return await tool_call(app.wait_many(job_ids, label, return_when, timeout_s, progress_of(ctx)))
