"""What every tool shares: the bounds and types of arguments, the App and client of a call
(FastMCP dependencies, resolved from the lifespan context), and the translation of errors at
the edge (domain errors become tool errors with their message; anything unexpected is logged
with its traceback and reported without internals)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Annotated, Literal, TypeVar

from fastmcp import Context
from fastmcp.dependencies import CurrentContext
from fastmcp.exceptions import ResourceError, ToolError
from fastmcp.server.dependencies import get_access_token
from pydantic import Field

from ..app import App, Client, ProgressFn
from ..errors import BackgroundJobError

# Tool failures keep the logger name they had before the tools left server.py.
log = logging.getLogger("mcp_background_job.server")
T = TypeVar("T")

#: Bounds of string arguments. An id or a prefix is 12 hex characters (some slack for spaces);
#: the others are far above any real value, and keep a huge one out of error messages (which
#: show what was passed).
ID_MAX = 64
LABEL_MAX = 64
SHORT_MAX = 256
PATH_MAX = 4096
PATTERN_MAX = 4096
JobId = Annotated[
    str,
    Field(
        max_length=ID_MAX,
        description="Job id from execute or list (12 hex characters; a unique prefix works).",
    ),
]
JobIdItem = Annotated[str, Field(max_length=ID_MAX)]
WaitTimeout = Annotated[
    float,
    Field(
        ge=0,
        allow_inf_nan=False,
        description="Longest wait; one call waits at most 50 s (client limits).",
    ),
]
Timeout = Annotated[float, Field(gt=0, allow_inf_nan=False)]
StreamArg = Annotated[
    Literal["stdout", "stderr", "both"],
    Field(description="Which output: stdout, stderr, or both in the order it was stored."),
]
RenderArg = Annotated[
    Literal["auto", "plain", "raw"],
    Field(
        description="plain: text as a terminal shows it (colours and other escape sequences "
        "removed, \\r progress-bar overwrites and backspaces resolved); raw: bytes as written "
        "(decoded as UTF-8); auto: plain for pty jobs, raw otherwise. Cursors count raw bytes."
    ),
]

READ_ONLY = {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True,
         "openWorldHint": False}  # fmt: skip


async def tool_call(op: Awaitable[T]) -> T:
    try:
        return await op
    except BackgroundJobError as exc:
        raise ToolError(str(exc)) from exc
    except ToolError:
        raise
    except Exception as exc:
        log.exception("tool_failed")
        raise ToolError(
            f"Internal error ({type(exc).__name__}); details are in the server's log. "
            "The request may be retried."
        ) from exc


async def resource_read(op: Awaitable[T]) -> T:
    try:
        return await op
    except BackgroundJobError as exc:
        # Not found and the like are answers, not server faults: no traceback in the log.
        raise ResourceError(str(exc), log_level=logging.DEBUG) from exc


async def job_json(app: App, job_id: str) -> str:
    view = await resource_read(app.status(job_id))
    return view.model_dump_json(indent=2)


async def job_output_text(app: App, job_id: str) -> str:
    return await resource_read(app.recent_output(job_id))


def progress_of(ctx: Context) -> ProgressFn:
    """Progress notifications of a waiting tool call."""

    async def progress(done: float, total: float, message: str) -> None:
        await ctx.report_progress(done, total, message)

    return progress


def get_app(ctx: Context = CurrentContext()) -> App:
    app: App = ctx.lifespan_context["app"]
    return app


def get_client(ctx: Context = CurrentContext()) -> Client:
    """What the MCP client says about itself, for the audit log (self-reported).

    Handshake-era connections carry clientInfo and a session; 2026-07-28 requests carry client
    info in each request's envelope when the client sends it, and have no session.
    """
    name = version = session = protocol = None
    try:
        rc = ctx.request_context
        if rc is not None:
            protocol = getattr(rc, "protocol_version", None)
            params = ctx.session.client_params
            if params is not None and params.client_info is not None:
                name, version = params.client_info.name, params.client_info.version
            if protocol is None or str(protocol) < "2026-07-28":  # sessionless from then on
                session = ctx.session_id
    except (RuntimeError, AttributeError):  # no session (background task): record what we have
        pass
    # Over HTTP the bearer token was verified (httpserve): its name says who ran what.
    access = get_access_token()
    token = access.client_id if access is not None else None
    return Client(name=name, version=version, session_id=session, protocol=protocol, token=token)
