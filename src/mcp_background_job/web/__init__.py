"""The web page of ``serve --http``: the job history for people, on the same port as MCP.

Server-rendered (Jinja2 templates beside this file, autoescaped), a little JavaScript and no
build step. Sign-in: a ``read`` (or ``run``) token typed into the login form is kept in an
HttpOnly, SameSite=Strict cookie and checked on every request, so a revoked token stops working
at once; failed sign-ins are audited and rate-limited per address like the MCP endpoint's.

What the page shows comes from the same App calls as the tools: the job list and its filters
(``list_jobs``), a job's view and transitions (``status``), and its output through the reader,
masked as the tools mask it, in pages of at most 64 KiB (a big log is never sent whole). Output
keeps its colour sequences (``colours=True``: every other control sequence is still removed)
and ``ansi2html`` turns them into escaped HTML. The list's counts and rows, and a running job's
output and status, follow through server-sent events.

Import rule: the MCP layer (it is served by ``httpserve``); reads through ``App`` only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from ansi2html import Ansi2HTMLConverter
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..errors import BackgroundJobError
from ..jobs import JobStatus, Stream
from ..tokens import ApiToken

if TYPE_CHECKING:
    from fastmcp import FastMCP

    from ..app import App
    from ..httpserve import Auth

log = logging.getLogger(__name__)

COOKIE = "mbj_token"
#: One read of output for the page (the tools' own cap).
PAGE_BYTES = 64 * 1024
#: A job page starts this close to the end of a bigger log (per stream), with links to page back.
WINDOW_BYTES = 128 * 1024
#: How often open pages look for news.
FOLLOW_INTERVAL_S = 0.3
LIST_INTERVAL_S = 1.0
LIST_LIMIT = 100

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
    enable_async=False,
)


def ansi_html(text: str) -> Markup:
    """Program output with its colours as HTML (escaped: output is never markup)."""
    conv = Ansi2HTMLConverter(inline=True, escaped=True, linkify=False)
    return Markup(conv.convert(text, full=False, ensure_trailing_newline=False))  # noqa: S704


def _page(name: str, status: int = 200, **values: object) -> HTMLResponse:
    html = _templates.get_template(name).render(**values)
    return HTMLResponse(html, status_code=status, headers=_NO_STORE)


#: Pages show job output: not for shared caches; no framing by other sites.
_NO_STORE = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
}


class Web:
    def __init__(self, auth: Auth) -> None:
        self.auth = auth

    async def user(self, request: Request) -> ApiToken | None:
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        found, _ = await self.auth.check(token)
        return found

    # --- sign-in ------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        return _page("login.html", error=None)

    async def login(self, request: Request) -> Response:
        from ..httpserve import client_address

        address = client_address(request.scope)
        wait = self.auth.limiter.retry_after(address)
        if wait > 0:
            await self.auth.audit_failure(address, "/login", "rate_limited", None, 429)
            return _page("login.html", 429, error=f"Too many failed sign-ins: wait {wait:.0f} s.")
        form = await request.form()
        token = str(form.get("token", "")).strip()
        stored, reason = await self.auth.lookup(token)
        if reason != "ok" or stored is None:
            self.auth.limiter.failed(address)
            name = stored.name if stored is not None else None
            await self.auth.audit_failure(address, "/login", reason, name, 401)
            return _page("login.html", 401, error=f"Not signed in: the token is {reason}.")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https"
            or request.headers.get("x-forwarded-proto") == "https",
            path="/",
        )
        log.info("web_login token=%s", stored.name)
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # --- the job list -------------------------------------------------------------------

    def _filters(self, request: Request) -> dict[str, str]:
        q = request.query_params
        return {k: q.get(k, "").strip()[:200] for k in ("status", "label", "text", "since")}

    async def _rows(self, app: App, f: dict[str, str]) -> tuple[str, str | None]:
        try:
            status = JobStatus(f["status"]) if f["status"] else None
            result = await app.list_jobs(
                status=status,
                label=f["label"] or None,
                command_contains=f["text"] or None,
                since=f["since"] or None,
                limit=LIST_LIMIT,
            )
        except (BackgroundJobError, ValueError) as exc:
            return "", str(exc)
        rows = _templates.get_template("rows.html").render(jobs=result.jobs)
        return rows, None

    async def _counts(self, app: App) -> dict[str, int]:
        return {str(s): n for s, n in (await app.store.counts_by_status()).items()}

    async def index(self, request: Request) -> Response:
        user = await self.user(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        app = self.auth.app()
        f = self._filters(request)
        rows, error = await self._rows(app, f)
        return _page(
            "index.html",
            user=user,
            filters=f,
            statuses=[str(s) for s in JobStatus],
            rows=Markup(rows),  # noqa: S704 (rendered by an autoescaping template)
            error=error,
            counts=await self._counts(app),
            query=request.url.query,
        )

    async def list_events(self, request: Request) -> Response:
        if await self.user(request) is None:
            return Response("Sign in first: /login", status_code=401)
        app = self.auth.app()
        f = self._filters(request)

        async def events() -> AsyncIterator[dict[str, str]]:
            last: tuple[str, str] | None = None
            while not await request.is_disconnected():
                if await self.user(request) is None:  # revoked or expired meanwhile
                    yield {"event": "signed_out", "data": "{}"}
                    return
                rows, _ = await self._rows(app, f)
                counts = json.dumps(await self._counts(app))
                if (rows, counts) != last:
                    last = (rows, counts)
                    yield {"event": "update", "data": json.dumps({"rows": rows, "counts": counts})}
                await asyncio.sleep(LIST_INTERVAL_S)

        return EventSourceResponse(events(), headers={"cache-control": "no-store"})

    # --- a job ----------------------------------------------------------------------------

    async def _start_cursor(self, app: App, job_id: str) -> tuple[str | None, bool]:
        """Where the page starts reading: the start, or near the end of a big log."""
        job = await app.job(job_id)
        if sum(job.ingested(s) for s in Stream) <= 2 * WINDOW_BYTES:
            return None, False
        near = {s: max(0, job.ingested(s) - WINDOW_BYTES) for s in Stream}
        starts = await app.reader.char_starts(job.id, near)
        return f"{starts[Stream.STDOUT]}:{starts[Stream.STDERR]}", True

    async def job(self, request: Request) -> Response:
        user = await self.user(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        app = self.auth.app()
        job_id = request.path_params["job_id"]
        try:
            view = await app.status(job_id)
            start, skipped = await self._start_cursor(app, view.id)
            out = await app.reader.output(view.id, "both", start, PAGE_BYTES, "auto", colours=True)
        except BackgroundJobError as exc:
            return _page("error.html", 404, message=str(exc))
        return _page(
            "job.html",
            user=user,
            job=view,
            output=ansi_html(out.text),
            cursor=out.cursor,
            skipped=skipped,
            end=out.end,
        )

    async def log_page(self, request: Request) -> Response:
        """One page of a job's output, from ``cursor``, with a link to the next page."""
        user = await self.user(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        app = self.auth.app()
        cursor = request.query_params.get("cursor") or None
        try:
            view = await app.status(request.path_params["job_id"])
            out = await app.reader.output(view.id, "both", cursor, PAGE_BYTES, "auto", colours=True)
        except BackgroundJobError as exc:
            return _page("error.html", 404, message=str(exc))
        return _page(
            "log.html", user=user, job=view, output=ansi_html(out.text), cursor=cursor,
            next_cursor=out.cursor if out.more else None, bytes=out.bytes,
        )  # fmt: skip

    async def job_events(self, request: Request) -> Response:
        if await self.user(request) is None:
            return Response("Sign in first: /login", status_code=401)
        app = self.auth.app()
        job_id = request.path_params["job_id"]
        cursor = request.query_params.get("cursor") or None

        async def events() -> AsyncIterator[dict[str, str]]:
            nonlocal cursor
            status = None
            while not await request.is_disconnected():
                if await self.user(request) is None:
                    yield {"event": "signed_out", "data": "{}"}
                    return
                try:
                    view = await app.status(job_id)
                    out = await app.reader.output(
                        view.id, "both", cursor, PAGE_BYTES, "auto", colours=True
                    )
                except BackgroundJobError as exc:
                    yield {"event": "failed", "data": json.dumps({"message": str(exc)})}
                    return
                cursor = out.cursor
                if out.text:
                    yield {"event": "output", "data": json.dumps({"html": ansi_html(out.text)})}
                if view.status != status or out.end:
                    status = view.status
                    transitions = _templates.get_template("transitions.html").render(job=view)
                    yield {
                        "event": "status",
                        "data": json.dumps({"status": str(view.status),
                                            "transitions": transitions}),
                    }  # fmt: skip
                if out.end:
                    yield {"event": "end", "data": "{}"}
                    return
                if not out.more:
                    await asyncio.sleep(FOLLOW_INTERVAL_S)

        return EventSourceResponse(events(), headers={"cache-control": "no-store"})


def install(mcp: FastMCP, auth: Auth) -> None:
    """Add the web page's routes to ``mcp``'s HTTP app."""
    web = Web(auth)
    mcp.custom_route("/", methods=["GET"])(web.index)
    mcp.custom_route("/login", methods=["GET"])(web.login_form)
    mcp.custom_route("/login", methods=["POST"])(web.login)
    mcp.custom_route("/logout", methods=["POST"])(web.logout)
    mcp.custom_route("/events/list", methods=["GET"])(web.list_events)
    mcp.custom_route("/jobs/{job_id}", methods=["GET"])(web.job)
    mcp.custom_route("/jobs/{job_id}/log", methods=["GET"])(web.log_page)
    mcp.custom_route("/jobs/{job_id}/events", methods=["GET"])(web.job_events)
