"""Output is stored byte for byte and reads back exactly, whatever its shape and paging."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

from .helpers import Server, query, start_server, stored_bytes, wait_for

REPLACEMENT = "\N{REPLACEMENT CHARACTER}"


def mixed_text(size: int, seed: int = 7) -> str:
    """Lines of varied length and content: ASCII, tabs, carriage returns, multi-byte characters,
    long lines and empty ones."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "\t", "x" * 300, "é", "日本語", "€uro", "\N{GRINNING FACE}", "\r", ""]
    lines: list[str] = []
    n = 0
    while n < size:
        line = f"{len(lines):06d} " + " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        lines.append(line)
        n += len(line.encode()) + 1
    return "\n".join(lines) + "\n"


async def test_small_pages_reassemble_exactly(db: Path, tmp_path: Path) -> None:
    text = mixed_text(100_000)  # hundreds of 1000-byte pages: every kind of boundary
    data = text.encode()
    (tmp_path / "input.txt").write_bytes(data)
    async with start_server(db) as s:
        job = await s.execute("cat input.txt; echo to-stderr >&2")
        view = await s.wait_done(job["id"])
        assert view["status"] == "completed"
        assert view["stdout"] == {"written": len(data), "stored": len(data), "dropped": 0}

        got, pages = await s.read_all(job["id"], max_bytes=1000)
        assert got == text
        assert len(pages) >= len(data) // 1000
        assert all(len(p["text"].encode()) <= 1000 for p in pages)
        assert sum(p["bytes"] for p in pages) == len(data)
        assert [p["end"] for p in pages].count(True) == 1
        assert all(p["more"] for p in pages[:-1])
        assert pages[-1]["cursor"] == f"{len(data)}:0"
        assert REPLACEMENT not in got

        # Cursors are exact byte positions: each page starts where the previous one ended.
        at = 0
        for page in pages:
            piece = page["text"].encode()
            assert data[at : at + len(piece)] == piece
            at += len(piece)
            assert page["cursor"] == f"{at}:0"

        # "both" pages through the two streams without losing or repeating anything.
        both, _ = await s.read_all(job["id"], stream="both", max_bytes=1000)
        assert sorted(both.splitlines(keepends=True)) == sorted(
            (text + "to-stderr\n").splitlines(keepends=True)
        )


async def test_output_without_newlines_is_stored_completely(db: Path) -> None:
    size = 3_000_000
    async with start_server(db) as s:
        job = await s.execute(f"head -c {size} /dev/zero | tr '\\0' a")
        view = await s.wait_done(job["id"])
        assert view["status"] == "completed"
        assert view["stdout"] == {"written": size, "stored": size, "dropped": 0}
        got, pages = await s.read_all(job["id"])
        assert len(got) == size
        assert set(got) == {"a"}
        assert sum(p["bytes"] for p in pages) == size
        # one 3 MB line: tail returns its end, cut to the byte limit, and says so
        tail = await s.call("tail", job_id=job["id"], lines=1)
        assert tail["lines"] == 1
        assert tail["truncated"] is True
        assert 0 < len(tail["text"]) <= 65536
        assert tail["text"] == "a" * len(tail["text"])


async def test_binary_output_is_stored_byte_for_byte(db: Path, tmp_path: Path) -> None:
    size = 100_000
    async with start_server(db) as s:
        job = await s.execute(f"head -c {size} /dev/urandom | tee out.bin", cwd=str(tmp_path))
        view = await s.wait_done(job["id"])
        assert view["status"] == "completed"
        assert view["stdout"]["stored"] == size

        written = (tmp_path / "out.bin").read_bytes()
        assert len(written) == size
        [(total,)] = query(
            db,
            "select sum(length(data)) from output_chunks where job_id = ? and stream = 'stdout'",
            job["id"],
        )
        assert total == size
        assert stored_bytes(db, job["id"]) == written

        # The tool pages through all of it too (as text with U+FFFD for invalid bytes), covering
        # every byte exactly once.
        _, pages = await s.read_all(job["id"], max_bytes=4096)
        assert sum(p["bytes"] for p in pages) == size
        assert pages[-1]["cursor"] == f"{size}:0"


async def test_multibyte_characters_split_by_max_bytes_never_become_replacements(
    db: Path, tmp_path: Path
) -> None:
    # 1-, 2-, 3- and 4-byte characters, with and without newlines, so that page boundaries fall
    # inside characters at every possible position.
    unit = "a\N{LATIN SMALL LETTER E WITH ACUTE}\N{EURO SIGN}\N{MUSICAL SYMBOL G CLEF}"
    text = "".join(unit * (i % 7 + 1) + ("\n" if i % 3 == 0 else "") for i in range(2000))
    (tmp_path / "utf8.txt").write_text(text, encoding="utf-8")
    async with start_server(db) as s:
        job = await s.execute("cat utf8.txt; cat utf8.txt >&2")
        await s.wait_done(job["id"])
        for max_bytes in (1000, 1001, 1002, 1003, 997):
            got, pages = await s.read_all(job["id"], max_bytes=max_bytes)
            assert REPLACEMENT not in got, f"max_bytes={max_bytes}"
            assert got == text, f"max_bytes={max_bytes}"
            assert all(REPLACEMENT not in p["text"] for p in pages)
        both, _ = await s.read_all(job["id"], stream="both", max_bytes=1001)
        assert REPLACEMENT not in both
        assert len(both) == 2 * len(text)


async def test_every_read_makes_progress_even_below_a_character(db: Path, tmp_path: Path) -> None:
    """A max_bytes smaller than the character at the cursor must not return the same cursor
    for ever (an agent would loop): it has to move on, whatever it returns."""
    text = "\N{MUSICAL SYMBOL G CLEF}\N{EURO SIGN}é" * 3
    (tmp_path / "small.txt").write_text(text, encoding="utf-8")
    async with start_server(db) as s:
        job = await s.execute("cat small.txt")
        await s.wait_done(job["id"])
        for max_bytes in (1, 2, 3):
            got, _ = await s.read_all(job["id"], max_bytes=max_bytes, max_calls=200)
            assert got == text, f"max_bytes={max_bytes}"


async def test_paging_a_running_job_sees_every_byte_once(db: Path) -> None:
    """An agent following a job while it runs: cursor paging gives exactly what it wrote."""
    count = 3000
    command = (
        f"i=0; while [ $i -lt {count} ]; do echo line $i; "
        "[ $((i % 100)) = 0 ] && sleep 0.05; i=$((i+1)); done"
    )
    expected = "".join(f"line {i}\n" for i in range(count))
    async with start_server(db) as s:
        job = await s.execute(command)
        pieces: list[str] = []
        cursor = "0:0"
        seen_running = False
        for _ in range(10_000):
            page = await s.call("output", job_id=job["id"], cursor=cursor, max_bytes=500)
            pieces.append(page["text"])
            cursor = page["cursor"]
            seen_running = seen_running or (page["status"] == "running" and page["text"] != "")
            if page["end"]:
                break
            if not page["more"]:
                await asyncio.sleep(0.02)  # caught up with the job: poll again
        else:
            raise AssertionError("never reached the end")
        assert seen_running, "the job ended before any page was read while it ran"
        assert "".join(pieces) == expected
        assert cursor == f"{len(expected)}:0"


async def test_reading_a_running_job_never_splits_a_character(db: Path) -> None:
    """The job has written only the first half of a 4-byte character when it is read: the read
    must not turn the half into U+FFFD and move past it."""
    # "ab", then the first two bytes of U+1F600; the last two come after a line on stdin.
    command = r"printf 'ab\360\237'; read x; printf '\230\200\n'"
    async with start_server(db) as s:
        job = await s.execute(command)
        await wait_for(lambda: _stored(s, job["id"], 4), message="the first half of the character")
        first = await s.call("output", job_id=job["id"])
        assert first["status"] == "running"
        assert REPLACEMENT not in first["text"], first
        await s.call("interact", job_id=job["id"], input="\n", eof=True, wait_s=10)
        await s.wait_done(job["id"])
        rest = await s.call("output", job_id=job["id"], cursor=first["cursor"])
        assert rest["end"] is True
        assert first["text"] + rest["text"] == "ab\N{GRINNING FACE}\n"


async def _stored(s: Server, job_id: str, n: int) -> bool:
    view = await s.call("status", job_id=job_id)
    return bool(view["stdout"]["stored"] >= n)


async def test_output_over_the_limit_keeps_start_and_end_and_counts_the_rest(db: Path) -> None:
    limit = 65536  # the smallest limit the settings allow
    expected = "".join(f"{i}\n" for i in range(1, 200_001)).encode()
    env = {"MCP_BACKGROUND_JOB_MAX_OUTPUT_BYTES": str(limit)}
    async with start_server(db, env=env) as s:
        job = await s.execute("seq 1 200000")
        view = await s.wait_done(job["id"])
        assert view["stdout"]["written"] == len(expected)
        assert view["stdout"]["stored"] == limit
        assert view["stdout"]["dropped"] == len(expected) - limit

        text, pages = await s.read_all(job["id"], max_bytes=10_000)
        assert sum(p["bytes"] for p in pages) == len(expected)
        assert sum(p["dropped_bytes"] for p in pages) == len(expected) - limit
        assert pages[-1]["cursor"] == f"{len(expected)}:0"
        # the stored start and end, with one notice of the gap saying how much is missing
        head, gap, rest = re.split(r"\n\[\.\.\. (\d+) bytes of stdout dropped[^\]]*\]\n", text)
        assert int(gap) == len(expected) - limit
        assert expected.startswith(head.encode())
        assert expected.endswith(rest.encode())
        assert len(head) + len(rest) == limit
        [(in_db,)] = query(
            db, "select sum(length(data)) from output_chunks where job_id = ?", job["id"]
        )
        assert in_db == limit

        tail = await s.call("tail", job_id=job["id"], lines=3)
        assert tail["text"] == "199998\n199999\n200000\n"
