"""The stdio transport's two pipes read and written on the event loop, without threads.

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
import logging
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: The longest message read; a longer line is skipped (and answered with a parse error).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class LineReader:
    """Standard input as ``stdio_server()`` consumes it: an async iterator of text lines."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> LineReader:
        return self

    async def __anext__(self) -> str:
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # end of input
            if not exc.partial:
                raise StopAsyncIteration from None
            line = exc.partial
        except asyncio.LimitOverrunError:
            await self._skip_line()
            log.warning("stdin_message_too_long limit=%d", MAX_MESSAGE_BYTES)
            return "message too long\n"  # not JSON: the SDK reports a parse error
        return line.decode("utf-8", "replace")

    async def _skip_line(self) -> None:
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await self._reader.readexactly(exc.consumed)
            except asyncio.IncompleteReadError:
                return


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
        yield Streams(LineReader(reader), LineWriter(writer))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
    finally:
        if writer_transport is not None:
            writer_transport.close()
        os.dup2(saved[0], 0)
        os.dup2(saved[1], 1)
        os.close(saved[0])
        os.close(saved[1])
