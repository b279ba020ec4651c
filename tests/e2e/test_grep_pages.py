"""grep over output longer than one scan page (``grepping.PAGE_BYTES``): a secret across the
page boundary, CRLF and coloured lines on the fast path (``Masked.plain``), line numbers and
context across pages. Through a real MCP client over stdio."""

from __future__ import annotations

from pathlib import Path

from mcp_background_job.grepping import PAGE_BYTES

from .helpers import start_server

GITHUB = "ghp_1234567890abcdefghijABCDEFGHIJ123456"
FILLER = "f" * 47  # lines of 48 bytes


async def test_grep_across_pages_masks_and_shows_as_output_does(db: Path) -> None:
    # The secret's line starts 16 bytes before the first page ends: its token crosses it.
    before = PAGE_BYTES - 16
    assert before % 48 == 0
    lines_before = before // 48
    cmd = (
        f"yes {FILLER} | head -c {before}; printf 'token {GITHUB} here\\r\\n';"
        f" printf '\\033[31mERROR red\\033[0m\\n'; yes {FILLER} | head -c {PAGE_BYTES};"
        " echo 'needle last'"
    )
    async with start_server(db) as s:
        job = await s.execute(cmd)
        await s.wait_done(job["id"])
        # Every prefix of the secret finds nothing, across the page boundary too.
        for n in range(5, 14):
            r = await s.call("grep", job_id=job["id"], pattern="token " + GITHUB[:n])
            assert r["total_matches"] == 0, GITHUB[:n]
        r = await s.call("grep", job_id=job["id"], pattern="^token", context=2)
        assert r["total_matches"] == 1
        m = r["matches"][0]
        assert m["line_number"] == lines_before + 1
        assert GITHUB[4:] not in m["line"] and "***" in m["line"] and "here" in m["line"]
        assert m["before"] == [FILLER, FILLER] and m["after"] == ["ERROR red", FILLER]
        # A CRLF line in a plain page: matched as shown (the line by line way), as before.
        crlf = await s.call("grep", job_id=job["id"], pattern=" here")
        assert crlf["total_matches"] == 1 and crlf["matches"][0]["line"] == m["line"]
        # A coloured line is matched as shown: its escape bytes are not there.
        assert (await s.call("grep", job_id=job["id"], pattern="ERROR red"))["total_matches"] == 1
        assert (await s.call("grep", job_id=job["id"], pattern=r"31m"))["total_matches"] == 0
        last = await s.call("grep", job_id=job["id"], pattern="needle")
        assert [x["line_number"] for x in last["matches"]] == [lines_before + 3 + PAGE_BYTES // 48]
        total = before + len(f"token {GITHUB} here\r\n") + len("\x1b[31mERROR red\x1b[0m\n")
        assert last["bytes_searched"] == total + PAGE_BYTES + len("needle last\n")
        # Every filler line is counted, in every page.
        every = await s.call("grep", job_id=job["id"], pattern="^f+$", max_matches=1)
        assert every["total_matches"] == lines_before + PAGE_BYTES // 48
