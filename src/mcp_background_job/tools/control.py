"""Tools that act on a running job: ``interact`` (type into it) and ``kill``."""

from __future__ import annotations

from typing import Annotated

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import Field

from ..app import DEFAULT_INTERACT_WAIT_S, DEFAULT_SETTLE_S, MAX_KEYS, App, Client
from ..models import InteractResult, JobView
from .common import PATTERN_MAX, SHORT_MAX, JobId, RenderArg, get_app, get_client, tool_call


@tool(
    title="Send input to a job",
    annotations={"readOnlyHint": False, "destructiveHint": True, "idempotentHint": False,
                 "openWorldHint": True},
)  # fmt: skip
async def interact(
    job_id: JobId,
    input: Annotated[
        str,
        Field(
            description="Text to type, sent as is: include \\n to press Enter; escape "
            "sequences work as JSON escapes (\\u001b). May be empty (only wait for output)."
        ),
    ] = "",
    wait_s: Annotated[
        float,
        Field(
            ge=0,
            le=50,
            allow_inf_nan=False,
            description="Longest wait for the program to be ready again.",
        ),
    ] = DEFAULT_INTERACT_WAIT_S,
    eof: Annotated[
        bool,
        Field(description="End of input after writing: closes stdin, or sends Ctrl-D on a pty."),
    ] = False,
    until: Annotated[
        str | None,
        Field(
            max_length=PATTERN_MAX,
            description="Regex (RE2 syntax, multiline) that marks the program's prompt, e.g. "
            "'>>> $' or "
            "'\\(y/n\\) $': return as soon as the new output, as plain text, matches it "
            "(with nothing to send, the line the program is on counts too).",
        ),
    ] = None,
    settle_s: Annotated[
        float,
        Field(
            ge=0.05,
            allow_inf_nan=False,
            le=50,
            description="Without `until`, for programs the kernel cannot be seen reading "
            "(not seen waiting for input before this call): return once output has "
            "been quiet this long.",
        ),
    ] = DEFAULT_SETTLE_S,
    keys: Annotated[
        list[Annotated[str, Field(max_length=SHORT_MAX)]],
        Field(
            max_length=MAX_KEYS,
            description="Keys pressed after `input`: C-c (Ctrl-C), C-d, C-z, C-\\, M-x "
            "(Alt), Enter, Tab, Esc, Backspace, Up, Down, Left, Right, Home, End, PageUp, "
            "PageDown, Delete, F1..F12. On a pty they are the terminal's bytes (C-c "
            "interrupts the foreground program); without one C-c/C-\\/C-z signal the "
            "job's process group and C-d closes stdin.",
        ),
    ] = [],  # noqa: B006
    render: RenderArg = "auto",
    app: App = Depends(get_app),
    client: Client = Depends(get_client),
) -> InteractResult:
    """Type INPUT (then KEYS) into a running job and return the output that follows, as
    soon as the program is ready again: `until` matched (returned_because=prompt), it is
    blocked reading its input again (waiting_for_input), its output went quiet (quiet),
    it ended (ended), or WAIT_S passed (timeout). Continue reading with the cursor."""
    return await tool_call(
        app.interact(job_id, input, wait_s, eof, until, settle_s, keys, render, client=client)
    )


@tool(
    title="Kill a job",
    annotations={"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True,
                 "openWorldHint": False},
)  # fmt: skip
async def kill(
    job_id: JobId,
    signal: Annotated[
        str,
        Field(
            max_length=SHORT_MAX,
            description="TERM, INT, HUP, QUIT, KILL, USR1, USR2 (or a number).",
        ),
    ] = "TERM",
    grace_s: Annotated[
        float | None,
        Field(
            ge=0,
            le=300,
            allow_inf_nan=False,
            description="Seconds before SIGKILL; default from settings (5).",
        ),
    ] = None,
    app: App = Depends(get_app),
    client: Client = Depends(get_client),
) -> JobView:
    """Send SIGNAL to the job's whole process tree (children that left its process group
    too), SIGKILL whatever is left after GRACE_S, and return the final state."""
    return await tool_call(app.kill(job_id, signal, grace_s, client))
