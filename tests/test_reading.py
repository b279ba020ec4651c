"""Reading output: cursors and decoding (pure helpers of ``reading``)."""

from __future__ import annotations

import pytest

from mcp_background_job.db import utcnow
from mcp_background_job.errors import InvalidRequest
from mcp_background_job.jobs import Chunk, Job, JobStatus, Stream
from mcp_background_job.reading import decode_chunks, parse_cursor


def test_decode_chunks_never_splits_a_character() -> None:
    data = "héllo wörld ✓ 🎉 ".encode() * 50
    chunks = [Chunk(Stream.STDOUT, i, data[i : i + 7]) for i in range(0, len(data), 7)]
    for size in (1, 2, 3, 5, 64):
        pos = {Stream.STDOUT: 0, Stream.STDERR: 0}
        text = []
        while pos[Stream.STDOUT] < len(data):
            start = pos[Stream.STDOUT]
            window = [c for c in chunks if c.end > start][:20]
            part, pos, _, _ = decode_chunks(
                window, pos, size, {Stream.STDOUT: len(data), Stream.STDERR: 0}
            )
            if size >= 4:
                assert pos[Stream.STDOUT] > start
            elif pos[Stream.STDOUT] == start:
                part, pos, _, _ = decode_chunks(
                    window, pos, 4, {Stream.STDOUT: len(data), Stream.STDERR: 0}
                )
            text.append(part)
        assert "".join(text) == data.decode()


def test_decode_chunks_replaces_invalid_bytes_at_the_end() -> None:
    pos = {Stream.STDOUT: 0, Stream.STDERR: 0}
    chunks = [Chunk(Stream.STDOUT, 0, b"ok\xff\xe2")]
    text, pos, n, _ = decode_chunks(chunks, pos, 100, {Stream.STDOUT: 4, Stream.STDERR: 0})
    assert text == "ok\ufffd\ufffd" and pos[Stream.STDOUT] == 4 and n == 4
    # While the job runs, the incomplete character at the end waits for its other bytes.
    start = {Stream.STDOUT: 0, Stream.STDERR: 0}
    text, pos, n, _ = decode_chunks(chunks, start, 100, None)
    assert text == "ok\ufffd" and pos[Stream.STDOUT] == 3 and n == 3


def test_parse_cursor() -> None:
    job = Job(
        id="a", command="x", cwd="/", shell="sh", env={}, labels=(), status=JobStatus.RUNNING,
        created_at=utcnow(), owner_id=None, stdout_bytes=10, stderr_bytes=0,
    )  # fmt: skip
    assert parse_cursor(None, job) == {Stream.STDOUT: 0, Stream.STDERR: 0}
    assert parse_cursor("10:0", job) == {Stream.STDOUT: 10, Stream.STDERR: 0}
    for bad in ("11:0", "-1:0", "1", "a:b", "1:2:3"):
        with pytest.raises(InvalidRequest):
            parse_cursor(bad, job)
