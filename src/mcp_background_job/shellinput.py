"""Input typed into a shell job (``interact`` on ``bash``, ``sh`` ...): the policy applied
line by line to what the shell will read, with unfinished constructs (open quotes, heredocs,
``if`` ... ``fi``) held until complete, and history expansion and ``fc`` refused."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .policyeffects import ShellState
from .shellparse import (
    Scope,
    analyse,
)
from .verdict import Verdict

if TYPE_CHECKING:  # policy imports this module to re-export it
    from .policy import Policy


# --- input typed into a shell ------------------------------------------------------------------

#: Unfinished input (an open quote, heredoc, ``if`` ... ) kept per job; more is refused.
_PENDING_MAX = 64 * 1024


def reads_commands_from_stdin(command: str, env: Mapping[str, str] | None = None) -> bool:
    """True when the job runs something that takes commands from its stdin (a shell by any name
    without a program: ``bash``, ``sh -i``, ``bash /dev/stdin``, ``sh /proc/self/fd/0``,
    ``script``, ``su``, ``sudo -s``, ``xargs sh -c``, ...): what is typed into it with
    ``interact`` is then a command line, checked like one. A command line the analysis cannot
    fully understand counts as one (fail closed)."""
    analysis = analyse(command, Scope.initial(env=dict(env) if env is not None else None))
    return bool(analysis.stdin_readers) or bool(analysis.problems)


def shell_input_for(
    policy: Policy,
    command: str,
    *,
    cwd: str | None,
    home: str | None,
    env: Mapping[str, str] | None,
    pty: bool,
) -> ShellInput | None:
    """The ``ShellInput`` that checks what is typed into a job running ``command``, or None
    when nothing in it reads commands from stdin. It starts in the cwd the shell starts in
    (``cd / && bash``)."""
    scope = Scope.initial(cwd=cwd, home=home, env=dict(env) if env is not None else None)
    analysis = analyse(command, scope)
    if not analysis.stdin_readers and not analysis.problems:
        return None
    return ShellInput(policy, cwd=analysis.reader_cwd or cwd, home=home, env=env, pty=pty)


#: On a terminal these edit or complete the line (tab included).
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
#: History expansion: `!!`, `!-1`, `!rm`, `!?x?`, `!#` (not `! cmd`, `!=`, `!(`, `$!`,
#: `${!x}`), and `^old^new` at the start of a line.
_HISTORY = re.compile(r"(?<![\\${])![^\s=(\"]|^\s*\^[^^\n]*\^", re.M)
#: `fc` (and ksh/zsh's `r`) re-run earlier input.
_FC = re.compile(r"(^|[;&|({]\s*|\b(then|do|else)\s+)(fc|r)(\s|;|$)", re.M)
_SINGLE_QUOTED = re.compile(r"'[^'\n]*'")


class ShellInput:
    """What has been typed into one shell job, and what the shell holds unfinished.

    The shell runs input when a line (or a multi-line construct) is complete. Each ``interact``
    input is checked with what came before as the shell will read it: the unfinished text plus
    the new complete lines (``rm -rf \\`` then ``/`` is ``rm -rf /``), checked at once when the
    result is complete and, while it is not, completed with the closers it lacks (a quote, a
    ``fi``, the heredoc's end) so what it will run once closed is checked now. It is also
    checked as if the shell were at a fresh prompt (new text alone, each line alone), in case
    the shell's state is not what it seems. Variables, ``cd`` and files written by earlier
    lines are kept (``x=/`` then ``rm -rf $x``).

    Fail closed: when what was typed cannot be understood as complete commands or as a
    recognized unfinished construct, history expansion (``!!``, ``^a^b``, ``fc``), editing keys
    on a terminal, or too much unfinished input, the input is refused and says so.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        cwd: str | None = None,
        home: str | None = None,
        env: Mapping[str, str] | None = None,
        pty: bool = False,
    ) -> None:
        self.policy = policy
        self.state = ShellState.initial(cwd=cwd, home=home, env=env)
        self.pty = pty
        self.pending = ""  # complete lines the shell holds as an unfinished construct
        self.partial = ""  # text after the last newline: not yet a line
        self._plan: tuple[str, bool, str, str, ShellState] | None = None

    def check(self, text: str, *, eof: bool, keys: Sequence[bytes] = ()) -> Verdict:
        self._plan = None
        typed, eof = self._typed(text, keys, eof)
        if isinstance(typed, Verdict):
            return typed
        stream = self.partial + typed
        if eof:
            complete, rest = stream, ""
        else:
            head, nl, rest = stream.rpartition("\n")
            complete = head + nl
        if len(rest) > _PENDING_MAX or len(self.pending) + len(complete) > _PENDING_MAX:
            return _shell_refusal("shell-input:too-long", rest[:80] or complete[:80],
                                  f"more than {_PENDING_MAX} characters of unfinished input; "
                                  "send complete commands")  # fmt: skip
        if not complete:
            self._plan = (text, eof, self.pending, rest, self.state)
            return Verdict("allowed", "shell-input:incomplete-line", "", "no complete line yet")
        unquoted = _SINGLE_QUOTED.sub("''", complete)
        if (m := _HISTORY.search(unquoted)) is not None or (m := _FC.search(unquoted)):
            return _shell_refusal("shell-input:history-expansion", m.group(0).strip(),
                                  "history expansion and fc re-run earlier input in forms "
                                  "that cannot be checked; type the command itself")  # fmt: skip
        buffer = self.pending + complete
        verdict, new_state, done = self._judge(buffer, eof, self.state, strict=True)
        if not verdict.allowed:
            return verdict
        if self.pending:
            # what if the shell is at a fresh prompt after all: the new text alone, each line
            for chunk in (complete, *complete.splitlines(keepends=True)):
                if chunk.strip():
                    alone, _, _ = self._judge(chunk, eof, self.state, strict=False)
                    if not alone.allowed:
                        return alone
        self._plan = (text, eof, "" if done else buffer, rest, new_state if done else self.state)
        return verdict

    def accept(self, text: str, *, eof: bool, keys: Sequence[bytes] = ()) -> None:
        """The input was written to the job: the shell's state moves on."""
        plan = self._plan
        if plan is None or plan[0] != text or plan[1] != eof:
            if self.check(text, eof=eof, keys=keys).allowed is False or self._plan is None:
                return
            plan = self._plan
        _t, _e, self.pending, self.partial, self.state = plan
        self._plan = None

    def _typed(self, text: str, keys: Sequence[bytes], eof: bool) -> tuple[str | Verdict, bool]:
        """The text the shell receives, with keys as the bytes they send."""
        out = text
        for key in keys:
            if key in (b"\r", b"\n"):
                out += "\n"
            elif key == b"\x04" and not self.pty:
                eof = True
            elif key in (b"\x03", b"\x1c", b"\x1a", b"\x04"):
                # signals (or ends the input of) the foreground program; at a prompt the shell
                # drops the unfinished line. Nothing runs: the state kept is the worst case.
                continue
            else:
                return _shell_refusal("shell-input:editing-keys", repr(key)[2:-1],
                                      "keys other than Enter change what the shell runs "
                                      "(history, completion, line editing)"), eof  # fmt: skip
        if self.pty:
            out = out.replace("\r\n", "\n").replace("\r", "\n")
            bad = _CONTROL.search(out)
            if bad is not None:
                return _shell_refusal("shell-input:editing-keys", repr(bad.group(0))[1:-1],
                                      "on a terminal, control characters and tabs edit the line "
                                      "or complete it; send plain text"), eof  # fmt: skip
        elif "\0" in out:
            return _shell_refusal("shell-input:editing-keys", "\\x00", "a NUL byte"), eof
        return out, eof

    def _judge(
        self, text: str, eof: bool, state: ShellState, *, strict: bool
    ) -> tuple[Verdict, ShellState, bool]:
        """(verdict, state after, complete?) of ``text`` typed into a shell in ``state``.

        ``strict``: this is what the shell holds (refuse what cannot be understood); else a
        what-if (the shell at a fresh prompt), where text bash would reject runs nothing."""
        verdict, after = self.policy.check_state(text, state)
        stack, wants_more = _open_constructs(text)
        unfinished = bool(stack) or wants_more
        if verdict.rule != "unverifiable:parse-error":
            if unfinished and strict and verdict.allowed:
                # tree-sitter sees complete commands where bash would wait for more: whatever
                # comes next, the two disagree about what it means
                return _unknown_state(text), state, False
            return verdict, after, True
        if not unfinished:  # a syntax error: the shell rejects the whole construct
            if strict:
                return verdict, state, True
            return Verdict("allowed", "shell-input:alone", "", "not valid alone"), state, True
        if not strict:  # at a fresh prompt, an unfinished construct runs nothing yet
            return Verdict("allowed", "shell-input:alone", "", "unfinished alone"), state, True
        for completed in _completions(text):
            v, _after = self.policy.check_state(completed, state)
            if v.rule == "unverifiable:parse-error":
                continue
            if not v.allowed:
                return v, state, False
            done = eof  # at the end of input the shell drops the unfinished construct
            return (Verdict("allowed", "shell-input:unfinished", text[-200:],
                            "allowed: an unfinished construct (checked as completed)",
                            audit_note=f"unfinished: {text[-200:]}"), state, done)  # fmt: skip
        if strict and not eof:
            return _unknown_state(text), state, False
        return Verdict("allowed", "shell-input:alone", "", "not valid alone"), state, True


def _unknown_state(text: str) -> Verdict:
    return _shell_refusal(
        "shell-input:unknown-state",
        text[-120:],
        "what was typed into this shell cannot be understood as complete commands or as an "
        "unfinished quote, heredoc or compound command, so what the shell runs next cannot be "
        "checked. Send whole commands in one input, or end this shell (eof or kill) and start "
        "a new one",
    )


def _shell_refusal(rule: str, matched: str, why: str) -> Verdict:
    return Verdict(
        "refused", rule, matched[:200],
        f"Refused by rule {rule}: {why}. Nothing was written.",
    )  # fmt: skip


_KEYWORD_OPEN = {"if": "if", "case": "case", "for": "loop", "while": "loop", "until": "loop",
                 "select": "loop", "{": "{", "[[": "[["}  # fmt: skip
_KEYWORD_CLOSE = {"fi": "if", "esac": "case", "done": "loop", "}": "{", "]]": "[["}
_CMD_START = frozenset({"then", "do", "else", "elif", "if", "while", "until", "!", "time", "{"})


def _open_constructs(text: str) -> tuple[list[str], bool]:
    """A small bash lexer: the constructs still open at the end of ``text`` (innermost last:
    quotes, ``$(``, ``(``, ``${``, ``if``/``case``/loops, ``{``, heredocs as ``<<DELIM``), and
    whether the input ends asking for more (a trailing backslash, ``|``, ``&&``, ``||``).

    One character loop with its stack (~140 lines): a lexer's states share the position and the
    stack, and reads best as one loop."""
    stack: list[str] = []
    pending: list[str] = []  # heredoc delimiters that start at the next newline
    i, n = 0, len(text)
    cmd_pos = True
    last_op = ""
    while i < n:
        top = stack[-1] if stack else ""
        ch = text[i]
        if top.startswith("<<"):
            j = text.find("\n", i)
            line = text[i:] if j < 0 else text[i:j]
            delim = top[2:]
            if (line.lstrip("\t") if delim.startswith("-") else line) == delim.lstrip("-"):
                stack.pop()
            i = n if j < 0 else j + 1
            continue
        if top == "'":
            i = i + 1
            if ch == "'":
                stack.pop()
            continue
        if top in ('"', "$'"):
            if ch == "\\":
                i += 2
                continue
            if (top == "$'" and ch == "'") or (top == '"' and ch == '"'):
                stack.pop()
                i += 1
                continue
            if top == '"':
                if text.startswith("$(", i):
                    stack.append("$(")
                    i += 2
                    cmd_pos = True
                    continue
                if text.startswith("${", i):
                    stack.append("${")
                    i += 2
                    continue
                if ch == "`":
                    stack.append("`")
            i += 1
            continue
        if top == "${":
            if ch == "}":
                stack.pop()
            elif ch in "'\"":
                stack.append(ch)
            elif ch == "\\":
                i += 1
            i += 1
            continue
        # code
        if ch == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                last_op = "\\"
            i += 2
            continue
        if ch in " \t":
            i += 1
            continue
        if ch == "\n":
            if pending:
                stack.extend(f"<<{d}" for d in reversed(pending))
                pending = []
            cmd_pos = True
            if last_op not in ("|", "&&", "||", "\\", "|&"):
                last_op = ""
            i += 1
            continue
        if ch == "#" and (i == 0 or text[i - 1] in " \t\n;&|()"):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        last_op = ""
        if ch == "'":
            stack.append("'")
        elif text.startswith("$'", i):
            stack.append("$'")
            i += 1
        elif ch == '"':
            stack.append('"')
        elif ch == "`":
            if top == "`":
                stack.pop()
            else:
                stack.append("`")
        elif text.startswith("$((", i):
            stack.append("$((")
            i += 2
        elif text.startswith("$(", i):
            stack.append("$(")
            i += 1
            cmd_pos = True
        elif text.startswith("${", i):
            stack.append("${")
            i += 1
        elif text.startswith("))", i) and top == "$((":
            stack.pop()
            i += 1
        elif ch == "(":
            stack.append("(")
            cmd_pos = True
        elif ch == ")":
            if top in ("(", "$("):
                stack.pop()
        elif text.startswith("<<", i) and not text.startswith("<<<", i):
            m = re.match(r"<<(-?)\s*(['\"]?)([^\s'\";&|<>()]+)\2", text[i:])
            if m is not None:
                pending.append(("-" if m.group(1) else "") + m.group(3))
                i += m.end()
                continue
        elif ch in ";&|":
            op = text[i : i + 2] if text[i : i + 2] in ("&&", "||", ";;", "|&") else ch
            last_op = op if op in ("|", "&&", "||", "|&") else ""
            cmd_pos = True
            i += len(op)
            continue
        else:
            m = re.match(r"[^\s;&|()<>'\"`$\\]+", text[i:])
            if m is not None:
                word = m.group(0)
                if cmd_pos and word in _KEYWORD_OPEN:
                    stack.append(_KEYWORD_OPEN[word])
                elif (cmd_pos and _KEYWORD_CLOSE.get(word) == top) or (word, top) == ("]]", "[["):
                    stack.pop()
                cmd_pos = word in _CMD_START
                i += m.end()
                continue
        i += 1
    if pending:
        stack.extend(f"<<{d}" for d in reversed(pending))
    return stack, last_op in ("|", "&&", "||", "\\", "|&")


_CLOSERS = {
    "'": ["'"], '"': ['"'], "$'": ["'"], "`": ["`", ":`"], "(": [")", "\n:\n)"],
    "$(": [")", "\n:\n)"], "$((": ["))", "0))"], "${": ["}"], "{": ["\n}", "\n:\n}"],
    "[[": [" ]]", " x ]]"],
    "if": ["\nfi", "\n:\nfi", "\nthen :\nfi", "; then :; fi"],
    "loop": ["\ndone", "\n:\ndone", "\ndo :\ndone", "; do :; done"],
    "case": ["\nesac", "\n;;\nesac", " in *) :;; esac", "\n*) :;;\nesac"],
}  # fmt: skip


def _completions(text: str) -> list[str]:
    """``text`` completed with what the lexer says it lacks, in a few variants (the right
    ``fi`` depends on whether ``then`` came yet); tree-sitter decides which one parses."""
    stack, wants_more = _open_constructs(text)
    base = text
    if base.endswith("\\\n"):
        base = base[:-2] + "\n"
    if wants_more and not base.rstrip().endswith("\\"):
        base = base.rstrip("\n") + " :\n"
    if not stack:
        return [base] if base != text else []
    out: list[str] = []
    for variant in range(4):
        closing = ""
        for item in reversed(stack):
            if item.startswith("<<"):
                closing += ("" if (base + closing).endswith("\n") else "\n") + item[2:].lstrip(
                    "-") + "\n"  # fmt: skip
                continue
            options = _CLOSERS.get(item, [""])
            closing += options[min(variant, len(options) - 1)]
        candidate = base + closing + "\n"
        if candidate not in out:
            out.append(candidate)
    return out
