"""The real server driven with raw bytes on its stdin, as a client with bugs (or an attacker)
would: messages that no SDK client can send (cut short, not UTF-8, lone surrogates, oversized,
NaN) and the exact JSON-RPC the server writes back.

Synchronous (``select`` on the pipe), so one server can serve a whole module's tests without an
event loop shared between them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .helpers import server_command

#: How long a reply may take: far more than any answer needs, far less than a client's timeout.
REPLY_TIMEOUT_S = 30.0
LEGACY = "2025-11-25"


class WireServer:
    """One server process on pipes, spoken to in raw JSON-RPC lines (protocol 2025-11-25)."""

    def __init__(self, db: Path, env: dict[str, str] | None = None) -> None:
        command, args = server_command(db)
        self.log = db.with_name("wire-server.log")
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [command, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            cwd=db.parent,
            env={**os.environ, **(env or {})},
        )
        self._ids = itertools.count(1000)
        self._buffer = b""
        self.init = self.request("initialize", {
            "protocolVersion": LEGACY, "capabilities": {},
            "clientInfo": {"name": "wire-test", "version": "9.9"},
        })  # fmt: skip
        self.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_message(self, timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any] | None:
        """The next message the server writes (None if none comes within ``timeout``)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def reply_to(self, msg_id: object, timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        """The response with this id (notifications in between are skipped); fails the test if
        none comes in time."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.read_message(max(0.0, deadline - time.monotonic()))
            assert message is not None, (
                f"no answer to id {msg_id!r} within {timeout} s (server alive: "
                f"{self.proc.poll() is None}); log:\n{self.log.read_text(errors='replace')[-3000:]}"
            )
            if "id" in message and message["id"] == msg_id and "method" not in message:
                return message

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        msg_id = next(self._ids)
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            body["params"] = params
        self.send(json.dumps(body).encode() + b"\n")
        return self.reply_to(msg_id)

    def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        """A tools/call; returns the whole response (result or error)."""
        return self.request("tools/call", {"name": tool, "arguments": arguments})

    def structured(self, tool: str, **arguments: Any) -> dict[str, Any]:
        """A tools/call that must succeed; returns its structured content."""
        response = self.call(tool, **arguments)
        result = response.get("result")
        assert result is not None and not result.get("isError"), response
        content: dict[str, Any] = result["structuredContent"]
        return content

    def alive(self) -> bool:
        """The server still answers (a ping, well within a second on an idle server)."""
        return self.request("ping").get("result") == {}

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_file.close()


@contextlib.contextmanager
def wire_server(db: Path, env: dict[str, str] | None = None) -> Iterator[WireServer]:
    server = WireServer(db, env)
    try:
        yield server
    finally:
        server.close()


def tool_error_text(response: dict[str, Any]) -> str | None:
    """The text of a tool error result (None if the call succeeded)."""
    result = response.get("result")
    assert result is not None, response
    if not result.get("isError"):
        return None
    return "".join(c.get("text", "") for c in result["content"])
