"""The protocol edge, from outside: every request with an id gets an answer, whatever bytes it
came in (cut short, not UTF-8, lone surrogates, oversized, not JSON-RPC), and every argument of
every tool, however odd (huge, negative, NaN, infinite, empty, control characters), gets a
result or an error that says what was wrong, never "Internal error" and never silence.

Raw bytes are written to a real server's stdin (``wire``): SDK clients cannot send most of
these messages.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from mcp_background_job.stdio import MAX_MESSAGE_BYTES

from .helpers import query, start_server
from .wire import WireServer, tool_error_text, wire_server

PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WireServer]:
    """One server for the module (a rate limit far above what the sweep creates)."""
    db = tmp_path_factory.mktemp("wire") / "jobs.db"
    env = {"MCP_BACKGROUND_JOB_RATE_LIMIT_BURST": "100000", "MCP_BACKGROUND_JOB_LOG_LEVEL": "INFO"}
    with wire_server(db, env) as server:
        yield server


@pytest.fixture(scope="module")
def jobs(wire: WireServer) -> dict[str, str]:
    """An ended job, and a running one that reads its stdin (for interact)."""
    ended = wire.structured("execute", command="echo done")["id"]
    assert wire.structured("wait", job_id=ended, timeout_s=30)["finished"]
    reader = wire.structured("execute", command="cat > /dev/null", labels=["reader"])["id"]
    return {"ended": ended, "reader": reader}


def test_server_info_names_the_package_version(wire: WireServer) -> None:
    info = wire.init["result"]["serverInfo"]
    assert info == {"name": "mcp-background-job", "version": version("mcp-background-job")}


# --- every argument of every tool ----------------------------------------------------------

HUGE = "h" * 200_000
STRINGS: list[Any] = [
    "", " ", "\x00", "\x1b[31mred\x07\x08\x7f", "\u202e\u200b", "日本語", "a\nb", "\ud800",
    HUGE, 5, None, ["x"], {"x": 1},
]  # fmt: skip
INTEGERS: list[Any] = [
    0, -1, 2**31, 2**63, 2**70, -(2**70), 10**400, 1.5, 2.0, "7", "x", True, None, math.nan,
]  # fmt: skip
FLOATS: list[Any] = [
    math.nan, math.inf, -math.inf, 0, -0.0, -1, 1e308, 2**70, 10**400, 5e-324, "1", "nan",
    True, None,
]  # fmt: skip
LISTS: list[Any] = [[], [""], ["\x00"], [HUGE], ["x"] * 1000, [None], [5], "x", None]
ENVS: list[Any] = [
    {}, {"": "x"}, {"A": "\x00"}, {"A": HUGE}, {HUGE[:5000]: "x"}, {"A": "\ud800"},
    {"A=B": "x"}, {"A": 5}, ["A"], "A=1",
]  # fmt: skip
BOOLS: list[Any] = [True, False, "yes", 2, None]

#: Each tool's arguments and the values tried for each (the others stay valid).
SWEEP: dict[str, dict[str, list[Any]]] = {
    "execute": {
        "command": STRINGS, "cwd": [*STRINGS, "~nosuchuser/x", "/" + "d" * 5000],
        "env": ENVS, "timeout_s": FLOATS, "labels": LISTS, "pty": BOOLS, "rows": INTEGERS,
        "cols": INTEGERS, "priority": INTEGERS, "after": LISTS, "run_anyway": BOOLS,
        "idle_timeout_s": FLOATS,
    },
    "rerun": {"job_id": STRINGS},
    "list": {
        "status": STRINGS, "label": STRINGS, "command_contains": STRINGS,
        "since": [*STRINGS, "99999999999d", "9" * 400 + "w", "0001-01-01T00:00:00+01:00",
                  "9999-12-31T23:59:59-01:00"],
        "limit": INTEGERS, "cursor": STRINGS,
    },
    "status": {"job_id": STRINGS},
    "output": {
        "job_id": STRINGS, "stream": STRINGS, "cursor": [*STRINGS, "9" * 5000 + ":0", "-0:-0"],
        "max_bytes": INTEGERS, "render": STRINGS,
    },
    "tail": {"job_id": STRINGS, "lines": INTEGERS, "stream": STRINGS, "render": STRINGS},
    "interact": {
        "job_id": STRINGS, "input": STRINGS, "wait_s": FLOATS, "eof": [False, "no", None],
        "until": [*STRINGS, "(", "(a)\\1"], "settle_s": FLOATS, "keys": LISTS,
        "render": STRINGS,
    },
    "kill": {"job_id": STRINGS, "signal": [*STRINGS, "9" * 5000, "-1", "0", "SIGBOGUS"],
             "grace_s": FLOATS},
    "wait": {"job_id": STRINGS, "timeout_s": FLOATS},
    "wait_many": {"job_ids": LISTS, "label": STRINGS, "return_when": STRINGS, "timeout_s": FLOATS},
    "audit": {
        "limit": INTEGERS, "kind": STRINGS, "since": [*STRINGS, "99999999999d"],
        "job_id": STRINGS, "before_id": INTEGERS,
    },
}  # fmt: skip


def _base(tool: str, jobs: dict[str, str]) -> dict[str, Any]:
    """Valid arguments that leave the call quick and harmless: an ended job, or the job that
    reads stdin for interact (a short wait)."""
    if tool == "execute":
        return {"command": "true"}
    if tool == "interact":
        return {"job_id": jobs["reader"], "wait_s": 0.2}
    if tool == "wait_many":
        return {"job_ids": [jobs["ended"]], "timeout_s": 0}
    if tool in ("list", "audit"):
        return {}
    return {"job_id": jobs["ended"]}


def _label(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 24 else f"{text[:16]}...({len(text)})"


_CASES = [
    pytest.param(tool, arg, value, id=f"{tool}-{arg}-{_label(value)}")
    for tool, args in SWEEP.items()
    for arg, values in args.items()
    for value in values
]


@pytest.mark.parametrize(("tool", "arg", "value"), _CASES)
def test_every_argument_answers_with_a_result_or_a_helpful_error(
    wire: WireServer, jobs: dict[str, str], tool: str, arg: str, value: Any
) -> None:
    args = {**_base(tool, jobs), arg: value}
    if tool == "wait_many" and arg == "label":
        args.pop("job_ids")
    response = wire.call(tool, **args)
    if "error" in response:  # refused before the tool: only a lone surrogate may be
        assert response["error"]["code"] == INVALID_PARAMS, response
        assert "lone UTF-16 surrogate" in response["error"]["message"]
        return
    text = tool_error_text(response)
    if text is not None:
        assert "Internal error" not in text, text
        assert "pydantic" not in text and "validation error for" not in text, text
        assert len(text) < 3000, f"the error echoes too much: {text[:300]}..."
        named = (arg in text, "No job with id" in text, "Unknown key" in text,
                 "Refused by rule" in text)  # fmt: skip
        assert any(named), f"the error does not say which argument: {text}"
    assert wire.alive()


# --- the cases the issue names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arg"),
    [("execute", "timeout_s"), ("execute", "idle_timeout_s"), ("wait", "timeout_s"),
     ("wait_many", "timeout_s"), ("kill", "grace_s"), ("interact", "wait_s"),
     ("interact", "settle_s")],
)  # fmt: skip
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(
    wire: WireServer, jobs: dict[str, str], tool: str, arg: str, value: float
) -> None:
    """NaN and Infinity used to be taken as "no timeout" by execute."""
    text = tool_error_text(wire.call(tool, **{**_base(tool, jobs), arg: value}))
    assert text is not None and f"`{arg}`" in text and "finite number" in text, text


def test_huge_ages_and_ids(wire: WireServer, jobs: dict[str, str]) -> None:
    """An age older than the calendar means every job; an id past SQLite's integers is refused."""
    listed = wire.structured("list", since="99999999999d", limit=200)["jobs"]
    assert jobs["ended"] in [j["id"] for j in listed]
    assert wire.structured("audit", since="99999999999d", limit=1)["events"]
    text = tool_error_text(wire.call("audit", before_id=2**70))
    assert text is not None and "`before_id`" in text and str(2**63 - 1) in text, text


def test_interact_input_over_the_limit_says_so(wire: WireServer, jobs: dict[str, str]) -> None:
    """10 MiB of input used to be refused as "the job is not reading its stdin"."""
    text = tool_error_text(wire.call("interact", job_id=jobs["reader"], input="z" * (10 << 20)))
    assert text is not None, "10 MiB of input was accepted"
    assert "input is 10485760 bytes; one interact call sends at most 1048576 bytes" in text
    assert "not reading its stdin" not in text
    assert "Send it in parts" in text


def test_a_message_under_the_limit_is_served(wire: WireServer, jobs: dict[str, str]) -> None:
    big = "y" * (MAX_MESSAGE_BYTES - 4096)
    text = tool_error_text(wire.call("interact", job_id=jobs["reader"], input=big, wait_s=0))
    assert text is not None and "one interact call sends at most 1048576 bytes" in text


def test_a_pathological_until_regex_does_not_stall_the_server(wire: WireServer) -> None:
    """``until`` is matched on the event loop: with a backtracking engine '^(a+)+$' against
    30 characters takes minutes, and every other call waits."""
    line = "a" * 34 + "b!"  # with a backtracking engine: 2**33 ways to fail on this line
    job = wire.structured("execute", command=f"sleep 1; echo {line}; cat")
    started = time.monotonic()
    r = wire.structured("interact", job_id=job["id"], input="", until="^(a+)+$", wait_s=4)
    assert (r["returned_because"], r["output"]) == ("timeout", line + "\n")
    assert time.monotonic() - started < 15
    assert wire.alive()
    wire.structured("kill", job_id=job["id"], grace_s=0)


def test_unknown_resources_answer_not_found_in_the_2025_era(wire: WireServer) -> None:
    """-32002 with the URI in data, as protocol 2025-11-25 says (2026-07-28 uses -32602: see
    tests/test_resources.py); never -32603 Internal error."""
    for uri in ("job://ffffffffffff", "job://zz", "job://abc/nothing", "job://", "other://x",
                "job://" + "a" * 5000):  # fmt: skip
        reply = wire.request("resources/read", {"uri": uri})
        assert reply["error"]["code"] == -32002, reply
        assert reply["error"]["data"] == {"uri": uri}
        assert "Resource not found" in reply["error"]["message"]
        assert len(reply["error"]["message"]) < 1000


async def test_a_rerun_is_audited_with_the_client_that_asked(db: Path) -> None:
    """The audit row of a rerun used to lose the client's name, version and session."""
    async with start_server(db, mode="legacy") as s:
        first = await s.execute("true")
        await s.wait_done(first["id"])
        again = await s.call("rerun", job_id=first["id"])
        rows = query(
            db,
            "select job_id, client_name, client_version, session_id from audit_events "
            "where kind = 'execute' order by id",
        )
    assert [r[0] for r in rows] == [first["id"], again["id"]]
    name, version_, session = rows[0][1:]
    assert name and version_ and session, rows
    assert rows[1][1:] == (name, version_, session)


_TOOLS = list(SWEEP)
_REQUIRED = {"execute": "command", "rerun": "job_id", "status": "job_id", "output": "job_id",
             "tail": "job_id", "interact": "job_id", "kill": "job_id",
             "wait": "job_id"}  # fmt: skip


@pytest.mark.parametrize("tool", _TOOLS)
def test_argument_errors_say_which_argument_what_was_wrong_and_what_is_accepted(
    wire: WireServer, jobs: dict[str, str], tool: str
) -> None:
    """Each kind of validation error, for every tool: an unknown argument (with the likely one
    meant), a missing required one, a wrong type. pydantic's own text used to reach clients."""
    base = _base(tool, jobs)
    first = next(iter(SWEEP[tool]))
    misspelt = first[:-1] + "x" + first[-1]  # job_id -> job_xid, command -> commaxnd
    text = tool_error_text(wire.call(tool, **base, **{misspelt: "v"}))
    assert text is not None
    assert text.startswith(f"Invalid arguments for `{tool}`; nothing was done.")
    assert f"`{misspelt}` is not an argument of `{tool}` (its arguments: {first}" in text
    assert f"Did you mean `{first}`?" in text
    assert text.endswith(f"Call `{tool}` again with the arguments fixed.")
    assert "pydantic" not in text and "https://" not in text

    if tool in _REQUIRED:
        arg = _REQUIRED[tool]
        text = tool_error_text(wire.call(tool, **{k: v for k, v in base.items() if k != arg}))
        assert text is not None and f"- `{arg}` is required. Accepted: a string" in text, text

    for arg in SWEEP[tool]:  # a list of objects is no argument's type
        text = tool_error_text(wire.call(tool, **{**base, arg: [{"an": "object"}]}))
        assert text is not None and f"- `{arg}" in text and "Input should be" in text, text
        assert 'got [{"an": "object"}]. Accepted: ' in text or 'got {"an": "object"}' in text


@pytest.mark.parametrize(
    ("tool", "args", "says"),
    [
        ("list", {"limit": 1000}, "- `limit`: Input should be less than or equal to 200; got "
         "1000. Accepted: an integer from 1 to 200 (default 20)."),
        ("output", {"stream": "both!"}, "Accepted: one of \"stdout\", \"stderr\", \"both\" "
         "(default \"stdout\")."),
        ("execute", {"command": "true", "timeout_s": -5}, "- `timeout_s`: Input should be greater "
         "than 0; got -5. Accepted: a finite number greater than 0, or null (omit it for the "
         "default)."),
        ("execute", {"command": "true", "labels": ["ok", 7]}, "- `labels[1]`: Input should be a "
         "valid string; got 7. Accepted: a list of strings of at most 64 characters (at most 64 "
         "items) (default [])."),
        ("execute", {"command": "true", "env": {"A": 1}}, '- `env["A"]`: Input should be a valid '
         "string; got 1. Accepted: an object whose values are strings, or null"),
        ("list", {"status": "done"}, "Accepted: one of \"queued\", \"running\", \"completed\", "
         "\"failed\", \"killed\", \"timed_out\", or null (omit it for the default)."),
    ],
)  # fmt: skip
def test_argument_error_examples(
    wire: WireServer, jobs: dict[str, str], tool: str, args: dict[str, Any], says: str
) -> None:
    text = tool_error_text(wire.call(tool, **{**_base(tool, jobs), **args}))
    assert text is not None and says in text, text
