"""What may run: allow and deny rules over every simple command of a command line.

Import rule: pure modules only, ``shellparse`` and this module's own parts (layer ``pure`` in
``tests/test_layers.py``); ``config`` must not import it.

A guardrail against mistakes and obvious abuse, not a sandbox: a program can do anything its
code says (``python -c``, a script file, a Makefile), and a deny list cannot see that. The real
boundary is ``isolation`` (see ``isolation.py``). What this module promises:

- every simple command the shell would run is checked, including those inside pipelines, lists,
  substitutions, literal ``bash -c``/``eval`` payloads, wrappers and scripts written earlier in
  the same line (see ``shellparse``);
- names are normalized (``/bin/rm``, ``\\rm`` and ``r''m`` are all ``rm``); a name computed at
  run time is refused as unverifiable;
- paths are judged by what they expand to (globs, ``..``, ``~`` in every spelling, variables,
  the cwd reached with ``cd``, ``/proc/self/root``, symlinks made earlier in the line), options
  by what GNU tools accept (``-rf``, ``--recu``);
- deny wins over allow; in allow-list mode whatever no allow rule matches is refused;
- what the parser cannot vouch for is refused in allow-list mode, and in deny-list mode refused
  or allowed with an audit record (``policy_unparseable``) -- never silently allowed; a command
  over the analysis limits is always refused.

Patterns (``policy_allow``/``policy_deny``) are globs over a simple command written as
``name arg1 arg2...`` (``git *``, ``rm -rf /*``), or ``re:`` + a regular expression that must
match that whole line.

The work is split by concern: ``patterns`` (allow/deny patterns), ``verdict``, ``policyfs``
(paths and options), ``policyrules`` (the built-in rules), ``policyeffects`` (what commands do
to the file system, between lines), ``shellinput`` (input typed into a shell job); this module
is ``Policy``, which runs them over every simple command of a line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from .patterns import Pattern, PatternError, compile_pattern
from .policyeffects import ShellState, _apply_effects
from .policyfs import _Paths
from .policyrules import BUILTIN_RULES, BuiltinRule, _Env, _programs_run
from .shellinput import ShellInput, reads_commands_from_stdin, shell_input_for
from .shellparse import (
    MAX_COMMAND_CHARS,
    MAX_CPU_S,
    Analysis,
    Problem,
    Scope,
    SimpleCommand,
    analyse,
    inline_code,
)
from .verdict import Decision, Verdict

#: What other modules and tests import from here (the policy's public surface stays in one place).
__all__ = [
    "BUILTIN_RULES",
    "BuiltinRule",
    "Decision",
    "Pattern",
    "PatternError",
    "Policy",
    "ShellInput",
    "ShellState",
    "Verdict",
    "compile_pattern",
    "reads_commands_from_stdin",
    "shell_input_for",
]


_MAX_SCRIPT_DEPTH = 4


@dataclass(frozen=True, slots=True)
class Policy:
    mode: Literal["deny-list", "allow-list"] = "deny-list"
    allow: tuple[Pattern, ...] = ()
    deny: tuple[Pattern, ...] = ()
    builtin: bool = True
    unparseable: Literal["refuse", "allow-with-audit"] = "refuse"

    @classmethod
    def from_patterns(
        cls,
        *,
        mode: Literal["deny-list", "allow-list"] = "deny-list",
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        builtin: bool = True,
        unparseable: Literal["refuse", "allow-with-audit"] = "refuse",
    ) -> Policy:
        return cls(
            mode=mode,
            allow=tuple(compile_pattern(p) for p in allow),
            deny=tuple(compile_pattern(p) for p in deny),
            builtin=builtin,
            unparseable=unparseable,
        )

    def describe(self) -> dict[str, object]:
        """The policy as recorded in the audit log at start-up (no secrets in it)."""
        return {
            "mode": self.mode,
            "allow": [p.source for p in self.allow],
            "deny": [p.source for p in self.deny],
            "builtin_deny": self.builtin,
            "builtin_rules": [r.id for r in BUILTIN_RULES] if self.builtin else [],
            "unparseable": self.unparseable,
        }

    def digest(self) -> str:
        blob = json.dumps(self.describe(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def check(
        self,
        command: str,
        cwd: str | None = None,
        home: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Verdict:
        """Decide about a whole command line run in ``cwd``. Never raises for any input string.

        ``cwd`` and ``cd DIR`` earlier in the line resolve relative paths (``cd / && rm -rf *``);
        ``home`` is the home directory, protected like ``~``. ``env``: the job's environment
        (isolation's ``env_allow`` plus the caller's ``env``); with it, ``"$PYTHON" -m pytest``
        is judged as what ``$PYTHON`` holds, and a variable in neither the line nor ``env`` is
        empty, as it is for the job. Without it, such a variable is unknown.
        """
        verdict, _ = self.check_state(command, ShellState.initial(cwd=cwd, home=home, env=env))
        return verdict

    def check_state(self, command: str, state: ShellState) -> tuple[Verdict, ShellState]:
        """``check`` from a known shell state; also returns the state after the line."""
        return self._check(command, state.copy(), 0)

    def _check(self, command: str, state: ShellState, depth: int) -> tuple[Verdict, ShellState]:
        analysis = analyse(command, state.scope)
        state.scope = analysis.scope
        if not analysis.commands and not analysis.problems and not analysis.bombs:
            return Verdict("allowed", "empty", "", "nothing to run"), state
        limit = next((p for p in analysis.problems if p.is_limit), None)
        if limit is not None:
            return _limit_verdict(limit), state
        env = _Env(_Paths(state.homes, state.effects), state.effects)
        for cmd in analysis.commands:
            if analysis.over_time():
                what = f"more than {MAX_CPU_S} s of work to check"
                return _limit_verdict(Problem("too-complex", what, cmd.source[:200])), state
            for pattern in self.deny:
                if pattern.matches(cmd):
                    return _refuse(f"deny:{pattern.source}", cmd.line, cmd), state
            if self.builtin:
                for rule in BUILTIN_RULES:
                    hit = rule.check(cmd, env)
                    if hit is not None:
                        return _refuse(rule.id, hit, cmd, rule.description), state
                found = self._scripts_run(cmd, env, state, depth)
                if found is not None:
                    return found, state
            _apply_effects(cmd, env)
        if self.builtin:
            bomb = _fork_bomb(analysis)
            if bomb is not None:
                return _refuse("builtin:fork-bomb", bomb, None, "a process that keeps "
                               "starting copies of itself"), state  # fmt: skip
        if self.mode == "allow-list":
            return self._allow_list(analysis), state
        if analysis.problems:
            return self._unverifiable(analysis.problems[0]), state
        return Verdict("allowed", "default:deny-list", "", "no deny rule matches"), state

    def _scripts_run(
        self, cmd: SimpleCommand, env: _Env, state: ShellState, depth: int
    ) -> Verdict | None:
        """A script written earlier in the line (``echo ... > x.sh``, ``cat > x.sh <<EOF``)
        and then run (``sh x.sh``, ``./x.sh``, ``. x.sh``): its text is checked too."""
        for label, path in _programs_run(cmd, env):
            text = env.effects.scripts.get(path)
            if text is None:
                continue
            first = text.lstrip().split("\n", 1)[0]
            if first.startswith("#!") and not any(s in first for s in ("sh", "bash", "zsh",
                                                                       "ksh")):  # fmt: skip
                continue  # another language: code, not checked (like `python x.py`)
            if depth >= _MAX_SCRIPT_DEPTH:
                return _refuse("builtin:fork-bomb", f"{label} (a script that runs itself)", cmd,
                               "a process that keeps starting copies of itself")  # fmt: skip
            inner = ShellState(Scope.initial(cwd=cmd.cwd, home=state.scope.home),
                               env.effects, state.homes)  # fmt: skip
            inner.scope.env_known = state.scope.env_known
            if state.scope.env_known:
                inner.scope.vars = {k: v for k, v in state.scope.vars.items()}
                inner.scope.positional = ()
            verdict, _ = self._check(text, inner, depth + 1)
            if not verdict.allowed:
                return replace(
                    verdict,
                    message=verdict.message.replace(
                        "Refused by", f"Refused (in {path}, written earlier in the line) by", 1
                    ),
                )
        return None

    def _unverifiable(self, p: Problem) -> Verdict:
        rule_id = f"unverifiable:{p.kind}"
        if self.unparseable == "refuse":
            return Verdict(
                "refused", rule_id, p.part[:200],
                f"Refused by rule {rule_id}: the command cannot be fully verified "
                f"({p.detail}: {p.part[:200]!r}). Nothing was run."
                " Write it without that construct (a literal command instead of a variable or"
                " $(...) as the command, a script file instead of a dynamic payload).",
            )  # fmt: skip
        return Verdict("allowed", rule_id, p.part[:200], "allowed (recorded in the audit log)",
                       audit_note=f"{p.detail}: {p.part[:200]}")  # fmt: skip

    def _allow_list(self, analysis: Analysis) -> Verdict:
        if analysis.problems:
            p = analysis.problems[0]
            return Verdict(
                "refused", f"unverifiable:{p.kind}", p.part[:200],
                f"Refused by rule unverifiable:{p.kind} (allow-list mode): the command cannot be "
                f"fully verified ({p.detail}: {p.part[:200]!r}). Use plain commands that the "
                "allow rules cover.",
            )  # fmt: skip
        for cmd in analysis.commands:
            rule = next((p for p in self.allow if p.matches(cmd)), None)
            if rule is None:
                return Verdict(
                    "refused", "allow-list:no-match", cmd.line[:200],
                    f"Refused by rule allow-list:no-match: {cmd.line[:200]!r} matches no allow "
                    "rule (allow-list mode; "
                    f"allowed: {', '.join(p.source for p in self.allow)}).",
                )  # fmt: skip
            flag = inline_code(cmd)
            if flag is not None and not _names_flag(rule, flag):
                return Verdict(
                    "refused", "allow-list:inline-code", cmd.line[:200],
                    f"Refused by rule allow-list:inline-code: {cmd.name} {flag} runs inline code "
                    "that no rule can verify; the "
                    f"allow rule {rule.source!r} does not name {flag}. Put the code in a file, or "
                    f"add an allow rule such as '{cmd.name} {flag} *'.",
                )  # fmt: skip
        return Verdict("allowed", "allow-list:match", "", "every command matches an allow rule")


def _limit_verdict(p: Problem) -> Verdict:
    rule = f"limit:{p.kind}"
    return Verdict(
        "refused", rule, p.part[:200],
        f"Refused by rule {rule}: the command is too big or too complex to check ({p.detail}). "
        f"Nothing was run. Put long or generated command lines in a script file and run that "
        f"(the limit is {MAX_COMMAND_CHARS} characters, with bounded nesting and size).",
    )  # fmt: skip


def _fork_bomb(analysis: Analysis) -> str | None:
    """A function that reaches itself through a call that forks (a pipe, ``&``, a subshell,
    ``$(...)``, ``<(...)``), an endless loop that starts processes in the background, a
    payload that runs itself."""
    if analysis.bombs:
        return analysis.bombs[0]
    graph = analysis.functions
    checked = 0
    for name, calls in graph.items():
        for callee, forked in calls:
            if not forked or callee not in graph:
                continue
            checked += 1
            if checked > 200:
                return None
            seen = {callee}
            todo = [callee]
            while todo:
                cur = todo.pop()
                if cur == name:
                    return f"{name}() {{ ... {callee} ... }} (calls itself in a new process)"
                for nxt, _f in graph.get(cur, ()):
                    if nxt in graph and nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
    return None


def _names_flag(pattern: Pattern, flag: str) -> bool:
    src = pattern.source[3:] if pattern.source.startswith("re:") else pattern.source
    return flag in src.split() or (pattern.source.startswith("re:") and flag in src)


def _refuse(rule: str, hit: str, cmd: SimpleCommand | None, why: str = "") -> Verdict:
    """A refusal naming the rule, the simple command as written, and what in it matched."""
    where = f" (inside {' > '.join(cmd.via)})" if cmd is not None and cmd.via else ""
    matched = (cmd.source if cmd is not None else hit)[:200]
    what = f" ({why})" if why else ""
    detail = f" [{hit[:200]}]" if cmd is not None and hit and hit != matched else ""
    return Verdict(
        "refused",
        rule,
        matched,
        f"Refused by policy rule {rule}{what}: {matched!r}{detail}{where}. Nothing was run. "
        "If this is intended, run a narrower command (for example a relative path inside the "
        "project), or ask the user to change the server's policy settings.",
    )
