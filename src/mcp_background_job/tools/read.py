"""Read-only tools and resources: ``list``, ``status``, ``output``, ``tail``, ``audit``, and the
``job://{id}`` and ``job://{id}/output`` resource templates."""

from __future__ import annotations

from typing import Annotated, Literal

from fastmcp.dependencies import Depends
from fastmcp.resources import resource
from fastmcp.tools import tool
from pydantic import Field

from ..app import MAX_EVENT_ID, MAX_READ_BYTES, MAX_TAIL_LINES, App
from ..jobs import JobStatus
from ..models import AuditResult, JobView, ListResult, OutputResult, TailResult
from .common import (
    ID_MAX,
    LABEL_MAX,
    PATTERN_MAX,
    READ_ONLY,
    SHORT_MAX,
    JobId,
    RenderArg,
    StreamArg,
    get_app,
    job_json,
    job_output_text,
    tool_call,
)


@resource(
    "job://{job_id}",
    name="job",
    description="A job: command, status, exit code or signal, times, output sizes and "
    "transitions (JSON). A unique id prefix works.",
    mime_type="application/json",
    annotations={"readOnlyHint": True, "idempotentHint": True},
)
async def job_resource(job_id: str, app: App = Depends(get_app)) -> str:
    return await job_json(app, job_id)


@resource(
    "job://{job_id}/output",
    name="job output",
    description="The last 64 KiB of a job's output (stdout and stderr in the order stored); "
    "the `output` tool pages through all of it.",
    mime_type="text/plain",
    annotations={"readOnlyHint": True, "idempotentHint": True},
)
async def job_output_resource(job_id: str, app: App = Depends(get_app)) -> str:
    return await job_output_text(app, job_id)


@tool(name="list", title="List jobs (history)", annotations=READ_ONLY)
async def list_jobs(
    status: Annotated[JobStatus | None, Field(description="Only jobs in this status.")] = None,
    label: Annotated[
        str | None, Field(max_length=LABEL_MAX, description="Only jobs with this label.")
    ] = None,
    command_contains: Annotated[
        str | None,
        Field(max_length=PATTERN_MAX, description="Only commands containing this text."),
    ] = None,
    since: Annotated[
        str | None,
        Field(
            max_length=SHORT_MAX,
            description="Only jobs created since: ISO time or an age like 30m, 2h, 7d.",
        ),
    ] = None,
    limit: Annotated[int, Field(ge=1, le=200)] = 20,
    cursor: Annotated[
        str | None,
        Field(max_length=SHORT_MAX, description="next_cursor of the previous page."),
    ] = None,
    host: Annotated[
        str | None,
        Field(max_length=255, description="Only jobs of this machine (shared databases)."),
    ] = None,
    app: App = Depends(get_app),
) -> ListResult:
    """Jobs newest first, including those of earlier server runs, one page at a time."""
    return await tool_call(
        app.list_jobs(status, label, command_contains, since, limit, cursor, host)
    )


@tool(title="Job status", annotations=READ_ONLY)
async def status(job_id: JobId, app: App = Depends(get_app)) -> JobView:
    """Everything about a job: status, exit code or signal, why it ended, times, output
    sizes and every status transition."""
    return await tool_call(app.status(job_id))


@tool(title="Read job output", annotations=READ_ONLY)
async def output(
    job_id: JobId,
    stream: StreamArg = "stdout",
    cursor: Annotated[
        str | None,
        Field(
            max_length=SHORT_MAX,
            description="Cursor from the previous read; omit to start at 0.",
        ),
    ] = None,
    max_bytes: Annotated[int, Field(ge=1, le=MAX_READ_BYTES)] = MAX_READ_BYTES,
    render: RenderArg = "auto",
    app: App = Depends(get_app),
) -> OutputResult:
    """Read output from CURSOR on, at most MAX_BYTES. Call again with the returned cursor
    to continue: no gaps, no repeats. `end` is true once a finished job is read fully."""
    return await tool_call(app.output(job_id, stream, cursor, max_bytes, render))


@tool(title="Last lines of output", annotations=READ_ONLY)
async def tail(
    job_id: JobId,
    lines: Annotated[
        int, Field(ge=0, le=MAX_TAIL_LINES, description="How many lines from the end.")
    ] = 50,
    stream: StreamArg = "stdout",
    render: RenderArg = "auto",
    app: App = Depends(get_app),
) -> TailResult:
    """The last LINES lines of a job's output (fast, whatever the output's size)."""
    return await tool_call(app.tail(job_id, lines, stream, render))


@tool(title="Security audit log", annotations=READ_ONLY)
async def audit(
    limit: Annotated[int, Field(ge=1, le=500)] = 50,
    kind: Annotated[
        Literal["execute", "kill", "interact", "rate_limited", "policy_loaded"] | None,
        Field(description="Only events of this kind."),
    ] = None,
    since: Annotated[
        str | None,
        Field(
            max_length=SHORT_MAX,
            description="Only events since: ISO time or an age like 30m, 2h.",
        ),
    ] = None,
    job_id: Annotated[
        str | None, Field(max_length=ID_MAX, description="Only events about this job.")
    ] = None,
    before_id: Annotated[
        int | None,
        Field(ge=1, le=MAX_EVENT_ID, description="next_before_id of the previous page."),
    ] = None,
    app: App = Depends(get_app),
) -> AuditResult:
    """Security events newest first: each execute with the policy's decision and rule
    (refusals too), kills, interacts (sizes only), rate-limit hits, and the policy loaded
    at each server start. Client names are self-reported."""
    return await tool_call(app.audit(limit, kind, since, job_id, before_id))
