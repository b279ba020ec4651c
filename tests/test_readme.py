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
