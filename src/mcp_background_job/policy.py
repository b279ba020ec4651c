"""What may run: allow and deny rules over every simple command of a command line.

A guardrail against mistakes and obvious abuse, not a sandbox: a program can do anything its
code says (``python -c``, a script file, a Makefile), and a deny list cannot see that. The real
boundary is ``isolation`` (see ``isolation.py``). What this module promises:

- every simple command the shell would run is checked, including those inside pipelines, lists,
  substitutions, literal ``bash -c``/``eval`` payloads and wrappers (see ``shellparse``);
- names are normalized (``/bin/rm``, ``\\rm`` and ``r''m`` are all ``rm``);
- deny wins over allow; in allow-list mode whatever no allow rule matches is refused;
- what the parser cannot vouch for is refused in allow-list mode, and in deny-list mode refused
  or allowed with an audit record (``policy_unparseable``) -- never silently allowed.

Patterns (``policy_allow``/``policy_deny``) are globs over a simple command written as
``name arg1 arg2...`` (``git *``, ``rm -rf /*``), or ``re:`` + a regular expression that must
match that whole line.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from .shellparse import (
    SHELLS,
    Analysis,
    SimpleCommand,
    Word,
    analyse,
    inline_code,
    reads_program_from_stdin,
)

Decision = Literal["allowed", "refused"]


class PatternError(ValueError):
    """A configured pattern cannot be compiled."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy's answer: ``rule`` names what decided, ``matched`` the part of the command."""

    decision: Decision
    rule: str
    matched: str
    message: str
    audit_note: str | None = None  # allowed, but something could not be verified

    @property
    def allowed(self) -> bool:
        return self.decision == "allowed"


@dataclass(frozen=True, slots=True)
class Pattern:
    source: str
    regex: re.Pattern[str]

    def matches(self, cmd: SimpleCommand) -> bool:
        return any(self.regex.fullmatch(line) for line in _lines(cmd))


def compile_pattern(source: str) -> Pattern:
    """Compile an allow/deny pattern; raise ``PatternError`` (a ``ValueError``) when malformed."""
    if not source.strip():
        raise PatternError("an empty pattern would match nothing useful")
    if source.startswith("re:"):
        try:
            return Pattern(source, re.compile(source[3:], re.S))
        except re.error as exc:
            raise PatternError(
                f"pattern {source!r} is not a valid regular expression: {exc}"
            ) from exc
    return Pattern(source, re.compile(fnmatch.translate(source.strip()), re.S))


def _lines(cmd: SimpleCommand) -> list[str]:
    lines = [cmd.line]
    if any(a.if_empty is not None for a in cmd.args):
        lines.append(" ".join([cmd.name, *(a.if_empty if a.if_empty is not None else a.text
                                           for a in cmd.args)]))  # fmt: skip
    return lines


# --- built-in deny rules -------------------------------------------------------------------------

_SYSTEM_DIRS = frozenset(
    {"bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "media", "mnt",
     "opt", "proc", "root", "run", "sbin", "srv", "sys", "usr", "var", "snap", "nix",
     "Applications", "Library", "System", "Users", "Volumes", "private"}
)  # fmt: skip
_HOME_FORMS = ("~", "$HOME", "${HOME}")
_BLOCK_DEVICE = re.compile(
    r"^/dev/(sd[a-z]|hd[a-z]|vd[a-z]|xvd[a-z]|nvme\d|mmcblk\d|md\d|dm-\d|loop\d|mapper/|disk/|"
    r"sr\d|fd\d)"
)
_DOWNLOADERS = frozenset(
    {"curl", "wget", "fetch", "aria2c", "http", "https", "lwp-request", "nc", "ncat", "netcat",
     "socat", "tftp", "ftp", "scp", "rsync"}
)  # fmt: skip
#: Programs that turn data into something else: piping their output into a shell runs code
#: nobody can read in the command line (``echo cm0gLXJmIC8= | base64 -d | sh``).
_DECODERS = frozenset(
    {"base64", "base32", "xxd", "openssl", "uudecode", "gpg", "rev", "tr", "gunzip", "zcat", "xz",
     "bzip2", "unzip", "python3", "python", "perl"}
)  # fmt: skip
_SHUTDOWN = frozenset({"shutdown", "reboot", "halt", "poweroff", "telinit", "kexec"})
_MKFS = re.compile(r"^(mkfs(\..+)?|mke2fs|mkswap|wipefs|mkntfs|mkdosfs|blkdiscard|sgdisk)$")


_BRACE = re.compile(r"\{([^{}]*,[^{}]*)\}")


def _brace_expand(text: str, limit: int = 64) -> list[str]:
    """``/{usr,etc}`` -> ``/usr``, ``/etc`` (bash expands unquoted braces; bounded)."""
    out: list[str] = []
    todo = [text]
    while todo and len(out) + len(todo) <= limit:
        cur = todo.pop()
        m = _BRACE.search(cur)
        if m is None:
            out.append(cur)
            continue
        todo.extend(cur[: m.start()] + alt + cur[m.end() :] for alt in m.group(1).split(","))
    return out + todo


def _paths(word: Word) -> list[str]:
    """The word's possible values, lexically normalized, for path checks."""
    out = []
    for v in (x for value in word.values for x in _brace_expand(value)):
        v = v.strip()
        if not v:
            continue
        for home in _HOME_FORMS:
            if v == home or v.startswith(home + "/"):
                v = "~" + v[len(home) :]
        if v.startswith("/") or v.startswith("~"):
            head, rest = ("~", v[1:]) if v.startswith("~") else ("", v)
            norm = posixpath.normpath(rest or "/") if rest else ""
            if norm.startswith("//"):
                norm = "/" + norm.lstrip("/")
            v = head + (norm if norm != "." else "")
        out.append(v)
    return out


def _dangerous_target(word: Word) -> str | None:
    """``/``, ``/*``, a top-level system directory, the home directory, or everything in one."""
    for p in _paths(word):
        bare = p.rstrip("/") or "/"
        if bare in ("/", "~", "/*", "~/*", "/.*", "~/.*", "*/", "/..", "~/.."):
            return word.text
        if re.fullmatch(r"~[\w.-]+(/\*|/\.\*)?", bare):
            return word.text  # another user's home directory: ~root, ~alice/*
        parts = [x for x in bare.split("/") if x]
        if bare.startswith("/") and len(parts) == 1:
            return word.text  # a top-level directory or glob: /usr, /home, /x*, /.git
        if (
            bare.startswith("/")
            and len(parts) == 2
            and parts[0] in _SYSTEM_DIRS
            and parts[1] in ("*", ".*", "*/")
        ):
            return word.text
    return None


def _flags(cmd: SimpleCommand) -> tuple[set[str], list[Word]]:
    """Short flags (letters) and long options, and the operands (after ``--`` too)."""
    flags: set[str] = set()
    operands: list[Word] = []
    ended = False
    for a in cmd.args:
        t = a.text
        if ended or not t.startswith("-") or t == "-":
            operands.append(a)
        elif t == "--":
            ended = True
        elif t.startswith("--"):
            flags.add(t.split("=", 1)[0])
        else:
            flags.update(t[1:])
    return flags, operands


def _rule_unknown_target(cmd: SimpleCommand) -> str | None:
    """Recursive removal/permission change of paths that only a command's output will name."""
    if cmd.name not in ("rm", "chmod", "chown", "chgrp", "shred"):
        return None
    flags, operands = _flags(cmd)
    if not ({"r", "R", "--recursive"} & flags):
        return None
    for w in operands:
        if w.substituted and not w.text.endswith("/<found>"):
            return f"{cmd.name} -r {w.text[:80]}"
    return None


def _rule_rm_root(cmd: SimpleCommand) -> str | None:
    if cmd.name not in ("rm", "rmdir", "srm", "shred", "unlink"):
        return None
    flags, operands = _flags(cmd)
    if cmd.name == "rm" and not ({"r", "R", "--recursive"} & flags):
        return None
    if "--no-preserve-root" in flags:
        return "--no-preserve-root"
    for w in operands:
        hit = _dangerous_target(w)
        if hit is not None:
            return f"{cmd.name} {hit}"
    return None


def _rule_chmod_root(cmd: SimpleCommand) -> str | None:
    if cmd.name not in ("chmod", "chown", "chgrp", "setfacl", "chattr"):
        return None
    flags, operands = _flags(cmd)
    if not ({"R", "--recursive"} & flags):
        return None
    for w in operands:
        hit = _dangerous_target(w)
        if hit is not None:
            return f"{cmd.name} -R ... {hit}"
    return None


def _rule_find_delete(cmd: SimpleCommand) -> str | None:
    if cmd.name != "find":
        return None
    words = [a.text for a in cmd.args]
    if "-delete" not in words:
        return None
    for a in cmd.args:
        if a.text.startswith("-") or a.text in ("(", "!"):
            break
        hit = _dangerous_target(a)
        if hit is not None:
            return f"find {hit} ... -delete"
    return None


def _rule_mkfs(cmd: SimpleCommand) -> str | None:
    return cmd.name if _MKFS.match(cmd.name) else None


def _is_block_device(word: Word) -> bool:
    return any(_BLOCK_DEVICE.match(v) for v in word.values)


def _rule_block_device(cmd: SimpleCommand) -> str | None:
    for w in cmd.writes:
        if _is_block_device(w):
            return f"> {w.text}"
    if cmd.name == "dd":
        for a in cmd.args:
            if a.text.startswith("of=") and _is_block_device(Word(a.text[3:])):
                return a.text
    if cmd.name in ("tee", "cp", "mv", "shred", "cat", "install", "pv", "ddrescue", "badblocks",
                    "truncate", "fallocate"):  # fmt: skip
        for a in cmd.args:
            if _is_block_device(a) and (cmd.name != "cat" or a is cmd.args[-1]):
                if cmd.name in ("cat", "pv"):
                    continue  # reading a device is fine
                if cmd.name == "badblocks" and not {"w", "n"} & _flags(cmd)[0]:
                    continue
                return f"{cmd.name} ... {a.text}"
    return None


def _rule_download_exec(cmd: SimpleCommand) -> str | None:
    """``curl ... | sh``, ``base64 -d | bash``, ``bash <(curl ...)``, ``sh -c "$(wget ...)"``."""
    runs_code = cmd.name in SHELLS or cmd.name in ("eval", "source", ".") or _is_interp(cmd.name)
    if not runs_code:
        return None
    if reads_program_from_stdin(cmd) and not cmd.stdin_script:
        for up in cmd.upstream:
            if up in _DOWNLOADERS or up in _DECODERS:
                return f"{up} | {cmd.name}"
    for a in cmd.args:
        for sub in a.substituted:
            if sub in _DOWNLOADERS or sub in _DECODERS:
                return f"{cmd.name} ... {a.text[:80]}"
    return None


def _is_interp(name: str) -> bool:
    return re.sub(r"[\d.]+$", "", name) in ("python", "perl", "ruby", "node", "php", "lua")


def _rule_shutdown(cmd: SimpleCommand) -> str | None:
    if cmd.name in _SHUTDOWN:
        return cmd.name
    args = [a.text for a in cmd.args]
    if cmd.name in ("init",) and args[:1] in (["0"], ["6"]):
        return f"init {args[0]}"
    if cmd.name == "systemctl" and {"poweroff", "reboot", "halt", "kexec", "suspend"} & set(args):
        return "systemctl " + next(a for a in args if a in ("poweroff", "reboot", "halt",
                                                            "kexec", "suspend"))  # fmt: skip
    for w in cmd.writes:
        if w.text in ("/proc/sysrq-trigger", "/proc/sys/kernel/sysrq"):
            return f"> {w.text}"
    if cmd.name == "kill" and args and args[-1] == "-1":
        return "kill -1 (every process)"
    if cmd.name == "kill" and args and args[-1] in ("1",):
        return "kill 1 (init)"
    return None


def _rule_unicode_name(cmd: SimpleCommand) -> str | None:
    raw = cmd.raw_name or cmd.name
    if not raw.isascii() or not raw.isprintable():
        return raw
    return None


@dataclass(frozen=True, slots=True)
class BuiltinRule:
    id: str
    description: str
    check: Callable[[SimpleCommand], str | None]
    paths: bool = False  # judges operands as paths: relative ones are resolved against the cwd


BUILTIN_RULES: tuple[BuiltinRule, ...] = (
    BuiltinRule("builtin:rm-root", "recursive removal of /, a top-level directory, ~ or $HOME",
                _rule_rm_root, paths=True),
    BuiltinRule("builtin:recursive-unknown-target", "recursive rm/chmod of paths produced at "
                "run time ($(...), xargs): they cannot be checked", _rule_unknown_target,
                paths=True),
    BuiltinRule("builtin:chmod-root", "recursive chmod/chown of / or a top-level directory",
                _rule_chmod_root, paths=True),
    BuiltinRule("builtin:find-delete-root", "find -delete from / or ~", _rule_find_delete,
                paths=True),
    BuiltinRule("builtin:mkfs", "creating a file system / wiping a device", _rule_mkfs),
    BuiltinRule("builtin:block-device-write", "writing to a block device", _rule_block_device),
    BuiltinRule("builtin:download-exec", "running downloaded or decoded code",
                _rule_download_exec),
    BuiltinRule("builtin:shutdown", "shutting down, rebooting, crashing the kernel, or killing "
                "every process", _rule_shutdown),
    BuiltinRule("builtin:unicode-command-name", "a command name with non-ASCII or invisible "
                "characters (look-alike)", _rule_unicode_name),
)  # fmt: skip


def _downloaded_then_run(analysis: Analysis) -> tuple[str, SimpleCommand] | None:
    """``curl URL -o x.sh && sh x.sh`` (or ``> x.sh``, ``wget -O x.sh``, then ``./x.sh``,
    ``bash x.sh``, ``source x.sh``): a file a downloader wrote, run later in the same line."""
    written: set[str] = set()
    for cmd in analysis.commands:
        if cmd.name in _DOWNLOADERS:
            targets = [w.text for w in cmd.writes]
            words = [a.text for a in cmd.args]
            for flag in ("-o", "--output", "-O", "--output-document"):
                if flag in words[:-1]:
                    targets.append(words[words.index(flag) + 1])
            targets += [w.split("=", 1)[1] for w in words if w.startswith(("--output=",
                        "--output-document="))]  # fmt: skip
            written.update(posixpath.basename(t) for t in targets if t and t != "-")
            continue
        if not written:
            continue
        runs = posixpath.basename(cmd.raw_name) if "/" in cmd.raw_name else None
        if cmd.name in SHELLS or cmd.name in ("source", ".") or _is_interp(cmd.name):
            operands = [a.text for a in cmd.args if not a.text.startswith("-")]
            runs = posixpath.basename(operands[0]) if operands else runs
        if runs in written:
            return f"{runs} (downloaded, then run)", cmd
    return None


def _fork_bomb(analysis: Analysis) -> str | None:
    """A function that reaches itself (directly or through others) and pipes or backgrounds."""
    calls = {name: called for name, (called, _spreads) in analysis.functions.items()}
    for name, (_called, spreads) in analysis.functions.items():
        if not spreads:
            continue
        seen: set[str] = set()
        todo = list(calls[name])
        while todo:
            callee = todo.pop()
            if callee == name:
                return f"{name}() {{ {name} | {name} & }}"
            if callee in calls and callee not in seen:
                seen.add(callee)
                todo.extend(calls[callee])
    return None


# --- the policy --------------------------------------------------------------------------------


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

    def check(self, command: str, cwd: str | None = None, home: str | None = None) -> Verdict:
        """Decide about a whole command line run in ``cwd``. Never raises for any input string.

        ``cwd`` and ``cd DIR`` earlier in the line resolve relative paths (``cd / && rm -rf *``);
        ``home`` is the home directory, protected like ``~``.
        """
        analysis = analyse(command)
        if not analysis.commands and not analysis.problems:
            return Verdict("allowed", "empty", "", "nothing to run")
        here = cwd
        for cmd in analysis.commands:
            for pattern in self.deny:
                if pattern.matches(cmd):
                    return _refuse(f"deny:{pattern.source}", cmd.line, cmd)
            if cmd.name in ("cd", "pushd") and not cmd.via:
                here = _cd(here, cmd)
            if self.builtin:
                resolved = _resolve(cmd, here, home)
                for rule in BUILTIN_RULES:
                    hit = rule.check(resolved if rule.paths else cmd)
                    if hit is not None:
                        return _refuse(rule.id, hit, cmd, rule.description)
        if self.builtin and (found := _downloaded_then_run(analysis)) is not None:
            return _refuse("builtin:download-exec", found[0], found[1],
                           "running a file downloaded in the same command line")  # fmt: skip
        if self.builtin:
            bomb = _fork_bomb(analysis)
            if bomb is not None:
                return _refuse("builtin:fork-bomb", bomb, None, "a function that calls itself "
                               "in a pipe or in the background")  # fmt: skip
        if self.mode == "allow-list":
            return self._allow_list(analysis)
        if analysis.problems:
            p = analysis.problems[0]
            rule_id = f"unverifiable:{p.kind}"
            if self.unparseable == "refuse":
                return Verdict(
                    "refused", rule_id, p.part[:200],
                    f"Refused by rule {rule_id}: the command cannot be fully verified "
                    f"({p.detail}: {p.part[:200]!r})."
                    " Write it without that construct (a literal command instead of a variable or"
                    " $(...) as the command, a script file instead of a dynamic payload).",
                )  # fmt: skip
            return Verdict("allowed", rule_id, p.part[:200], "allowed (recorded in the audit log)",
                           audit_note=f"{p.detail}: {p.part[:200]}")  # fmt: skip
        return Verdict("allowed", "default:deny-list", "", "no deny rule matches")

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


def _cd(here: str | None, cmd: SimpleCommand) -> str | None:
    operands = [a for a in cmd.args if not a.text.startswith("-")]
    if not operands:
        return "~"
    target = operands[0]
    if target.dynamic:
        return None
    t = target.text
    if t.startswith(("/", "~")):
        return t
    return posixpath.join(here, t) if here is not None else None


def _resolve(cmd: SimpleCommand, here: str | None, home: str | None) -> SimpleCommand:
    """Relative operands made absolute against ``here``; the home directory written as ``~``."""
    if here is None and home is None:
        return cmd
    args = []
    for a in cmd.args:
        braces = "{" in a.text and "," in a.text
        for alt in _brace_expand(a.text) if braces else [a.text]:  # bash makes separate words
            t = alt
            relative = t and not t.startswith(("/", "~", "-")) and "=" not in t
            if here is not None and not a.dynamic and relative:
                t = posixpath.normpath(posixpath.join(here, t)) + ("/" if t.endswith("/") else "")
            if home and home != "/":
                h = home.rstrip("/")
                if t == h or t.startswith(h + "/"):
                    t = "~" + t[len(h) :]
            args.append(Word(t, None, a.dynamic, a.substituted) if braces else replace(a, text=t))
    return replace(cmd, args=tuple(args))


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


# --- input typed into a shell --------------------------------------------------------------

#: Input kept per job to see commands split across ``interact`` calls.
_HISTORY_MAX = 64 * 1024


def reads_commands_from_stdin(command: str) -> bool:
    """True when the job is a shell that takes its commands from stdin (``bash``, ``sh -i``):
    what is typed into it with ``interact`` is then a command line, checked like one."""
    analysis = analyse(command)
    return any(
        c.name in SHELLS and reads_program_from_stdin(c) and not c.stdin_script and not c.upstream
        for c in analysis.commands
    )


class ShellInput:
    """What has been typed into one shell job. Bash runs a line (or a multi-line construct) when
    it is complete, so input is checked as whole lines, alone and together with what came
    before: ``rm -rf \\`` then ``/`` is ``rm -rf /``. An unfinished construct (``if ...; then``
    before its ``fi``) is not a reason to refuse; a deny rule is."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.history = ""
        self.partial = ""

    def check(self, text: str, *, eof: bool, cwd: str | None, home: str | None) -> Verdict:
        complete, _rest = self._split(text, eof)
        if not complete:
            return Verdict("allowed", "shell-input:incomplete-line", "", "no complete line yet")
        verdicts = [
            self.policy.check(chunk, cwd=cwd, home=home)
            for chunk in (self.history + complete, complete, *complete.splitlines())
            if chunk.strip()
        ]
        for v in verdicts:
            if not v.allowed and v.rule != "unverifiable:parse-error":
                return v
        if self.policy.mode == "allow-list" and verdicts and not verdicts[0].allowed:
            return verdicts[0]
        note = next((v.audit_note or v.matched for v in verdicts if not v.allowed), None)
        if note is not None:
            return Verdict("allowed", "shell-input:unfinished", note[:200],
                           "allowed: an unfinished construct", audit_note=note[:200])  # fmt: skip
        return Verdict("allowed", verdicts[0].rule if verdicts else "empty", "", "allowed")

    def accept(self, text: str, *, eof: bool) -> None:
        complete, rest = self._split(text, eof)
        self.history = (self.history + complete)[-_HISTORY_MAX:]
        self.partial = rest

    def _split(self, text: str, eof: bool) -> tuple[str, str]:
        pending = self.partial + text
        if eof:
            return pending, ""
        head, newline, rest = pending.rpartition("\n")
        return (head + newline, rest) if newline else ("", rest)
