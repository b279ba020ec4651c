"""The stdio transport's two pipes read and written on the event loop, without threads.

Import rule: nothing from the package (layer ``mcp`` in ``tests/test_layers.py``, beside
``server``).

The MCP SDK's ``stdio_server()`` reads each line in a worker thread and writes each message with
two more trips to one (write, then flush). Under CPU load every trip waits for a time slice: with
eight jobs flooding output on two cores a ``status`` round trip took ~10 ms at p50 over stdio
against ~0.8 ms in-process. Here both pipes are non-blocking and served by the event loop.

``stdio_server()`` takes the streams as arguments, but then leaves the process's descriptors as
they are: this module moves them out of the way itself, as the SDK does (fd 0 reads the null
device and fd 1 goes to stderr while serving, so a stray ``print`` or a child cannot write into
the protocol), and puts them back afterwards. Standard input that is not a pipe or a socket (a
terminal, a file) keeps the SDK's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import mcp_types
from pydantic import ValidationError

log = logging.getLogger(__name__)

#: The longest message read, in bytes (one line of JSON). A longer one is skipped, without
#: being held in memory, and answered with an error. Tool arguments never need that much: Linux
#: passes at most 128 KiB as one argument (a command line, an environment value) and one
#: ``interact`` call sends at most 1 MiB (6 MiB as JSON, were every byte an escape).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: How much of the start and of the end of a skipped message is kept to find its id.
_KEPT = 4096
_ID_VALUE = r'(-?\d+|"(?:[^"\\]|\\.)*")'
#: ``{"jsonrpc": "2.0", "id": 7, ...``: the id among the first members (the Python SDK's order).
_ID_AT_START = re.compile(
    r'^\s*\{(?:\s*"(?:jsonrpc|method)"\s*:\s*"(?:[^"\\]|\\.)*"\s*,)*\s*"id"\s*:\s*' + _ID_VALUE
)
#: ``..., "id": 7}``: the last member of the message (the TypeScript SDK's order).
_ID_AT_END = re.compile(r'[{,]\s*"id"\s*:\s*' + _ID_VALUE + r"\s*\}\s*$")

RequestId = int | str
Reply = Callable[[bytes], None]


class LineReader:
    """Standard input as ``stdio_server()`` consumes it: an async iterator of text lines, each
    one a valid JSON-RPC message.

    A line that is not one (not UTF-8, not JSON, a lone surrogate, not a JSON-RPC message, over
    ``MAX_MESSAGE_BYTES``) is answered here with an error response, to the request's id when it
    can be read and to id null otherwise, and never reaches the SDK: the SDK drops what it
    cannot parse without a word, and the client would wait for its own timeout.
    """

    def __init__(self, reader: asyncio.StreamReader, reply: Reply) -> None:
        self._reader = reader
        self._reply = reply

    def __aiter__(self) -> LineReader:
        return self

    async def __anext__(self) -> str:
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # end of input
                if not exc.partial.strip():
                    raise StopAsyncIteration from None
                line = exc.partial
            except asyncio.LimitOverrunError:
                head, tail, size = await self._skip_line()
                msg_id = find_id(head, tail)
                log.warning(
                    "stdin_message_refused code=%d id=%s bytes=%d reason=too_long limit=%d",
                    mcp_types.INVALID_REQUEST, _logged(msg_id), size, MAX_MESSAGE_BYTES,
                )  # fmt: skip
                self._reply(
                    error_response(
                        msg_id,
                        mcp_types.INVALID_REQUEST,
                        f"The message is {size} bytes, over this server's limit of "
                        f"{MAX_MESSAGE_BYTES} bytes ({MAX_MESSAGE_BYTES >> 20} MiB); it was "
                        "skipped. Send less in one call: interact input at most 1 MiB a call, "
                        "a command line at most 128 KiB (put longer ones in a script file).",
                    )
                )
                continue
            if not line.strip():
                continue  # a blank line is no message: nothing to answer
            refusal = check(line)
            if refusal is None:
                return line.decode("utf-8")
            if refusal:
                self._reply(refusal)

    async def _skip_line(self) -> tuple[bytes, bytes, int]:
        """Read past the rest of a line over the limit, keeping only its start and its end.
        Returns (start, end, size in bytes)."""
        head = tail = b""
        size = 0
        while True:
            done = True
            try:
                chunk = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                chunk = await self._reader.readexactly(exc.consumed)
                done = False
            except asyncio.IncompleteReadError as exc:
                chunk = exc.partial
            if not head:
                head = chunk[:_KEPT]
            tail = (tail + chunk)[-_KEPT:]
            size += len(chunk)
            if done:
                return head, tail, size


def check(line: bytes) -> bytes | None:
    """None if ``line`` is a JSON-RPC message the SDK accepts; else the error response to send
    (``b""``: nothing to send, for a broken notification)."""
    try:
        message = mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError:
        return _refusal(line)
    if isinstance(message, mcp_types.JSONRPCNotification) and b'"id"' in line:
        # A request whose id is not a string or an integer (1.5, true, null) passes as a
        # notification, which is never answered: the client would wait for ever.
        with contextlib.suppress(ValueError, RecursionError):
            obj = json.loads(line)
            if isinstance(obj, dict) and "id" in obj:
                return _refused(
                    obj["id"], mcp_types.INVALID_REQUEST, "bad_id",
                    f"The request id {json.dumps(obj['id'])} is not a string or an integer "
                    "(MCP request ids must be one of those, and not null).",
                )  # fmt: skip
    return None


def _refusal(line: bytes) -> bytes:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        loose = line.decode("utf-8", "surrogateescape")
        return _refused(
            _loose_id(loose), mcp_types.PARSE_ERROR, "not_utf8",
            f"The message is not valid UTF-8 (byte 0x{line[err.start]:02x} at offset "
            f"{err.start}): JSON-RPC messages are UTF-8 text.",
        )  # fmt: skip
    try:
        obj = json.loads(text)
    except RecursionError:
        return _refused(
            find_id(line[:_KEPT], line[-_KEPT:]), mcp_types.PARSE_ERROR, "too_deep",
            "The message nests arrays or objects too deeply to be read.",
        )  # fmt: skip
    except ValueError as err:
        what = str(getattr(err, "msg", err)).removesuffix(" at")
        where = getattr(err, "pos", None)
        return _refused(
            find_id(line[:_KEPT], line[-_KEPT:]), mcp_types.PARSE_ERROR, "not_json",
            f"The message is not valid JSON ({what}, at character {where}); it may have been "
            "cut short. Send each JSON-RPC message whole, on one line.",
        )  # fmt: skip
    if not isinstance(obj, dict):
        return _refused(
            None, mcp_types.INVALID_REQUEST, "not_object",
            "The message is not a JSON object (JSON-RPC batches are not supported): send one "
            "request object per line.",
        )  # fmt: skip
    msg_id = obj.get("id")
    if "id" not in obj and isinstance(obj.get("method"), str):
        log.warning("stdin_message_refused code=none reason=bad_notification")
        return b""  # a notification is never answered, even a broken one
    surrogate = _lone_surrogate(obj)
    if surrogate is not None:
        where, char = surrogate
        code = mcp_types.INVALID_PARAMS if where.startswith("params") else mcp_types.INVALID_REQUEST
        return _refused(
            msg_id, code, "lone_surrogate",
            f"{where} contains a lone UTF-16 surrogate ({json.dumps(char)}), which is not "
            "Unicode text: send valid UTF-8, or \\u escapes of whole surrogate pairs.",
        )  # fmt: skip
    return _refused(
        msg_id, mcp_types.INVALID_REQUEST, "not_jsonrpc",
        f"The message is not a valid JSON-RPC 2.0 request: {_envelope_problem(obj)}",
    )  # fmt: skip


def _envelope_problem(obj: dict[str, object]) -> str:
    if obj.get("jsonrpc") != "2.0":
        return 'its "jsonrpc" member must be "2.0".'
    if "id" in obj and not _valid_id(obj["id"]):
        return '"id" must be a string or an integer.'
    if "method" in obj:
        if not isinstance(obj["method"], str):
            return '"method" must be a string.'
        if "params" in obj and not isinstance(obj["params"], dict):
            return '"params" must be an object.'
        return "its members do not have the types JSON-RPC requires."
    if "result" in obj or "error" in obj:
        return "a response must have an id, and an error must have a code and a message."
    return 'it has no "method".'


def _valid_id(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _lone_surrogate(value: object, where: str = "") -> tuple[str, str] | None:
    """The first string (or key) holding a lone surrogate: (where, the surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return where or "the message", value[err.start]
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            found = _lone_surrogate(key, f"a key in {where or 'the message'}")
            found = found or _lone_surrogate(item, inner)
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{where}[{i}]")
            if found:
                return found
    return None


def _loose_id(text: str) -> RequestId | None:
    with contextlib.suppress(ValueError, RecursionError):
        obj = json.loads(text)
        if isinstance(obj, dict) and _valid_id(obj.get("id")):
            return obj["id"]  # type: ignore[no-any-return]
    return find_id(
        text[:_KEPT].encode("utf-8", "surrogateescape"),
        text[-_KEPT:].encode("utf-8", "surrogateescape"),
    )


def find_id(head: bytes, tail: bytes) -> RequestId | None:
    """The id of a message that cannot be parsed whole (cut short, or too long to read), from
    its first and last bytes, where JSON-RPC clients write it; None if it is not there."""
    for pattern, text in ((_ID_AT_START, head), (_ID_AT_END, tail)):
        found = pattern.search(text.decode("utf-8", "replace"))
        if found:
            with contextlib.suppress(ValueError):
                value = json.loads(found[1])
                if _valid_id(value):
                    return value  # type: ignore[no-any-return]
    return None


def _refused(msg_id: object, code: int, reason: str, message: str) -> bytes:
    # A fractional id is not one MCP allows, but the client waits for an answer to it.
    fractional = isinstance(msg_id, float) and math.isfinite(msg_id)
    valid = msg_id if _valid_id(msg_id) or fractional else None
    log.warning("stdin_message_refused code=%d id=%s reason=%s", code, _logged(valid), reason)
    return error_response(valid, code, message)


def _logged(msg_id: object) -> str:
    """An id for the log: a client chooses it, so it is cut to a sane length."""
    text = repr(msg_id)
    return text if len(text) <= 80 else text[:80] + "..."


def error_response(msg_id: object, code: int, message: str) -> bytes:
    """A JSON-RPC error response, as one line."""
    body = {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}
    return json.dumps(body).encode() + b"\n"


class LineWriter:
    """Standard output as ``stdio_server()`` writes it: ``write`` buffers, ``flush`` waits until
    the pipe has taken it (a client that stops reading slows the server down, never blocks it)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


@dataclass(frozen=True, slots=True)
class Streams:
    stdin: LineReader
    stdout: LineWriter


def _pipe_or_socket(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@contextlib.asynccontextmanager
async def event_loop_stdio() -> AsyncIterator[Streams | None]:
    """The process's stdin and stdout served by the running loop, or None where that cannot
    work (not pipes or sockets): then the caller keeps the SDK's own transport."""
    if not (_pipe_or_socket(0) and _pipe_or_socket(1)):
        yield None
        return
    loop = asyncio.get_running_loop()
    wire_in = os.dup(0)
    wire_out = os.dup(1)
    saved = (os.dup(0), os.dup(1))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    writer_transport: asyncio.WriteTransport | None = None
    try:
        reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES, loop=loop)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(wire_in, "rb", 0)
        )
        writer_transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop),
            os.fdopen(wire_out, "wb", 0),
        )
        writer = asyncio.StreamWriter(writer_transport, protocol, None, loop)

        def reply(data: bytes) -> None:
            # One whole line per write: the SDK's responses cannot land inside it.
            if not writer.transport.is_closing():
                writer.write(data)

        yield Streams(LineReader(reader, reply), LineWriter(writer))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
    finally:
        if writer_transport is not None:
            writer_transport.close()
        os.dup2(saved[0], 0)
        os.dup2(saved[1], 1)
        os.close(saved[0])
        os.close(saved[1])
