"""The command policy against two corpora (``policy_corpus.py``): everyday developer commands,
where the false-refusal rate must stay at or under 2%, and bypass attempts grouped by class,
which must all be refused. Also: every everyday command typed into a shell job is accepted."""

from __future__ import annotations

import pytest

from mcp_background_job.policy import Policy, ShellInput

from .policy_corpus import ADVERSARIAL, EVERYDAY, HOME, JOB_ENV, PROJECT

DENY = Policy.from_patterns()
MAX_FALSE_REFUSALS = 0.02


def _check(command: str) -> str:
    verdict = DENY.check(command, cwd=PROJECT, home=HOME, env=JOB_ENV)
    return "" if verdict.allowed else f"{verdict.rule}: {verdict.matched[:80]}"


def test_everyday_corpus_is_big_and_distinct() -> None:
    assert len(EVERYDAY) >= 300
    assert len(set(EVERYDAY)) == len(EVERYDAY)


def test_false_refusal_rate_of_everyday_commands() -> None:
    refused = {c: why for c in EVERYDAY if (why := _check(c))}
    rate = len(refused) / len(EVERYDAY)
    shown = "\n".join(f"  {c!r}: {why}" for c, why in refused.items())
    assert rate <= MAX_FALSE_REFUSALS, (
        f"{len(refused)} of {len(EVERYDAY)} everyday commands refused ({rate:.1%}):\n{shown}"
    )


def test_everyday_commands_typed_into_a_shell_are_accepted() -> None:
    refused = []
    for command in EVERYDAY:
        if _check(command):
            continue  # refused as a job too: counted above
        shell = ShellInput(DENY, cwd=PROJECT, home=HOME, env=JOB_ENV)
        verdict = shell.check(command + "\n", eof=False)
        if not verdict.allowed:
            refused.append(f"  {command!r}: {verdict.rule}")
    assert len(refused) / len(EVERYDAY) <= MAX_FALSE_REFUSALS, "\n".join(refused)


CASES = [(cls, c) for cls, commands in ADVERSARIAL.items() for c in commands]


def test_adversarial_corpus_is_big() -> None:
    assert len(CASES) >= 600
    for cls, commands in ADVERSARIAL.items():
        assert len(commands) >= 10, cls


@pytest.mark.parametrize(
    ("cls", "command"), CASES, ids=[f"{cls}-{i}" for i, (cls, _c) in enumerate(CASES)]
)
def test_bypass_is_refused(cls: str, command: str) -> None:
    verdict = DENY.check(command, cwd=PROJECT, home=HOME, env=JOB_ENV)
    assert not verdict.allowed, f"{cls}: allowed {command[:200]!r} ({verdict.rule})"
    assert verdict.message.startswith("Refused")
