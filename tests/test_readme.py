"""The README's examples stay true: its sqlite3 queries run with the real ``sqlite3`` program
and its command-line examples run through the real console script, on a database holding
real jobs."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mcp_background_job.app import App
from mcp_background_job.config import Settings

from .test_cli import _env

README = Path(__file__).resolve().parents[1] / "README.md"
EXE = Path(sys.executable).with_name("mcp-background-job")
PLACEHOLDER = "3f2a"


def block(section: str, lang: str) -> str:
    """The first ``lang`` code block after the heading ``section``."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no {lang} block in {section!r}"
    return match.group(1)


@dataclass
class History:
    db: Path
    ok: str  # echo a / b (stderr) / c, in three ingestion passes; label ci
    failed: str  # exit 3; label ci
    slow: str  # the longest one; label nightly


@pytest.fixture
async def history(tmp_path: Path) -> AsyncIterator[History]:
    settings = Settings(db=tmp_path / "jobs.db", subreaper=False)
    app = await App.open(settings)
    try:
        jobs = []
        for command, labels in (
            ("echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c", ["ci"]),
            ("echo failing; exit 3", ["ci"]),
            ("sleep 0.6", ["nightly"]),
        ):
            view = await app.execute(command, labels=labels)
            assert await app.runner.wait_end(view.id, 30)
            jobs.append(view.id)
    finally:
        await app.close()
    assert isinstance(settings.db, Path)
    yield History(settings.db, *jobs)


def sqlite(db: Path, sql: str) -> str:
    proc = subprocess.run(
        ["sqlite3", str(db), sql], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and not proc.stderr, (sql, proc.stderr)
    return proc.stdout


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs the sqlite3 program")
def test_the_five_sqlite3_queries(history: History) -> None:
    lines = block("Looking at the history with sqlite3", "sql").splitlines()
    titles = [line.removeprefix("-- ") for line in lines if line.startswith("-- ")]
    queries = [line for line in lines if line and not line.startswith("--")]
    assert len(queries) == 5 and len(titles) == 5, "the README promises five queries"
    results = [sqlite(history.db, q.replace(PLACEHOLDER, history.ok[:4])) for q in queries]
    got = dict(zip(titles, results, strict=True))

    last = got["the last 10 jobs"].splitlines()
    assert [row.split("|")[0] for row in last] == [history.slow, history.failed, history.ok]
    failures = got["failures today (local time)"].splitlines()
    assert [row.split("|")[:3] for row in failures] == [[history.failed, "failed", "3"]]
    output = "a job's full output as text (stdout and stderr as stored; a unique id prefix works)"
    assert got[output] == "a\nb\nc\n\n"  # sqlite3 adds the last newline
    slowest = got["the slowest commands"].splitlines()
    assert slowest[0].split("|")[0] == history.slow
    assert float(slowest[0].split("|")[1]) >= 0.6
    labels = [row.split("|")[:3] for row in got["jobs by label"].splitlines()]
    assert labels == [["ci", "2", "1"], ["nightly", "1", "0"]]


def test_the_command_line_examples(history: History, tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("test:\n\t@echo tests pass\n")
    examples = [
        re.sub(r"\s+#\s.*$", "", line)
        for line in block("Command line", "sh").splitlines()
        if line.startswith("mcp-background-job ")
    ]
    assert len(examples) >= 10
    for example in examples:
        args = shlex.split(example.replace(PLACEHOLDER, history.ok[:4]))
        out = None
        if ">" in args:
            target = tmp_path / args[args.index(">") + 1]
            args = args[: args.index(">")]
            out = target
        if args[1] == "run" and shutil.which("make") is None:
            continue
        proc = subprocess.run(
            [str(EXE), *args[1:]],
            env=_env(MCP_BACKGROUND_JOB_DB=str(history.db)),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, (example, proc.stderr.decode())
        if out is not None:
            out.write_bytes(proc.stdout)
            assert out.read_bytes() == b"a\nc\n"  # stdout only: b went to stderr
        if args[1] == "run":
            assert proc.stdout == b"tests pass\n"


def _outside_code_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the README's lines that are not in a fenced code block."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def _cells(row: str) -> int:
    return len(re.split(r"(?<!\\)\|", row.strip().strip("|")))


def test_every_table_has_a_header_row() -> None:
    """Rows that follow a paragraph without a header and a delimiter row render as text (the
    security settings once did)."""
    lines = _outside_code_blocks(README.read_text())
    tables = 0
    for i, (number, line) in enumerate(lines):
        if not line.startswith("|") or (i and lines[i - 1][1].startswith("|")):
            continue
        tables += 1
        assert i == 0 or not lines[i - 1][1].strip(), f"line {number}: a table needs a blank line"
        assert i + 1 < len(lines), f"line {number}: a table without rows"
        delimiter = lines[i + 1][1]
        assert re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", delimiter), (
            f"line {number}: a table's second line must be its delimiter row (|---|---|), "
            f"got {delimiter!r}: is the header missing?"
        )
        width = _cells(line)
        j = i + 1
        while j < len(lines) and lines[j][1].startswith("|"):
            assert _cells(lines[j][1]) == width, f"line {lines[j][0]}: {width} columns expected"
            j += 1
    assert tables >= 5


def test_the_claude_mcp_add_examples_put_options_before_the_name() -> None:
    """`claude mcp add [options] <name> -- <command>`: options after the name are not read as
    options, and `-e` takes several values, so a name right after its value is taken for a
    variable (anthropics/claude-code#23365)."""
    commands = re.findall(r"`(claude mcp add [^`]*)`", README.read_text())
    assert commands
    for command in commands:
        words = shlex.split(command)[3:]
        assert "--" in words, command
        before = words[: words.index("--")]
        positional = []
        k = 0
        while k < len(before):
            word = before[k]
            if word in ("-e", "--env", "-H", "--header"):  # variadic: up to the next option
                k += 1
                assert k < len(before) and not before[k].startswith("-"), command
                while k < len(before) and not before[k].startswith("-"):
                    assert "=" in before[k] or word in ("-H", "--header"), (
                        f"{before[k]!r} would be taken for a variable: {command}"
                    )
                    k += 1
                continue
            if word in ("-s", "--scope", "-t", "--transport"):
                k += 2
                continue
            assert not word.startswith("-"), f"unknown option {word}: {command}"
            positional.append(word)
            k += 1
        assert positional == ["background-job"], command
        assert before[-1] == "background-job", f"options after the name: {command}"
        assert words[words.index("--") + 1].endswith("scripts/serve"), command
