"""Secret masking as a client sees it, through the real stdio server and client: every trick
that kept a secret from the rules while a client could still read it (colour codes, escape
sequences and invisible characters between its characters, redraws, cursor moves, halves on
stdout and stderr, a key block written in two parts, a caller's secret printed in pieces),
commands echoed by ``status``/``list``/``job://``, what an ``interact`` audit row keeps, and
what ``job://{id}/output`` says is left out.

Each read is checked as the client gets it: ``output`` in both renderings (page by page, and
live with cursors), ``tail``, and the ``job://{id}/output`` resource.
"""

from __future__ import annotations

import json
import subprocess
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mcp_types
import pytest
from fastmcp.exceptions import ToolError

from .helpers import Server, query, start_server, wait_for

AWS = "AKIAIOSFODNN7EXAMPLE"
AWS_CORE = "IOSFODNN7EXAMPLE"
GITHUB = "ghp_1234567890abcdefghijABCDEFGHIJ123456"
GITHUB_CORE = "1234567890abcdefghijABCDEFGHIJ123456"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
#: The body of a key the size of an RSA-2048 one: 25 lines of 64 characters, each different.
PEM_LINES = ["".join(_B64[(i * 7 + j * 13 + i * j) % 64] for j in range(64)) for i in range(25)]
TOKEN = "caller-given-secret-42"  # handed to a job in env under a secret-looking name
PIECE = 6


def _visible(text: str) -> str:
    """What a reader makes of the text: invisible characters and carriage returns do not
    separate the characters around them."""
    return "".join(
        c for c in text if c != "\r" and unicodedata.category(c) not in ("Cf", "Mn", "Me")
    )


async def _resource(s: Server, uri: str) -> str:
    [content] = await s.client.read_resource(uri)
    assert isinstance(content, mcp_types.TextResourceContents)
    return content.text


async def _page_all(s: Server, job_id: str, **args: Any) -> str:
    """Every page of a finished job's output, read with cursors (``max_bytes`` small: many
    windows, so secrets cross their edges)."""
    texts: list[str] = []
    cursor: str | None = None
    for _ in range(10_000):
        page = await s.call("output", job_id=job_id, cursor=cursor, **args)
        texts.append(page["text"])
        if page["end"]:
            return "".join(texts)
        cursor = page["cursor"]
    raise AssertionError("output never reached the end")


async def _every_read(s: Server, job_id: str, stream: str = "stdout") -> dict[str, str]:
    """A finished job's output as every kind of read returns it."""
    reads = {}
    for render in ("raw", "plain"):
        reads[f"output {render}"] = await _page_all(s, job_id, stream=stream, render=render)
        reads[f"output {render} 97-byte pages"] = await _page_all(
            s, job_id, stream=stream, render=render, max_bytes=97
        )
        reads[f"tail {render}"] = (
            await s.call("tail", job_id=job_id, lines=1000, stream=stream, render=render)
        )["text"]
    reads["job://output"] = await _resource(s, f"job://{job_id}/output")
    return reads


def _assert_hidden(reads: dict[str, str], *cores: str) -> None:
    for name, text in reads.items():
        for core in cores:
            assert core not in _visible(text), f"{core!r} is readable in {name}: {text!r}"


# --- colour codes, escape sequences, redraws and invisible characters -------------------------


async def test_grep_colour_output_shows_no_token(db: Path, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"GH_TOKEN_X={GITHUB}\nAWS_ID={AWS}\nOTHER=1\n")
    async with start_server(db) as s:
        job = await s.execute("grep --color=always -E 'ghp_|AKIA' .env", cwd=str(tmp_path))
        await s.wait_done(job["id"])
        reads = await _every_read(s, job["id"])
        _assert_hidden(reads, GITHUB_CORE, AWS_CORE)
        assert "GH_TOKEN_X=" + "*" * 40 in reads["output raw"]
        assert "AWS_ID=AKIA" + "*" * 16 in reads["output plain"]
        page = await s.call("output", job_id=job["id"])
        grep = ["grep", "--color=always", "-E", "ghp_|AKIA", ".env"]
        raw = subprocess.run(grep, cwd=tmp_path, capture_output=True, check=True).stdout
        assert b"\x1b[" in raw
        assert page["bytes"] == len(raw)  # cursors count the raw bytes, escapes included
        assert page["redactions"] == 2


def _between(sep: str) -> Callable[[str], str]:
    return lambda secret: sep.join(secret)


#: Ways to print a secret so that its characters are not adjacent bytes while a terminal (or a
#: reader) still shows them together. Unit tests cover more (tests/test_redact.py).
TRICKS: dict[str, Callable[[str], str]] = {
    "sgr-every-character": lambda s: "".join(f"\x1b[3{i % 8}m{c}\x1b[0m" for i, c in enumerate(s)),
    "other-csi": _between("\x1b[?25l\x1b[K"),
    "osc-title": _between("\x1b]0;title\x07"),
    "osc-hyperlink": _between("\x1b]8;;http://example.com\x1b\\"),
    "c1-controls": _between("\u009b0m\u0085"),
    "zero-width-space": _between("\u200b"),
    "format-characters": _between("\u2060\ufeff\u00ad\u202e"),
    "combining-mark": _between("\u0336"),
    "backspace-overwrite": lambda s: "".join(f"#\b{c}" for c in s),
    "cr-redraw": lambda s: "".join(f"\r{s[: i + 1]}" for i in range(len(s))),
    "cursor-left-overwrite": lambda s: "".join(f"{c}#\x1b[D" for c in s) + " ",
    "cursor-columns": lambda s: "".join(f"\x1b[{i + 1}G{s[i]}" for i in reversed(range(len(s)))),
}


@pytest.mark.parametrize("trick", TRICKS)
async def test_a_secret_hidden_from_the_rules_is_masked_as_the_client_sees_it(
    db: Path, tmp_path: Path, trick: str
) -> None:
    printed = f"start\n{TRICKS[trick](AWS)}\nthen {TRICKS[trick](GITHUB)}\nend\n"
    (tmp_path / "out.bin").write_bytes(printed.encode())
    async with start_server(db) as s:
        job = await s.execute("cat out.bin", cwd=str(tmp_path))
        await s.wait_done(job["id"])
        reads = await _every_read(s, job["id"])
        _assert_hidden(reads, AWS_CORE, GITHUB_CORE)
        assert all("end" in text for text in reads.values())
        full = await s.call("output", job_id=job["id"])
        assert full["bytes"] == len(printed.encode()) and full["end"]


async def test_a_secret_split_across_live_reads_by_an_escape_is_held_then_masked(
    db: Path, tmp_path: Path
) -> None:
    first, second = f"{AWS[:10]}\x1b[1m", f"{AWS[10:]}\x1b[0m done\n"
    (tmp_path / "a").write_bytes(first.encode())
    (tmp_path / "b").write_bytes(second.encode())
    async with start_server(db) as s:
        job = await s.execute("cat a; sleep 2; cat b", cwd=str(tmp_path))
        jid = job["id"]
        await wait_for(lambda: _stored(s.db, jid), message="the first part stored")
        live = await s.call("output", job_id=jid)
        assert live["status"] == "running"
        assert AWS[4:10] not in live["text"]  # the start of the key waits for the rest
        await s.wait_done(jid)
        rest = await s.call("output", job_id=jid, cursor=live["cursor"])
        _assert_hidden({"live": live["text"] + rest["text"]}, AWS_CORE, AWS[4:10])
        assert "AKIA" + "*" * 16 in live["text"] + rest["text"]


@pytest.mark.parametrize("pty", [False, True], ids=["pipe", "pty"])
async def test_interact_returns_an_echoed_token_masked_as_shown(db: Path, pty: bool) -> None:
    typed = TRICKS["sgr-every-character"](GITHUB) + " and " + TRICKS["zero-width-space"](AWS)
    async with start_server(db) as s:
        job = await s.execute("cat", pty=pty)
        reply = await s.call("interact", job_id=job["id"], input=typed + "\n", until="and")
        assert reply["returned_because"] in ("prompt", "quiet", "waiting_for_input")
        await wait_for(lambda: _stored(s.db, job["id"]), message="the echo stored")
        again = await s.call("interact", job_id=job["id"], input="", eof=True, wait_s=5)
        _assert_hidden({"interact": reply["output"] + again["output"]}, GITHUB_CORE, AWS_CORE)
        await s.wait_done(job["id"])
        _assert_hidden(await _every_read(s, job["id"]), GITHUB_CORE, AWS_CORE)


def _stored(db: Path, job_id: str) -> bool:
    return bool(query(db, "select 1 from output_chunks where job_id = ?", job_id))


# --- stdout and stderr read together ------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [(AWS[:8], AWS[8:]), (GITHUB[:20], GITHUB[20:]), (GITHUB[:3], GITHUB[3:])],
    ids=["aws", "github", "github-prefix"],
)
@pytest.mark.parametrize("order", ["stdout-then-stderr", "stderr-then-stdout"])
async def test_a_secret_split_between_stdout_and_stderr_is_masked_when_read_together(
    db: Path, first: str, second: str, order: str
) -> None:
    to_first, to_second = ("", " >&2") if order == "stdout-then-stderr" else (" >&2", "")
    # The pause keeps the order in which the halves are stored certain.
    command = f"printf '%s' '{first}'{to_first}; sleep 0.3; printf '%s\\n' '{second}'{to_second}"
    async with start_server(db) as s:
        job = await s.execute(command)
        await s.wait_done(job["id"])
        reads = await _every_read(s, job["id"], stream="both")
        merged = (await s.call("output", job_id=job["id"], stream="both"))["text"]
        assert merged.startswith(first[:3]) and "*" * 10 in merged  # masked as one secret
        _assert_hidden(reads, AWS_CORE if first.startswith("AKIA") else GITHUB_CORE)


async def test_halves_on_stdout_and_stderr_read_live_together_stay_hidden(db: Path) -> None:
    command = f"printf '%s' '{GITHUB[:12]}'; sleep 2; printf '%s\\n' '{GITHUB[12:]}' >&2"
    async with start_server(db) as s:
        job = await s.execute(command)
        jid = job["id"]
        await wait_for(lambda: _stored(s.db, jid), message="the first half stored")
        live = await s.call("output", job_id=jid, stream="both")
        await s.wait_done(jid)
        rest = await s.call("output", job_id=jid, stream="both", cursor=live["cursor"])
        both = live["text"] + rest["text"]
        assert GITHUB[4:12] not in live["text"]
        _assert_hidden({"live reads": both}, GITHUB_CORE, GITHUB[4:12])
        assert "ghp_" in both


# --- a private key written in two parts ---------------------------------------------------------


@pytest.mark.parametrize("max_bytes", [65536, 300])
async def test_a_key_block_written_in_two_parts_is_never_shown(
    db: Path, tmp_path: Path, max_bytes: int
) -> None:
    head = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(PEM_LINES[:2]) + "\n"
    tail = "\n".join(PEM_LINES[2:]) + "\n-----END RSA PRIVATE KEY-----\nafter the key\n"
    (tmp_path / "head").write_text(head)
    (tmp_path / "tail").write_text(tail)
    async with start_server(db) as s:
        job = await s.execute("cat head; sleep 2; cat tail", cwd=str(tmp_path))
        jid = job["id"]
        await wait_for(lambda: _stored(s.db, jid), message="the first part stored")
        texts, cursor = [], None
        for _ in range(3):  # live, while the block is open
            page = await s.call("output", job_id=jid, cursor=cursor, max_bytes=max_bytes)
            texts.append(page["text"])
            cursor = page["cursor"]
        assert page["status"] == "running"
        await s.wait_done(jid)
        while True:
            page = await s.call("output", job_id=jid, cursor=cursor, max_bytes=max_bytes)
            texts.append(page["text"])
            cursor = page["cursor"]
            if page["end"]:
                break
        reads = await _every_read(s, jid)
        reads["live pages"] = "".join(texts)
        _assert_hidden(reads, *(line[:24] for line in PEM_LINES))
        assert reads["live pages"].endswith("-----END RSA PRIVATE KEY-----\nafter the key\n")


# --- a caller's secret printed in pieces ---------------------------------------------------------


def _cut(a: int, b: int | str) -> str:
    return f'"$(printf %s "$DEPLOY_TOKEN" | cut -c{a}-{b})"'


async def test_a_callers_secret_printed_in_two_parts_live_is_never_shown(db: Path) -> None:
    command = f"printf '%s' {_cut(1, 6)}; sleep 2; printf '%s\\n' {_cut(7, '')}"
    async with start_server(db) as s:
        job = await s.execute(command, env={"DEPLOY_TOKEN": TOKEN})
        jid = job["id"]
        await wait_for(lambda: _stored(s.db, jid), message="the first part stored")
        live = await s.call("output", job_id=jid)
        assert live["status"] == "running"
        assert TOKEN[:2] not in live["text"]
        await s.wait_done(jid)
        rest = await s.call("output", job_id=jid, cursor=live["cursor"])
        _assert_pieces_hidden({"live": live["text"] + rest["text"]})
        assert (live["text"] + rest["text"]).strip("*\n") == ""


@pytest.mark.parametrize(
    "command",
    [
        f"printf '%s\\n%s\\n' {_cut(1, 6)} {_cut(7, '')}",  # on separate lines
        f"printf '%s and %s\\n' {_cut(1, 11)} {_cut(12, '')}",  # separated by other text
        f"printf '%s\\n' {_cut(12, '')}; printf '%s\\n' {_cut(1, 11)} >&2",  # in two streams
        f"printf '\\033[1m%s\\033[0m%s\\n' {_cut(1, 9)} {_cut(10, '')}",  # with an escape
    ],
    ids=["lines", "other-text", "streams", "escape"],
)
async def test_pieces_of_a_callers_secret_are_masked(db: Path, command: str) -> None:
    async with start_server(db) as s:
        job = await s.execute(command, env={"DEPLOY_TOKEN": TOKEN})
        await s.wait_done(job["id"])
        reads = await _every_read(s, job["id"], stream="both")
        reads["stdout"] = await _page_all(s, job["id"])
        reads["stderr"] = await _page_all(s, job["id"], stream="stderr")
        _assert_pieces_hidden(reads)


def _assert_pieces_hidden(reads: dict[str, str]) -> None:
    _assert_hidden(reads, *(TOKEN[i : i + PIECE] for i in range(len(TOKEN) - PIECE + 1)))


# --- commands shown by status, list and the job:// resources ------------------------------------


async def test_status_list_and_resources_mask_secrets_in_commands(db: Path) -> None:
    command = (
        f"echo {GITHUB} >/dev/null; curl -s -H 'Authorization: Bearer abc.def-ghi_jkl' "
        f"http://127.0.0.1:9/ --user-agent {TOKEN} || true"
    )
    async with start_server(db) as s:
        job = await s.execute(command, env={"API_TOKEN": TOKEN})
        jid = job["id"]
        done = await s.call("wait", job_id=jid)
        shown = {
            "execute": job["command"],
            "wait": done["job"]["command"],
            "status": (await s.call("status", job_id=jid))["command"],
            "list": (await s.call("list"))["jobs"][0]["command"],
            "job://": json.loads(await _resource(s, f"job://{jid}"))["command"],
            "resources/list": " ".join(
                r.description or "" for r in await s.client.list_resources()
            ),
            "kill": (await s.call("kill", job_id=jid))["command"],
        }
        for name, text in shown.items():
            for secret in (GITHUB_CORE, "abc.def-ghi_jkl", TOKEN):
                assert secret not in text, f"{secret!r} in {name}: {text!r}"
        assert shown["status"].startswith("echo ghp_****")
        audit = await s.call("audit", kind="execute")
        assert GITHUB_CORE not in json.dumps(audit)
    # stored as given: the job runs what the caller sent, and the CLI shows people their own
    (stored,) = query(db, "select command from jobs where id = ?", jid)
    assert stored == (command,)


# --- what an interact audit row keeps -----------------------------------------------------------


async def test_interact_audit_rows_keep_sizes_never_the_typed_text(
    db: Path, tmp_path: Path
) -> None:
    async with start_server(db) as s:
        job = await s.execute("bash", cwd=str(tmp_path))
        jid = job["id"]
        typed_ok = "echo password=typed-secret-one\n"
        await s.call("interact", job_id=jid, input=typed_ok, wait_s=0.5)
        typed_refused = "rm -rf ~ typed-secret-two\n"
        with pytest.raises(ToolError, match="Nothing was written"):
            await s.call("interact", job_id=jid, input=typed_refused, wait_s=0)
        await s.call("interact", job_id=jid, input="exit\n", eof=True, wait_s=0)
        await s.wait_done(jid)
        events = (await s.call("audit", kind="interact"))["events"]
    assert len(events) == 3
    refused = next(e for e in events if e["decision"] == "refused")
    assert refused["rule"] and refused["matched"] is None
    assert refused["detail"]["bytes"] == len(typed_refused)
    rows = query(db, "select matched, command, detail from audit_events where kind='interact'")
    for row in rows:
        for text in ("typed-secret", "password", "rm -rf"):
            assert text not in json.dumps(row), row


# --- what job://{id}/output says is left out ----------------------------------------------------


async def test_output_resource_says_nothing_is_left_out_when_colours_were_stripped(
    db: Path,
) -> None:
    async with start_server(db) as s:
        job = await s.execute("printf '\\033[31mred\\033[0m\\n'")
        await s.wait_done(job["id"])
        assert await _resource(s, f"job://{job['id']}/output") == "red\n"


async def test_output_resource_counts_only_the_bytes_before_what_it_shows(
    db: Path, tmp_path: Path
) -> None:
    lines = [f"\x1b[32mline {i:05d}\x1b[0m\n".encode() for i in range(20_000)]
    (tmp_path / "out").write_bytes(b"".join(lines))
    async with start_server(db) as s:
        job = await s.execute("cat out", cwd=str(tmp_path))
        await s.wait_done(job["id"])
        text = await _resource(s, f"job://{job['id']}/output")
    note, shown = text.split("\n", 1)
    first = int(shown.split("\n", 1)[0].removeprefix("line "))  # a whole line first
    left_out = sum(len(line) for line in lines[:first])
    total = sum(len(line) for line in lines)
    assert note == (
        f"[... the first {left_out} of {total} bytes are left out: read them with the "
        "`output` tool ...]"
    )
    assert shown.endswith("line 19999\n")
