"""Tools that start jobs: ``execute`` and ``rerun``."""

from __future__ import annotations

from typing import Annotated

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import Field

from ..app import MAX_AFTER, MAX_LABELS, MAX_PRIORITY, App, Client
from ..models import JobView
from .common import LABEL_MAX, PATH_MAX, JobId, JobIdItem, Timeout, get_app, get_client, tool_call


@tool(
    title="Start a background job",
    annotations={"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False,
                 "openWorldHint": True},
)  # fmt: skip
# Long (~100 lines) only by its Annotated parameters, which are the tool's input schema; the
# body is a few lines (the docstring is the tool's description, so this note is a comment).
async def execute(
    command: Annotated[
        str, Field(description="Shell command line (pipes, &&, redirections work).")
    ],
    cwd: Annotated[
        str | None,
        Field(
            max_length=PATH_MAX,
            description="Existing working directory; default: the server's.",
        ),
    ] = None,
    env: Annotated[
        dict[str, str] | None, Field(description="Variables added to the environment.")
    ] = None,
    timeout_s: Annotated[
        Timeout | None,
        Field(description="Seconds; kill the job (status timed_out) after this long."),
    ] = None,
    labels: Annotated[
        list[Annotated[str, Field(max_length=LABEL_MAX)]],
        Field(
            max_length=MAX_LABELS,
            description="Tags to find the job by later (each 1-64 letters, digits or "
            ". _ : / @ + -).",
        ),
    ] = [],  # noqa: B006
    pty: Annotated[
        bool,
        Field(
            description="Run on a pseudo-terminal, for programs that prompt, colour or "
            "line-buffer only on a terminal (python3 -i, node, psql, ssh-keygen, read -p). "
            "stdout and stderr arrive merged on stdout; reads show plain text by default."
        ),
    ] = False,
    rows: Annotated[
        int | None, Field(ge=2, le=1000, description="Terminal rows (pty only; default 24).")
    ] = None,
    cols: Annotated[
        int | None,
        Field(ge=10, le=1000, description="Terminal columns (pty only; default 120)."),
    ] = None,
    priority: Annotated[
        int,
        Field(
            ge=-MAX_PRIORITY,
            le=MAX_PRIORITY,
            description="When jobs wait for a slot, higher priority starts first; equal "
            "priorities start in submission order.",
        ),
    ] = 0,
    after: Annotated[
        list[JobIdItem],
        Field(
            max_length=MAX_AFTER,
            description="Job ids this job waits for (status queued until they all end). If "
            "one does not complete successfully this job fails without running, unless "
            "run_anyway. Unknown ids are refused.",
        ),
    ] = [],  # noqa: B006
    run_anyway: Annotated[
        bool, Field(description="Start after the `after` jobs end, whatever their outcome.")
    ] = False,
    idle_timeout_s: Annotated[
        Timeout | None,
        Field(
            description="Seconds; kill the job (status timed_out) if it prints nothing this long."
        ),
    ] = None,
    detach: Annotated[
        bool | None,
        Field(
            description="Keep running when this server stops (session end, restart); a later "
            "server adopts it and records its true end. Default: the server's setting (off). "
            "Not with pty."
        ),
    ] = None,
    host: Annotated[
        str | None,
        Field(
            max_length=255,
            description="Run on this machine instead (a server there, sharing this PostgreSQL "
            "database, claims and runs it; cwd must then be an absolute path there).",
        ),
    ] = None,
    app: App = Depends(get_app),
    client: Client = Depends(get_client),
) -> JobView:
    """Start COMMAND in the background and return at once with the job's id and status
    (running, or queued while it waits for a slot or for the jobs in `after`). Output is
    kept in the database: read it with tail/output, or wait for the job to end with wait.
    The server's command policy may refuse a command: the error names the rule and the
    part that matched, and nothing is run."""
    started = app.execute(
        command, cwd, env, timeout_s, labels, pty, rows, cols, priority, after, run_anyway,
        idle_timeout_s, detach, client=client, host=host,
    )  # fmt: skip
    return await tool_call(started)


@tool(
    title="Run a job again",
    annotations={"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False,
                 "openWorldHint": True},
)  # fmt: skip
async def rerun(
    job_id: JobId,
    env: Annotated[
        dict[str, str] | None,
        Field(
            description="Variables added to (or replacing) the old job's; must give the "
            "values of its secret-named ones (*TOKEN*, *KEY*, ...), which are not stored."
        ),
    ] = None,
    app: App = Depends(get_app),
    client: Client = Depends(get_client),
) -> JobView:
    """Start a new job with the same command, cwd, env, labels, terminal, priority and
    timeouts as JOB_ID (not its `after` list). The new job's rerun_of names JOB_ID."""
    return await tool_call(app.rerun(job_id, env, client=client))
