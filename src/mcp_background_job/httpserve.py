"""``serve --http``: the same server over MCP's streamable HTTP transport, behind bearer tokens,
with the web page (``web``) on the same port.

- **Who may connect**: FastMCP's ``TokenVerifier`` interface (``TokenVerifier``): FastMCP then
  installs the SDK's bearer middleware and answers 401 itself (with the RFC 6750 challenge), and
  the verified token reaches tools through ``get_access_token()`` (its name is recorded in the
  audit log). Tokens are looked up by their SHA-256 in ``api_tokens`` (``token create``).
- **What a token may do**: a ``read`` token may call the tools annotated ``readOnlyHint`` only
  (``ScopeGuard``, a FastMCP middleware). FastMCP's per-component ``auth=`` checks would hide
  the other tools from a read token and answer "unknown tool"; the guard answers with what was
  wrong instead, and audits it.
- **Failures**: the verifier cannot see the client's address, so ``FailureGate`` (ASGI, passed
  to FastMCP's app as middleware) writes an ``auth_failed`` audit row when the answer to the
  MCP endpoint is 401 (with why, and the token's name when it is known but expired or revoked),
  and answers 429 once an address has failed too often (FastMCP's bearer middleware sits
  outside it and still looks the token up, but the caller only ever sees the 429).

Import rule: the MCP layer; imports ``app`` and below, and ``web``'s sibling modules.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import mcp_types
from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.dependencies import get_access_token
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools import ToolResult
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .app import App
from .db import utcnow
from .tokens import ApiToken, digest

log = logging.getLogger(__name__)

#: Failed attempts an address may make at once, then one more every FAILURE_REFILL_S (the
#: defaults of the settings http_auth_failures and http_auth_refill_s).
FAILURE_BURST = 10
FAILURE_REFILL_S = 2.0
#: Addresses remembered by the limiter (oldest forgotten first): bounded memory under a flood.
FAILURE_ADDRESSES = 10_000
#: Longest token text looked at; longer ones are refused unread (ours are 47 characters).
TOKEN_MAX = 256


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class FailureLimiter:
    """Failed authentications per client address: a token bucket each."""

    burst: int = FAILURE_BURST
    refill_s: float = FAILURE_REFILL_S
    buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def _bucket(self, address: str) -> _Bucket:
        now = time.monotonic()
        b = self.buckets.get(address)
        if b is None:
            b = _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) / self.refill_s)
        b.at = now
        self.buckets[address] = b
        self.buckets.move_to_end(address)
        while len(self.buckets) > FAILURE_ADDRESSES:
            self.buckets.popitem(last=False)
        return b

    def retry_after(self, address: str) -> float:
        """0 when the address may try again now, else the seconds to wait."""
        b = self._bucket(address)
        return 0.0 if b.tokens >= 1 else (1 - b.tokens) * self.refill_s

    def failed(self, address: str) -> None:
        b = self._bucket(address)
        b.tokens = max(0.0, b.tokens - 1)


class Auth:
    """Token checks and their audit rows, shared by the MCP endpoint and the web page."""

    def __init__(self, apps: dict[str, App]) -> None:
        self.apps = apps
        self._limiter: FailureLimiter | None = None

    @property
    def limiter(self) -> FailureLimiter:
        """Made on first use: its bounds are settings, known once the server's app is open."""
        if self._limiter is None:
            settings = self.app().settings
            self._limiter = FailureLimiter(
                burst=settings.http_auth_failures, refill_s=settings.http_auth_refill_s
            )
        return self._limiter

    def app(self) -> App:
        app = self.apps.get("app")
        if app is None:
            raise RuntimeError("the server is not running (its lifespan has not started)")
        return app

    async def check(self, token: str) -> tuple[ApiToken | None, str]:
        """The stored token for ``token`` if it is active, and why not otherwise."""
        stored, reason = await self.lookup(token)
        return (stored, reason) if reason == "ok" else (None, reason)

    async def lookup(self, token: str) -> tuple[ApiToken | None, str]:
        """The stored token for ``token`` (if any) and its state: ok, expired, revoked,
        unknown or malformed."""
        if not token or len(token) > TOKEN_MAX:
            return None, "malformed"
        found = await self.app().store.find_token(digest(token))
        if found is None:
            return None, "unknown"
        state = found.state(utcnow())
        return found, "ok" if state == "active" else state

    async def audit_failure(
        self, address: str, path: str, reason: str, token: str | None, status: int
    ) -> None:
        app = self.app()
        event = app.admission.event(
            "auth_failed",
            None,
            detail={"client_address": address, "path": path[:200], "reason": reason,
                    "status": status},
        )  # fmt: skip
        if token is not None:
            event = replace(event, token=token)
        await app.store.record_audit(event)
        log.info("auth_failed address=%s reason=%s status=%s", address, reason, status)


class DbTokenVerifier(TokenVerifier):
    """FastMCP's bearer-token interface over the ``api_tokens`` table."""

    def __init__(self, auth: Auth) -> None:
        super().__init__(required_scopes=["read"])
        self.auth = auth

    async def verify_token(self, token: str) -> AccessToken | None:
        found, _reason = await self.auth.check(token)
        if found is None:
            return None  # FailureGate audits the 401 (it knows the client's address)
        expires = int(found.expires_at.timestamp()) if found.expires_at else None
        return AccessToken(
            token=token, client_id=found.name, scopes=found.scopes, expires_at=expires
        )


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class FailureGate:
    """ASGI middleware around the whole HTTP app: rate limit and audit of failed bearer auth."""

    def __init__(self, app: ASGIApp, auth: Auth, mcp_path: str) -> None:
        self.app, self.auth, self.mcp_path = app, auth, mcp_path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.rstrip("/") != self.mcp_path:
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        wait = self.auth.limiter.retry_after(address)
        if wait > 0:
            await self.auth.audit_failure(address, path, "rate_limited", None, 429)
            await too_many(send, wait)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        if status == 401:
            self.auth.limiter.failed(address)
            bearer = next(
                (v[7:].decode("latin-1").strip() for k, v in scope.get("headers", [])
                 if k.lower() == b"authorization" and v[:7].lower() == b"bearer "),
                None,
            )  # fmt: skip
            # Checked again for the log: FastMCP's bearer middleware runs outside this one
            # and keeps why it refused to itself. Only failures pay for the second look-up.
            stored, reason = await self.auth.lookup(bearer) if bearer else (None, "missing")
            await self.auth.audit_failure(
                address, path, reason, stored.name if stored else None, 401
            )


async def too_many(send: Send, wait: float) -> None:
    body = (
        b"Too many failed authentications from this address: wait, then retry with a valid "
        b"token (mcp-background-job token create).\n"
    )
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(max(1, round(wait))).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ScopeGuard(Middleware):
    """A ``read`` token calls read-only tools only (the tools' ``readOnlyHint``)."""

    def __init__(self, auth: Auth) -> None:
        self.auth = auth

    async def on_call_tool(
        self,
        context: MiddlewareContext[mcp_types.CallToolRequestParams],
        call_next: CallNext[mcp_types.CallToolRequestParams, ToolResult],
    ) -> ToolResult:
        access = get_access_token()
        if access is not None and "run" not in access.scopes:
            name = context.message.name
            tool, readable = None, []
            if context.fastmcp_context is not None:
                server = context.fastmcp_context.fastmcp
                tool = await server.get_tool(name)
                tools = await server.list_tools(run_middleware=False)
                readable = [t.name for t in tools if t.annotations and t.annotations.read_only_hint]
            hints = tool.annotations if tool is not None else None
            if not (hints is not None and hints.read_only_hint):
                app = self.auth.app()
                event = app.admission.event(
                    "auth_refused", None, detail={"tool": name[:64], "scope": "read"}
                )
                await app.store.record_audit(replace(event, token=access.client_id))
                raise ToolError(
                    f"Token {access.client_id!r} has the read scope: {name!r} changes things "
                    "and needs a run token (mcp-background-job token create NAME --scope run). "
                    f"Read-only tools ({', '.join(readable)}) work with it."
                )
        return await call_next(context)


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT``; the host defaults to 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not [HOST:]PORT (e.g. 8765 or 127.0.0.1:8765)")
    return host, int(port)


MCP_PATH = "/mcp"


def setup(mcp: FastMCP, apps: dict[str, App]) -> Auth:
    """Put token checks and the web page on ``mcp`` (made by ``create_server`` with ``apps``)."""
    from .web import install as install_web

    auth = Auth(apps)
    mcp.auth = DbTokenVerifier(auth)
    mcp.add_middleware(ScopeGuard(auth))
    install_web(mcp, auth)
    return auth


async def serve_http(mcp: FastMCP, auth: Auth, host: str, port: int) -> None:
    from starlette.middleware import Middleware as ASGIMiddleware

    log.info("http_transport host=%s port=%s path=%s", host, port, MCP_PATH)
    await mcp.run_http_async(
        show_banner=False,
        transport="http",
        host=host,
        port=port,
        path=MCP_PATH,
        log_level="warning",
        middleware=[ASGIMiddleware(FailureGate, auth=auth, mcp_path=MCP_PATH)],
    )
