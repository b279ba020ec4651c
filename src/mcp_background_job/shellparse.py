"""A shell command line split into every simple command it would run, with tree-sitter-bash.

Import rule: layer ``pure`` in ``tests/test_layers.py`` (nothing from the package but its own
parts).

Pure (no I/O) and a leaf: ``policy`` judges what this module finds. The walker knows a fixed set
of node kinds; anything else, a parse error, or a known tree-sitter-bash misparse becomes a
``Problem`` instead of being guessed at (fail closed: the policy decides what a problem means).

What is found, recursively: commands in pipelines, ``&&``/``||``/``;`` lists, subshells, groups,
``if``/``while``/``for``/``case`` bodies, functions, ``$(...)``, backticks and ``<(...)``; the
literal payloads of ``bash -c``/``eval``/``su -c``/``watch``/``env -S``/``ssh HOST CMD``, of
``echo|printf ... | sh``, of heredocs and here-strings fed to a shell and of ``<(echo ...)``; and
the command inside wrappers (``sudo``, ``env``, ``nice``, ``timeout``, ``xargs``, ``find -exec``,
... see ``_WRAPPERS``).

Words are expanded as far as the line says: variables assigned earlier in the line and those of
the job's environment (``Scope.env_known``: a variable in neither is empty, as in the job), ``~``,
brace expansion, ``${VAR:-default}`` and friends. What stays unknown is marked ``dynamic``.

Bounded: the input length, the syntax nodes over every parse of one analysis (payloads
included), the nesting, the number of commands and tree-sitter's own parse time are capped, and
what exceeds a cap is a ``Problem`` of kind ``too-long``/``too-complex``/``too-deep``. The work is
linear in the input (a pipeline's stages share one list of names), so one check costs at most
about a second of one thread, most of it in tree-sitter's C code with the GIL released.
"""

from __future__ import annotations

import bisect
import contextlib
import fnmatch
import itertools
import posixpath
import re
import shlex
import threading
import time
import unicodedata
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import NamedTuple

import tree_sitter_bash
from tree_sitter import Language, Node, Parser, Query, QueryCursor

#: Longer command lines are not analysed: refused (a parser's worst case is not a guardrail's).
MAX_COMMAND_CHARS = 100_000
#: Syntax nodes over every parse of one analysis (payloads re-parsed included). Everyday
#: commands use under 50; the longest shell script on a Debian system (1,300 lines) 9,053.
MAX_NODES = 10_000
#: tree-sitter's time for all the parses of one analysis (its error recovery is quadratic on
#: some inputs: 100,000 ``<`` took 29 s here). py-tree-sitter holds the GIL while it parses,
#: so this is also the longest any check can hold up the server's event loop. Real inputs
#: are far below it: an everyday command parses in ~10 us, a 42 KB script in 12 ms, a
#: 60 KB heredoc full of ``$(...)`` in 24 ms.
MAX_PARSE_MICROS = 25_000
#: tree-sitter checks its timeout too rarely while it recovers from runs of redirection
#: operators (``<<<<<<...``: 100 ms for a 40 ms budget); bash never accepts four in a row,
#: and a heredoc has a merge marker or two at most. More runs than this: refused unparsed.
MAX_ANGLE_RUNS = 32
_ANGLE_RUN = re.compile(r"[<>]{4,}")
#: Payload nesting (``bash -c`` inside ``bash -c`` ...).
MAX_DEPTH = 12
#: Syntactic nesting (``$( $( $( ...)))``, subshells in subshells ...).
MAX_NESTING = 120
#: Simple commands in one analysis.
MAX_COMMANDS = 2_000
#: Words (arguments) in all commands of one analysis.
MAX_WORDS = 5_000
#: CPU time of the thread for one analysis and its rules: a backstop behind the caps above,
#: which keep real inputs far below it (``time.thread_time``: other load does not count).
MAX_CPU_S = 0.5
#: Longest variable value followed; a longer one is unknown.
MAX_VALUE_CHARS = 16_384
#: Possible values kept per word (``for x in a b c``, a variable set in two branches, ...).
MAX_ALTERNATIVES = 16

SHELLS = frozenset(
    {"sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "lksh", "pdksh", "oksh", "rbash", "rksh",
     "ash", "yash", "posh", "hush", "fish", "tcsh", "csh", "osh", "ysh", "busybox", "toybox",
     "pwsh", "elvish", "xonsh", "nu"}
)  # fmt: skip
INTERPRETERS = frozenset(
    {"python", "python2", "python3", "pypy", "pypy3", "perl", "ruby", "node", "nodejs", "php",
     "lua", "luajit", "deno", "bun", "rscript", "julia", "tclsh", "wish", "expect", "osascript",
     "jshell", "groovy", "scala", "guile", "racket", "sbcl", "clisp"}
)  # fmt: skip
#: Flags that make an interpreter run the next argument as code.
INLINE_CODE_FLAGS = {
    "python": ("-c",), "pypy": ("-c",), "perl": ("-e", "-E"), "ruby": ("-e",),
    "node": ("-e", "-p", "--eval", "--print"), "nodejs": ("-e", "-p", "--eval", "--print"),
    "php": ("-r",), "lua": ("-e",), "luajit": ("-e",), "deno": ("eval",), "bun": ("-e", "--eval"),
    "rscript": ("-e",), "julia": ("-e", "-E"), "expect": ("-c",), "osascript": ("-e",),
    "guile": ("-c",), "racket": ("-e",), "sbcl": ("--eval",), "clisp": ("-x",),
}  # fmt: skip
#: Files a program read from are really its standard input.
_STDIN_PATHS = re.compile(r"^(/dev/stdin|/dev/fd/0|/proc/(self|thread-self|\d+|\$\$)/fd/0|-)$")
#: Other open descriptors: what they hold cannot be known from the line.
_FD_PATHS = re.compile(r"^(/dev/fd/\d+|/proc/[^/]+/fd/\d+|/dev/(stdout|stderr|tty))$")
#: ``/proc/self/exe`` run by the shell is the shell itself.
_SELF_EXE = re.compile(r"^/proc/[^/]+/exe$")
#: Variables the shell sets itself: never known from the line or the environment.
_SHELL_SET = frozenset(
    {"PPID", "UID", "EUID", "GROUPS", "HOSTNAME", "HOSTTYPE", "OSTYPE", "MACHTYPE", "RANDOM",
     "SRANDOM", "SECONDS", "LINENO", "BASHPID", "BASH", "BASH_VERSION", "BASH_VERSINFO",
     "BASH_SOURCE", "BASH_LINENO", "BASH_COMMAND", "BASH_SUBSHELL", "BASH_ARGC", "BASH_ARGV",
     "BASH_ARGV0", "BASH_REMATCH", "BASH_EXECUTION_STRING", "SHLVL", "OLDPWD", "OPTARG",
     "OPTIND", "REPLY", "PIPESTATUS", "FUNCNAME", "EPOCHSECONDS", "EPOCHREALTIME", "DIRSTACK",
     "SHELLOPTS", "BASHOPTS", "COLUMNS", "LINES", "HISTCMD", "_", "PS1", "PS2", "PS3", "PS4"}
)  # fmt: skip


class _Limit(Exception):  # internal control flow: never escapes analyse()
    """A cap was reached: the analysis stops with the problem already recorded."""


@dataclass(frozen=True, slots=True)
class Word:
    """One word of a command as far as it can be known without running anything.

    ``text``: its value as written once quotes are removed, with known variables filled in and
    unknown expansions kept as written (``$DIR/x``), ``~`` kept; ``vals``: the values it may
    have when they differ from ``text`` (``~`` expanded, an unknown variable empty, each value of
    a variable set in two branches, ...); ``dynamic``: some part is only known at run time;
    ``substituted``: names of the commands whose output becomes part of it (``$(...)``,
    ``<(...)``, ``read``, ``xargs`` input); ``tail``: the known text after the last unknown part
    (``/bin/python`` in ``$VENV/bin/python``).
    """

    text: str
    vals: tuple[str, ...] = ()
    dynamic: bool = False
    substituted: tuple[str, ...] = ()
    tail: str | None = None
    procsub: bool = False  # the word is a ``<(...)`` path

    @property
    def values(self) -> tuple[str, ...]:
        return self.vals or (self.text,)

    @property
    def known(self) -> str | None:
        """The one value, when it is known for sure."""
        if self.dynamic or len(self.values) != 1:
            return None
        return self.values[0]


class Upstream:
    """Names of the earlier stages of a pipeline. Stages share one list (a view per stage, not a
    copy), so a pipeline of n stages costs O(n) and not O(n²)."""

    __slots__ = ("_n", "_names", "_parent")

    def __init__(
        self, parent: Upstream | None = None, names: list[str] | None = None, n: int = 0
    ) -> None:
        self._parent = parent
        self._names = names if names is not None else []
        self._n = n

    def __iter__(self) -> Iterator[str]:
        if self._parent is not None:
            yield from self._parent
        for i in range(self._n):
            yield self._names[i]

    def __bool__(self) -> bool:
        return self._n > 0 or bool(self._parent)

    def __repr__(self) -> str:
        return f"Upstream({list(self)!r})"


NO_UPSTREAM = Upstream()


@dataclass(frozen=True, slots=True, eq=False)
class SimpleCommand:
    """One command that would run. ``name`` is normalized: no path, no quoting, NFKC."""

    name: str
    args: tuple[Word, ...]
    source: str
    raw_name: str = ""
    upstream: Upstream = NO_UPSTREAM  # earlier stages of its pipeline
    stdin_script: bool = False  # a heredoc/here-string or a literal echo feeds its stdin
    writes: tuple[Word, ...] = ()  # output redirection targets
    via: tuple[str, ...] = ()  # wrappers and payloads it was found inside
    stdin: str = "job"  # job | pipe | heredoc | file | null: where its stdin comes from
    stdin_file: Word | None = None  # ``< FILE``
    stdin_text: tuple[str, ...] | None = None  # the literal text fed to its stdin, if known
    program: Word | None = None  # the file a shell/interpreter/``source`` runs as its program
    cwd: str | None = None  # the working directory it runs in, when known
    forked: bool = False  # runs in a child process (pipe stage, ``&``, subshell, ``$(...)``)
    function: str | None = None  # defined inside this function's body

    @property
    def line(self) -> str:
        return " ".join([self.name, *(a.text for a in self.args)])


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the analysis cannot vouch for; ``part`` is the text concerned."""

    kind: str  # parse-error | unknown-node | misparse | dynamic | too-deep | too-long | too-complex
    detail: str
    part: str

    @property
    def is_limit(self) -> bool:
        return self.kind in ("too-deep", "too-long", "too-complex")


@dataclass(slots=True)
class Scope:
    """What the shell knows at a point of the line: variables, cwd, positional parameters,
    aliases. ``env_known``: the job's whole environment is known, so a variable neither in it
    nor assigned is empty (as it is for the job); otherwise such a variable is unknown."""

    vars: dict[str, Word] = field(default_factory=dict)
    env_known: bool = False
    cwd: str | None = None
    oldcwd: str | None = None
    home: str = "/root"
    positional: tuple[str, ...] | None = None
    aliases: set[str] = field(default_factory=set)
    #: arrays by name: their elements, or None when unknown (``mapfile``, ``read -a``)
    arrays: dict[str, tuple[Word, ...] | None] = field(default_factory=dict)
    #: functions defined so far: the text of their bodies (a shell keeps them between lines)
    functions: dict[str, str] = field(default_factory=dict)

    def copy(self) -> Scope:
        return Scope(dict(self.vars), self.env_known, self.cwd, self.oldcwd, self.home,
                     self.positional, set(self.aliases), dict(self.arrays),
                     dict(self.functions))  # fmt: skip

    @classmethod
    def initial(
        cls, *, cwd: str | None = None, home: str | None = None, env: dict[str, str] | None = None
    ) -> Scope:
        """The scope a job's command line starts in. ``env``: the job's environment, when known
        (then ``$1``..., ``$@`` are empty as for ``sh -c LINE``)."""
        scope = cls(cwd=_norm(cwd) if cwd else None, home=_norm(home or "/root"))
        if env is not None:
            scope.env_known = True
            scope.positional = ()
            for k, v in env.items():
                scope.vars[k] = Word(v) if len(v) <= MAX_VALUE_CHARS else _unknown(k)
        scope.vars.setdefault("HOME", Word(scope.home))
        return scope


@dataclass(slots=True)
class Analysis:
    commands: list[SimpleCommand] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: function name -> names it calls, each with whether the call runs in a child process
    functions: dict[str, set[tuple[str, bool]]] = field(default_factory=dict)
    #: fork bombs recognized by the walker (a loop that never ends and forks, a payload that
    #: runs itself)
    bombs: list[str] = field(default_factory=list)
    #: commands that take commands from the job's own stdin (``bash``, ``sh /dev/stdin``, ...)
    stdin_readers: list[str] = field(default_factory=list)
    reader_cwd: str | None = None  # the cwd the first of them runs in, when known
    scope: Scope = field(default_factory=Scope)
    nodes: int = 0
    words: int = 0
    parse_micros: int = 0  # tree-sitter's time so far
    #: ``time.thread_time()`` after which the work stops (see ``MAX_CPU_S``)
    deadline: float = field(default_factory=lambda: time.thread_time() + MAX_CPU_S)

    def over_time(self) -> bool:
        return time.thread_time() > self.deadline


class _Ctx(NamedTuple):
    """Where in the line a node is: payload depth, wrappers, pipeline, stdin, ... (a tuple:
    copied with a change for every node, which a dataclass makes ten times slower)."""

    depth: int = 0
    via: tuple[str, ...] = ()
    upstream: Upstream = NO_UPSTREAM
    stdin: str = "job"
    forked: bool = False
    certain: bool = True  # an assignment here always happens once reached (else: may happen)
    function: str | None = None
    # redirections of an enclosing compound command (`{ a; b; } > f`, `while ...; done < f`)
    writes: tuple[Word, ...] = ()
    stdin_file: Word | None = None
    fed: tuple[str, ...] | None = None


_LANGUAGE = Language(tree_sitter_bash.language())
_ASSIGNMENTS = Query(_LANGUAGE, "(variable_assignment name: (variable_name) @n)")
_LOCAL = threading.local()


def _parser() -> Parser:
    """One parser per thread: checks run in worker threads, and a Parser is not thread-safe."""
    parser: Parser | None = getattr(_LOCAL, "parser", None)
    if parser is None:
        parser = Parser(_LANGUAGE)
        _set_timeout(parser, MAX_PARSE_MICROS)
        _LOCAL.parser = parser
    return parser


#: Inputs longer than this may take milliseconds to parse (an everyday command: microseconds).
_YIELD_ABOVE = 2048


def _yield_gil(size: int) -> None:
    """Let a thread waiting for the GIL (the server's event loop) run before a long parse:
    py-tree-sitter holds the GIL while it parses, and a waiting thread only gets it after the
    5 ms switch interval, by which time the next parse may already hold it. Sleeping releases
    it at once; parses then never follow each other without the loop in between."""
    if size > _YIELD_ABOVE and threading.current_thread() is not threading.main_thread():
        time.sleep(0.001)


def _set_timeout(parser: Parser, micros: int) -> None:
    with warnings.catch_warnings():
        # Deprecated in 0.25 for a progress callback, but that only works when parsing through
        # a read callback, and cancelling through it crashes the interpreter (tree-sitter
        # 0.25.2, segfault): the timeout is what works.
        warnings.simplefilter("ignore", DeprecationWarning)
        parser.timeout_micros = max(1, micros)  # type: ignore[misc]  # the stub says read-only


_TRANSPARENT = frozenset(
    {"program", "compound_statement", "do_group", "else_clause", "elif_clause", "case_item",
     "variable_assignments", "negated_command"}
)  # fmt: skip
_IGNORED = frozenset({"comment", "heredoc_body", "heredoc_start", "heredoc_end", "file_descriptor",
                      "variable_name", "special_variable_name", "test_operator", "regex",
                      "extglob_pattern", "heredoc_content"})  # fmt: skip
_EXPRESSIONS = frozenset(
    {"binary_expression", "unary_expression", "parenthesized_expression", "ternary_expression",
     "postfix_expression", "number", "word", "string", "raw_string", "concatenation",
     "simple_expansion", "expansion", "arithmetic_expansion", "string_content", "ansi_c_string",
     "translated_string", "subscript", "array", "brace_expression", "test_command"}
)  # fmt: skip
_OUTPUT_REDIRECTS = (">", ">>", ">|", "&>", "&>>", ">&", "<>", "&>|")
_INPUT_REDIRECTS = ("<", "<&", "<>")
_STOPPERS = frozenset({"break", "exit", "return", "wait"})


@lru_cache(maxsize=4096)
def normalize_name(text: str) -> str:
    """``/usr/bin/rm`` -> ``rm``; full-width and compatibility forms folded (NFKC)."""
    base = text.rsplit("/", 1)[-1] if "/" in text.rstrip("/") else text
    return unicodedata.normalize("NFKC", base)


@lru_cache(maxsize=4096)
def base_name(name: str) -> str:
    """``python3.12`` -> ``python3``... -> the family: ``python``; ``bash-5.2`` -> ``bash``."""
    return re.sub(r"[-.\d]+$", "", name.lower()) or name.lower()


@lru_cache(maxsize=4096)
def is_shell(name: str) -> bool:
    return name in SHELLS or base_name(name) in SHELLS


@lru_cache(maxsize=4096)
def interpreter(name: str) -> str | None:
    b = base_name(name)
    if b in INTERPRETERS or name.lower() in INTERPRETERS:
        return "python" if b.startswith("python") or b.startswith("pypy") else b
    return None


def _norm(path: str) -> str:
    out = posixpath.normpath(path)
    return "/" + out.lstrip("/") if out.startswith("/") else out


def _unknown(name: str, substituted: tuple[str, ...] = ()) -> Word:
    return Word(f"${name}", (f"${name}", ""), dynamic=True, substituted=substituted, tail="")


def _unescape_word(raw: str) -> str:
    if "\\" not in raw:
        return raw
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            if raw[i + 1] != "\n":  # a line continuation disappears
                out.append(raw[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


_ANSI_C = re.compile(
    r"\\(x[0-9a-fA-F]{1,2}|u[0-9a-fA-F]{1,4}|U[0-9a-fA-F]{1,8}|[0-7]{1,3}|c.|.)", re.S
)
_ANSI_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b",
                "f": "\f", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}  # fmt: skip


def ansi_c(body: str) -> str:
    """The value of ``$'...'`` (and of ``printf``/``echo -e`` escapes)."""

    def sub(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc[0] in "xuU" and len(esc) > 1:
            code = int(esc[1:], 16)
            return chr(code) if code < 0x110000 else ""
        if esc[0].isdigit():
            return chr(int(esc, 8) & 0xFF)
        if esc[0] == "c" and len(esc) == 2:
            return chr(ord(esc[1].upper()) & 0x1F)
        return _ANSI_SIMPLE.get(esc, "\\" + esc)

    return _ANSI_C.sub(sub, body)


_PRINTF_DIRECTIVE = re.compile(r"%([-+ #0']*)(\*|\d+)?(?:\.(\*|\d+))?([diouxXeEfgGcsbq%])")


def printf_output(fmt: str, args: list[str]) -> str:
    """What ``printf FMT ARGS...`` writes (the format is reused while arguments remain)."""
    out: list[str] = []
    rest = list(args)
    used = 0

    def directive(m: re.Match[str]) -> str:
        nonlocal used
        conv = m.group(4)
        if conv == "%":
            return "%"
        value = rest[used] if used < len(rest) else ""
        used += 1
        if conv == "b":
            return ansi_c(value)
        if conv in "diouxXeEfgG":
            try:
                return str(int(value or "0", 0))
            except ValueError:
                return "0"
        if conv == "c":
            return value[:1]
        return value

    for _ in range(1 + len(args)):  # each round uses at least one argument, or ends
        used = 0
        out.append(ansi_c(_PRINTF_DIRECTIVE.sub(directive, fmt)))
        rest = rest[used:]
        if not rest or used == 0:
            break
    return "".join(out)


_BRACE_ITEM = re.compile(r"(?<!\\)\{([^{}]*)(?<!\\)\}")


def brace_expand(text: str, limit: int = MAX_ALTERNATIVES * 4) -> list[str] | None:
    """Bash brace expansion of an unquoted literal (``{a,b}c``, ``x{1..3}``), or None when
    it has none; the number of results is bounded (more: the first ``limit``)."""
    out: list[str] = []
    todo = [text]
    found = False
    while todo and len(out) + len(todo) <= limit:
        cur = todo.pop(0)
        for m in _BRACE_ITEM.finditer(cur):
            body = m.group(1)
            seq = re.fullmatch(r"(-?\d+|[A-Za-z])\.\.(-?\d+|[A-Za-z])(?:\.\.-?\d+)?", body)
            if "," in body:
                alts = _split_commas(body)
            elif seq is not None:
                a, b = seq.group(1), seq.group(2)
                if a.lstrip("-").isdigit() and b.lstrip("-").isdigit():
                    lo, hi = int(a), int(b)
                    step = 1 if hi >= lo else -1
                    alts = [str(i) for i in range(lo, hi + step, step)][:limit]
                elif not a.lstrip("-").isdigit() and not b.lstrip("-").isdigit():
                    lo, hi = ord(a), ord(b)
                    step = 1 if hi >= lo else -1
                    alts = [chr(i) for i in range(lo, hi + step, step)][:limit]
                else:
                    continue
            else:
                continue
            found = True
            todo.extend(cur[: m.start()] + alt + cur[m.end() :] for alt in alts)
            break
        else:
            out.append(cur)
    if not found:
        return None
    return [_unescape_word(x) for x in (out + todo)[:limit]]


def _split_commas(body: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in body:
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _product(parts: list[Word]) -> Word:
    """The concatenation of words: text joined, values combined (bounded)."""
    if len(parts) == 1:
        return parts[0]
    text = "".join(p.text for p in parts)
    dynamic = any(p.dynamic for p in parts)
    subs = tuple(dict.fromkeys(s for p in parts for s in p.substituted))
    if all(not p.vals for p in parts):
        values = [text]
    else:
        # each combination of the parts' values; joined once each (no quadratic appends)
        combos: list[list[str]] = [[]]
        for p in parts:
            combos = [[*c, w] for c in combos for w in p.values][: MAX_ALTERNATIVES * 2]
        values = ["".join(c) for c in combos]
    vals = tuple(dict.fromkeys(values))[:MAX_ALTERNATIVES]
    if len(values) > MAX_ALTERNATIVES:
        dynamic = True
    tail: str | None = None
    if dynamic:
        tail = ""
        for p in parts:
            tail = (tail + p.text) if not p.dynamic else (p.tail or "")
    return Word(text, vals if vals != (text,) else (), dynamic, subs, tail,
                procsub=any(p.procsub for p in parts))  # fmt: skip


def _union(a: Word, b: Word) -> Word:
    """A word that is either ``a`` or ``b`` (a variable set in one branch only)."""
    values = tuple(dict.fromkeys((*a.values, *b.values)))
    dynamic = a.dynamic or b.dynamic or len(values) > MAX_ALTERNATIVES
    subs = tuple(dict.fromkeys((*a.substituted, *b.substituted)))
    return Word(a.text, values[:MAX_ALTERNATIVES] if values != (a.text,) else (), dynamic, subs,
                "" if dynamic else None)  # fmt: skip


class _Walker:
    def __init__(self, analysis: Analysis, scope: Scope) -> None:
        self.a = analysis
        self.s = scope
        self.nesting = 0
        self.payloads: list[str] = []  # payload texts being analysed (to see one run itself)
        self.defined: dict[str, tuple[Node, bytes]] = {}  # function bodies, to walk at calls
        self.deferred: dict[str, list[Problem]] = {}  # found in a body, reported at a call
        self.inlining: list[str] = []  # functions being walked for a call
        self.backgrounds = 0  # statements run with `&` so far
        self.stoppers = 0  # break/exit/return/wait so far
        self.src = b""  # source of the script being walked
        self.assigned: list[tuple[int, int, str]] = []  # (start, end, name) of its assignments

    # --- entry points ---------------------------------------------------------------------

    def script(self, text: str, ctx: _Ctx) -> None:
        if ctx.depth > MAX_DEPTH:
            self.a.problems.append(Problem("too-deep", "nested too deeply", text[:200]))
            return
        data = text.encode("utf-8", "surrogateescape")
        _yield_gil(len(data))
        parser = _parser()
        _set_timeout(parser, MAX_PARSE_MICROS - self.a.parse_micros)
        began = time.perf_counter()
        try:
            tree = parser.parse(data)
        except ValueError:  # tree-sitter's timeout
            parser.reset()
            self._limit("too-complex", "the shell parser needed more than "
                        f"{MAX_PARSE_MICROS // 1000} ms", text)  # fmt: skip
        finally:
            self.a.parse_micros += int((time.perf_counter() - began) * 1e6)
        root = tree.root_node
        self.a.nodes += root.descendant_count
        if self.a.nodes > MAX_NODES:
            self._limit("too-complex", f"more than {MAX_NODES} syntax elements", text)
        if root.has_error:
            bad = _first_error(root)
            part = (_text(bad, data) if bad is not None else "").strip() or text[:200]
            self.a.problems.append(Problem("parse-error", "the shell parser rejects it", part))
            return
        saved = self.src, self.assigned
        self.src = data
        self.assigned = sorted(
            (n.start_byte, n.end_byte, _text(n, data))
            for n in QueryCursor(_ASSIGNMENTS).captures(root).get("n", [])
        )
        try:
            self.node(root, ctx)
        finally:
            self.src, self.assigned = saved

    def _limit(self, kind: str, detail: str, part: str) -> None:
        self.a.problems.append(Problem(kind, detail, part[:200]))
        raise _Limit

    def _t(self, n: Node | None, cap: int = 2000) -> str:
        if n is None:
            return ""
        end = min(n.end_byte, n.start_byte + cap)
        return self.src[n.start_byte : end].decode("utf-8", "replace")

    # --- statements -----------------------------------------------------------------------

    def node(self, n: Node, ctx: _Ctx) -> None:
        kind = n.type
        if not n.is_named or kind in _IGNORED:
            return
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                self._limit("too-deep", f"nested more than {MAX_NESTING} levels", self._t(n))
            if self.a.over_time():
                self._limit("too-complex", f"more than {MAX_CPU_S} s of work to check", self._t(n))
            self._node(n, kind, ctx)
        finally:
            self.nesting -= 1

    def _node(self, n: Node, kind: str, ctx: _Ctx) -> None:
        if kind in _TRANSPARENT:
            self.statements(n, ctx)
        elif kind == "list":  # left-nested: `a && b && c` is list(list(a, b), c)
            for i, c in enumerate(_flatten(n, "list")):
                self.statement(c, ctx if i == 0 else ctx._replace(certain=False))
        elif kind == "subshell":
            self.child(lambda: self.statements(n, ctx._replace(forked=True)))
        elif kind == "pipeline":
            self.pipeline(n, ctx)
        elif kind == "command":
            self.command(n, ctx)
        elif kind == "redirected_statement":
            self.redirected(n, ctx)
        elif kind == "variable_assignment":
            self.assignment(n, ctx, ctx.certain)
        elif kind in ("declaration_command", "unset_command"):
            self.declaration(n, ctx)
        elif kind == "function_definition":
            self.function(n, ctx)
        elif kind in ("if_statement", "case_statement"):
            for c in n.named_children:
                if c.type in _EXPRESSIONS and kind == "case_statement":
                    self.word(c, ctx)
                else:
                    self.statement(c, ctx._replace(certain=False))
        elif kind in ("while_statement", "for_statement", "c_style_for_statement"):
            self.loop(n, kind, ctx)
        elif kind == "test_command":
            for c in n.named_children:
                self.word(c, ctx)
            self._test_indirection(n)
        elif kind in ("file_redirect", "herestring_redirect", "heredoc_redirect"):
            for c in n.named_children:
                self.word(c, ctx)
        elif kind in _EXPRESSIONS or kind in ("command_substitution", "process_substitution"):
            self.word(n, ctx)
        else:
            self.a.problems.append(
                Problem("unknown-node", f"shell construct {kind!r} is not analysed", self._t(n))
            )

    def statements(self, n: Node, ctx: _Ctx) -> None:
        """Children of a list of statements; one followed by ``&`` runs in the background."""
        for c in n.named_children:
            nxt = c.next_sibling
            if nxt is not None and nxt.type == "&":
                self.backgrounds += 1
                self.child(lambda c=c: self.statement(c, ctx._replace(forked=True, stdin="null")))
            else:
                self.statement(c, ctx)

    def statement(self, n: Node, ctx: _Ctx) -> None:
        self.node(n, ctx)

    def child(self, walk: object) -> None:
        """Walk something that runs in a child process: what it assigns, defines or ``cd``s
        to does not reach the rest of the line."""
        saved = self.s
        self.s = saved.copy()
        try:
            walk()  # type: ignore[operator]
        finally:
            self.s = saved

    def pipeline(self, n: Node, ctx: _Ctx, last: _Ctx | None = None) -> None:
        """Stages of a pipeline. ``last``: redirections tree-sitter hoisted from the last stage
        to the whole pipeline (bash gives ``a | b > f`` to ``b``)."""
        stages = _flatten(n, "pipeline")
        names: list[str] = []
        parent = ctx.upstream if ctx.upstream else None
        for i, c in enumerate(stages):
            final = i == len(stages) - 1
            stage_ctx = ctx._replace(
                upstream=Upstream(parent, names, len(names)) if (names or parent) else NO_UPSTREAM,
                forked=True,
                certain=False,
                stdin="pipe" if i > 0 else ctx.stdin,
                writes=ctx.writes if final else (),
                stdin_file=ctx.stdin_file if i == 0 else None,
                fed=ctx.fed if i == 0 else None,
            )
            if final and last is not None:
                stage_ctx = stage_ctx._replace(
                    writes=stage_ctx.writes + last.writes,
                    stdin=last.stdin if last.stdin != ctx.stdin else stage_ctx.stdin,
                    stdin_file=last.stdin_file or stage_ctx.stdin_file,
                    fed=last.fed or stage_ctx.fed,
                )
            script = self._literal_output(stages[i - 1], ctx) if i > 0 else None
            self.child(lambda c=c, sc=stage_ctx, s=script: self.stage(c, sc, s))
            names.extend(_stage_names(c, self.src))

    def stage(self, n: Node, ctx: _Ctx, script: list[str] | None) -> None:
        """One pipeline stage, told what a literal ``echo``/``printf`` before it writes."""
        if n.type == "command":
            self.command(n, ctx, fed=script)
        elif n.type == "redirected_statement":
            self.redirected(n, ctx, fed=script)
        else:
            self.node(n, ctx)

    def loop(self, n: Node, kind: str, ctx: _Ctx) -> None:
        body = n.child_by_field_name("body")
        inner = ctx._replace(certain=False)
        if kind == "for_statement":
            var = n.child_by_field_name("variable")
            values = [self.word(v, ctx) for v in n.children_by_field_name("value")]
            name = self._t(var)
            if not values and self.s.positional is not None:  # `for x; do`: "$@"
                self.s.vars[name] = _loop_values(name, [Word(p) for p in self.s.positional])
            elif not values:
                self.s.vars[name] = _unknown(name)
            else:
                self.s.vars[name] = _loop_values(name, values)
        else:
            for c in n.named_children:
                if c != body:
                    self.statement(c, inner) if c.type not in _EXPRESSIONS else self.word(c, inner)
        # A variable assigned in the body keeps its value into the next round: inside the
        # body it may hold what the previous round assigned. Unknown there (cheap and safe).
        if body is not None:
            lo = bisect.bisect_left(self.assigned, (body.start_byte, 0, ""))
            for start, _end, name in self.assigned[lo:]:
                if start >= body.end_byte:
                    break
                self.s.vars[name] = _union(self._lookup_word(name), _unknown(name))
        before_bg, before_stop = self.backgrounds, self.stoppers
        if body is not None:
            self.node(body, inner)
        if (
            self.backgrounds > before_bg
            and self.stoppers == before_stop
            and (
                _endless(n, kind, self.src) or ("yes" in ctx.upstream and _reads_input(n, self.src))
            )
        ):
            self.a.bombs.append(f"{self._t(n, 120)} (an endless loop that starts processes in "
                                "the background)")  # fmt: skip

    def function(self, n: Node, ctx: _Ctx) -> None:
        name_node = n.child_by_field_name("name")
        name = _unescape_word(self._t(name_node)) if name_node is not None else ""
        self.a.functions.setdefault(name, set())
        body = n.child_by_field_name("body")
        if body is not None:
            self.defined[name] = (body, self.src)
            self.s.functions[name] = self._t(body, MAX_COMMAND_CHARS)
        saved_positional = self.s.positional
        self.s.positional = None  # its arguments are the caller's
        # What cannot be verified in the body only matters when the function runs: a call
        # walks the body again with the call's arguments and reports it then (see _call).
        problems = len(self.a.problems)
        try:
            for c in n.named_children:
                if c != name_node:
                    self.statement(c, ctx._replace(certain=False, function=name))
        finally:
            self.s.positional = saved_positional
            found = self.a.problems[problems:]
            self.deferred[name] = [p for p in found if not p.is_limit]
            self.a.problems[problems:] = [p for p in found if p.is_limit]

    def assignment(self, n: Node, ctx: _Ctx, strong: bool) -> None:
        name_node = n.child_by_field_name("name")
        value_node = n.child_by_field_name("value")
        value = self.word(value_node, ctx) if value_node is not None else Word("")
        if name_node is None or name_node.type != "variable_name":
            if name_node is not None:
                self.word(name_node, ctx)  # `a[$(cmd)]=1`: the subscript runs
            return
        name = self._t(name_node)
        op = next((c.type for c in n.children if not c.is_named), "=")
        if value_node is not None and value_node.type == "array":
            elements: list[Word] = []
            for c in value_node.named_children:
                elements.extend(self._split_words(c, ctx))
            old = self.s.arrays.get(name, ()) if op == "+=" else ()
            known = old is not None and strong and all(not e.dynamic for e in elements)
            self.s.arrays[name] = (*old, *elements) if known and old is not None else None
            first = (old or elements or [Word("")])[0] if known else _unknown(name)
            self.set_var(name, first, strong)
            return
        if op == "+=":
            value = _product([self._lookup_word(name), value])
        self.set_var(name, value, strong)
        self._special_assignment(name, value, ctx, self._t(n))

    def set_var(self, name: str, value: Word, strong: bool) -> None:
        if len(value.text) > MAX_VALUE_CHARS:
            value = _unknown(name, value.substituted)
        if name == "IFS" and value.known != " \t\n":
            self.a.problems.append(
                Problem("dynamic", "IFS changes how the shell splits words", f"IFS={value.text}")
            )
        self.s.vars[name] = value if strong else _union(value, self._lookup_word(name))

    def _special_assignment(self, name: str, value: Word, ctx: _Ctx, source: str) -> None:
        """Variables whose value is code the shell runs later."""
        if name == "PROMPT_COMMAND" or name.startswith("BASH_FUNC_"):
            self.payload(value, ctx._replace(via=(*ctx.via, name)), source)
        elif re.fullmatch(r"PS[0-4]", name):
            # prompt expansion runs the $(...) in it
            self.payload(Word(f'echo "{value.text}"', dynamic=value.dynamic),
                         ctx._replace(via=(*ctx.via, name)), source)  # fmt: skip
        elif name in ("BASH_ENV", "ENV") and (
            value.procsub or any(_STDIN_PATHS.match(v) or _FD_PATHS.match(v) for v in value.values)
        ):
            self.a.problems.append(
                Problem("dynamic", f"{name} makes the shell run a program from a pipe", source)
            )

    def declaration(self, n: Node, ctx: _Ctx) -> None:
        words: list[Word] = []
        is_unset = n.type == "unset_command"
        for c in n.named_children:
            if c.type == "variable_assignment":
                self.assignment(c, ctx, ctx.certain)
            else:
                words.append(self.word(c, ctx))
        flags = "".join(w.text[1:] for w in words if w.text.startswith("-"))
        names = [w.text for w in words if not w.text.startswith("-")]
        if is_unset:
            for name in names:
                if "f" not in flags:
                    self.s.vars[name] = Word("")
            return
        if "n" in flags:  # a name reference: assignments through it reach any variable
            self._forget_variables()
        for name in names:
            if "=" not in name and re.fullmatch(r"[A-Za-z_]\w*", name):
                self.s.vars.setdefault(name, self._lookup_word(name))

    def _forget_variables(self) -> None:
        """After ``source FILE``, ``eval $x``, a name reference...: any variable may have any
        value (HOME stays the home directory: treated as such however it is written)."""
        home = self.s.vars.get("HOME", Word(self.s.home))
        self.s.vars = {"HOME": _union(home, Word(self.s.home))}
        self.s.arrays = {}
        self.s.env_known = False
        self.s.positional = None

    def redirected(self, n: Node, ctx: _Ctx, fed: list[str] | None = None) -> None:
        body = n.child_by_field_name("body")
        redirects = [c for c in n.named_children if c != body]
        extra: list[Node] = []
        writes: list[Word] = []
        stdin = ctx.stdin
        stdin_file: Word | None = None
        script: list[str] | None = fed
        later: list[Node] = []  # heredocs: the rest of their line is parsed inside them
        for r in redirects:
            if r.type == "file_redirect":
                dests = r.children_by_field_name("destination")
                # tree-sitter-bash misparse: `rm 2>/dev/null -rf /` puts `-rf /` in the redirect.
                # Bash treats those words as arguments of the command: so do we.
                extra.extend(dests[1:])
                op = next((c.type for c in r.children if not c.is_named), "")
                fd = next((self._t(c) for c in r.named_children if c.type == "file_descriptor"),
                          None)  # fmt: skip
                target = self.word(dests[0], ctx) if dests else Word("")
                if op in _OUTPUT_REDIRECTS and op != "<>":
                    writes.append(target)
                elif op in _INPUT_REDIRECTS and fd in (None, "0"):
                    stdin, stdin_file, script = "file", target, None
                    if op == "<&" and target.text == "0":
                        stdin, stdin_file = ctx.stdin, None
            elif r.type == "heredoc_redirect":
                body_node = next((c for c in r.named_children if c.type == "heredoc_body"), None)
                value = self.word(body_node, ctx) if body_node is not None else Word("")
                stdin, script, stdin_file = "heredoc", list(value.values), None
                later.append(r)
            elif r.type == "herestring_redirect":
                words = [self.word(c, ctx) for c in r.named_children]
                value = _product(_spaced(words))
                stdin, script, stdin_file = "heredoc", [v + "\n" for v in value.values], None
            else:
                self.node(r, ctx)
        inner = ctx._replace(stdin=stdin)
        if body is None:  # `>/dev/sda` alone: a write without a command
            self.emit(Word(":"), (), self._t(n), inner, tuple(writes))
        elif body.type == "command":
            self.command(body, inner, extra, writes, script, stdin_file, self._t(n))
        else:
            if extra:
                what = "words after a redirection of a compound command"
                self.a.problems.append(Problem("misparse", what, self._t(n)))
            redirect = ctx._replace(
                stdin=stdin, writes=ctx.writes + tuple(writes),
                stdin_file=stdin_file if stdin == "file" else ctx.stdin_file,
                fed=tuple(script) if script is not None else ctx.fed,
            )  # fmt: skip
            if body.type == "pipeline":
                self.pipeline(body, ctx, last=redirect)
            else:
                self.node(body, redirect)
        for r in later:
            self._heredoc_rest(n, r, ctx, _stage_names(body, self.src) if body else [])

    def _heredoc_rest(self, stmt: Node, r: Node, ctx: _Ctx, names: list[str]) -> None:
        """tree-sitter-bash puts what follows ``<<EOF`` on its line inside the heredoc node:
        ``| sh``, ``&& cmd``, more redirections. Walk it; stray words there are a misparse."""
        for c in r.named_children:
            if c.type == "heredoc_start":
                if not re.fullmatch(r"[\w.\-'\"\\]+", self._t(c)):
                    what = "a heredoc delimiter with shell syntax in it"
                    self.a.problems.append(Problem("misparse", what, self._t(r)))
            elif c.type in ("heredoc_body", "heredoc_end", "file_descriptor"):
                continue
            elif c.type == "pipeline" or (
                c.type in ("command", "redirected_statement") and _after_pipe(c)
            ):
                stages = _flatten(c, "pipeline")
                left = stmt
                seen = list(names)
                for st in stages:
                    script = self._literal_output(left, ctx)
                    sc = ctx._replace(upstream=Upstream(None, seen, len(seen)), forked=True,
                                 stdin="pipe", certain=False)  # fmt: skip
                    self.child(lambda st=st, sc=sc, s=script: self.stage(st, sc, s))
                    seen.extend(_stage_names(st, self.src))
                    left = st
            elif c.type in ("word", "concatenation", "string", "raw_string", "number"):
                self.a.problems.append(
                    Problem("misparse", "words after a heredoc marker", self._t(r))
                )
            else:
                self.statement(c, ctx)

    # --- simple commands ------------------------------------------------------------------

    def command(
        self,
        n: Node,
        ctx: _Ctx,
        extra: list[Node] | None = None,
        writes: list[Word] | None = None,
        fed: list[str] | None = None,
        stdin_file: Word | None = None,
        source: str | None = None,
    ) -> None:
        name_node = n.child_by_field_name("name")
        args_nodes = n.children_by_field_name("argument") + (extra or [])
        if self.a.words + len(args_nodes) > MAX_WORDS:
            self._limit("too-complex", f"more than {MAX_WORDS} words", self._t(n, 200))
        self._check_newlines(n)
        prefix: list[tuple[str, Word]] = []
        stdin = ctx.stdin
        for c in n.named_children:
            if c.type == "variable_assignment":
                value_node = c.child_by_field_name("value")
                value = self.word(value_node, ctx) if value_node is not None else Word("")
                var = self._t(c.child_by_field_name("name"))
                prefix.append((var, value))
                self._special_assignment(var, value, ctx, self._t(c))
            elif c.type == "file_redirect":  # `cmd >out arg` inside the command node
                dests = c.children_by_field_name("destination")
                args_nodes = args_nodes + dests[1:]
                op = next((x.type for x in c.children if not x.is_named), "")
                target = self.word(dests[0], ctx) if dests else Word("")
                if op in _OUTPUT_REDIRECTS and op != "<>":
                    writes = [*(writes or []), target]
                elif op in _INPUT_REDIRECTS:
                    stdin, stdin_file, fed = "file", target, None
            elif c.type == "herestring_redirect":
                words = [self.word(x, ctx) for x in c.named_children]
                fed = [v + "\n" for v in _product(_spaced(words)).values]
                stdin = "heredoc"
        writes = [*ctx.writes, *(writes or [])]
        if stdin_file is None and stdin == ctx.stdin:
            stdin_file = ctx.stdin_file
        if fed is None and stdin == ctx.stdin and ctx.fed is not None:
            fed = list(ctx.fed)
        if fed is not None and stdin == "job":
            stdin = "heredoc"
        if name_node is None:
            if prefix and ctx.certain:  # `FOO=1` alone: a shell assignment
                for var, value in prefix:
                    self.set_var(var, value, True)
            return
        inner = name_node.named_children[0] if name_node.named_children else name_node
        words = self._split_words(inner, ctx, name=True)
        form = _name_form(inner)
        first_arg = len(words)
        for a in _merge_dollar(args_nodes):
            words.extend(self._split_words(a, ctx))
        if form == "computed" and not _path_tail(inner, self.src):
            self.a.problems.append(Problem(
                "dynamic", "a command name built from expansions is only known at run time",
                self._t(inner)))  # fmt: skip
            return
        if form == "variable" and (first_arg == 0 or words[0].known == ""):
            # an unset variable as the name: the next word would be run, or nothing
            nxt = words[first_arg] if first_arg < len(words) else None
            if first_arg > 0 or (nxt is not None and nxt.text.startswith("-")):
                self.a.problems.append(Problem(
                    "dynamic", "the command name is an empty variable", self._t(n)))  # fmt: skip
                return
        if not words:
            return  # `$EMPTY` alone runs nothing
        self.emit(
            words[0],
            tuple(words[1:]),
            source or self._t(n),
            ctx._replace(stdin=stdin),
            tuple(writes or ()),
            fed,
            stdin_file,
        )

    def emit(
        self,
        name: Word,
        args: tuple[Word, ...],
        source: str,
        ctx: _Ctx,
        writes: tuple[Word, ...] = (),
        fed: list[str] | None = None,
        stdin_file: Word | None = None,
    ) -> None:
        """Record one simple command, then look inside it (wrappers, payloads)."""
        if len(self.a.commands) >= MAX_COMMANDS:
            self._limit("too-complex", f"more than {MAX_COMMANDS} commands", source)

        if ctx.depth > MAX_DEPTH:
            self.a.problems.append(Problem("too-deep", "nested too deeply", source[:200]))
            return
        if _SELF_EXE.match(name.text):
            name = Word("/proc/self/exe")  # `/proc/$$/exe`: the shell, whatever the pid
        names = self._command_names(name, source)
        if names is None:
            return
        for raw in names:
            cmd_name = normalize_name(raw)
            if _SELF_EXE.match(_norm(raw)):
                cmd_name = "sh"  # the shell running the line
            if cmd_name in self.s.aliases:
                self.a.problems.append(Problem(
                    "dynamic", "an alias defined in the command line is used as a command",
                    source[:200]))  # fmt: skip
            cmd = SimpleCommand(
                name=cmd_name,
                args=args,
                source=source[:2000],
                raw_name=raw,
                upstream=ctx.upstream,
                stdin_script=fed is not None,
                writes=writes,
                via=ctx.via,
                stdin=ctx.stdin,
                stdin_file=stdin_file,
                stdin_text=tuple(fed) if fed is not None else None,
                cwd=self.s.cwd,
                forked=ctx.forked,
                function=ctx.function,
            )
            if ctx.function is not None:
                self.a.functions.setdefault(ctx.function, set()).add((cmd_name, ctx.forked))
            if cmd_name in _STOPPERS:
                self.stoppers += 1
            _unwrap(self, cmd, ctx, fed)
            if (cmd_name in self.defined or cmd_name in self.s.functions) and "/" not in raw:
                self._call(cmd, ctx)

    def _command_names(self, name: Word, source: str) -> list[str] | None:
        """The command names a name word may be; None when it cannot be known (recorded)."""
        if _FD_PATHS.match(name.text):
            self.a.problems.append(
                Problem("dynamic", "a program run from a file descriptor", source[:200])
            )
            return None
        if name.dynamic:
            tail = name.tail or ""
            base = tail.rsplit("/", 1)[-1] if "/" in tail else ""
            if not base or _has_glob(base):
                self.a.problems.append(
                    Problem("dynamic", "the command name is only known at run time", name.text)
                )
                return None
            return [tail]  # `$VENV/bin/python`: whatever the directory, the program is python
        out = []
        for v in name.values:
            if _has_glob(normalize_name(v)):
                self.a.problems.append(Problem(
                    "dynamic", "a glob as the command name is only known at run time",
                    name.text))  # fmt: skip
                return None
            out.append(v)
        return out

    def _call(self, cmd: SimpleCommand, ctx: _Ctx) -> None:
        """A call of a function defined in the line: its body again, with the call's
        arguments as $1... (``f(){ rm -rf "$1"; }; f ~``). Not into a function already being
        walked for a call (recursion), nor deeper than three calls."""
        name = cmd.name
        if name in self.inlining:
            return  # recursion: the walk in progress reports the body's problems
        if len(self.inlining) >= 3:
            self.a.problems.extend(self.deferred.get(name, ()))  # not walked: as defined
            return
        known = all(a.known is not None for a in cmd.args)
        saved = self.src, self.s.positional
        self.s.positional = tuple(a.known or "" for a in cmd.args) if known else None
        self.inlining.append(name)
        inner = ctx._replace(via=(*ctx.via, f"{name}()"), certain=False)
        try:
            if name in self.defined:
                body, self.src = self.defined[name]
                self.a.nodes += body.descendant_count
                if self.a.nodes > MAX_NODES:
                    self._limit("too-complex", f"more than {MAX_NODES} syntax elements",
                                cmd.source)  # fmt: skip
                self.node(body, inner)
            else:  # defined by an earlier command line typed into the same shell
                self.script(self.s.functions[name], inner)
        finally:
            self.inlining.pop()
            self.src, self.s.positional = saved

    # --- what commands do to the shell itself ---------------------------------------------

    def builtin_effects(self, cmd: SimpleCommand, ctx: _Ctx) -> None:
        """``cd``, ``read``, ``export``, ``source``...: what the rest of the line sees."""
        name, args = cmd.name, cmd.args
        texts = [a.text for a in args]
        if name in ("cd", "pushd", "popd", "chdir"):
            self._cd(cmd)
        elif name in ("read", "mapfile", "readarray", "getopts", "let", "printf", "wait"):
            targets: list[str] = []
            if name == "read":
                targets = [t for t in _operands(texts, "adinNptu") if _is_name(t)] or ["REPLY"]
                ks = [k for k, t in enumerate(texts) if t.startswith("-") and "a" in t]
                targets += [texts[k + 1] for k in ks if k + 1 < len(texts)]
            elif name in ("mapfile", "readarray"):
                targets = [t for t in _operands(texts, "dnOsucC") if _is_name(t)] or ["MAPFILE"]
                for k, t in enumerate(texts):
                    if t == "-C" and k + 1 < len(texts):  # a callback: code
                        self.payload(args[k + 1], ctx._replace(via=(*ctx.via, "mapfile -C")),
                                     cmd.source)  # fmt: skip
            elif name == "getopts" and len(texts) >= 2:
                targets = [texts[1]]
            elif name == "let":
                targets = [t.split("=", 1)[0] for t in texts if "=" in t]
            elif name == "wait":
                targets = [texts[k + 1] for k, t in enumerate(texts[:-1]) if t == "-p"]
            elif name == "printf" and len(texts) >= 3 and texts[0] == "-v":
                target = texts[1]
                if all(not a.dynamic for a in args[2:]):
                    out = printf_output(args[2].text, [a.text for a in args[3:]])
                    self.set_var(target, Word(out), ctx.certain)
                else:
                    self.set_var(target, _unknown(target, ("printf",)), ctx.certain)
                return
            for t in targets:
                base = t.split("[", 1)[0]
                if _is_name(base):
                    self.s.vars[base] = _unknown(base, (name,))
                    self.s.arrays[base] = None
        elif name in ("export", "declare", "typeset", "local", "readonly"):
            if any(t.startswith("-") and "n" in t for t in texts):
                self._forget_variables()
            for a in args:
                if "=" in a.text and _is_name(a.text.split("=", 1)[0].rstrip("+")):
                    var, _, val = a.text.partition("=")
                    value = Word(val, dynamic=a.dynamic, substituted=a.substituted,
                                 tail="" if a.dynamic else None)  # fmt: skip
                    self.set_var(var.rstrip("+"), value, ctx.certain)
                    self._special_assignment(var, value, ctx, cmd.source)
        elif name == "unset":
            for t in texts:
                if _is_name(t) and "-f" in texts:
                    self.s.functions.pop(t, None)
                    self.defined.pop(t, None)
                elif _is_name(t):
                    self.s.vars[t] = Word("")
                    self.s.arrays.pop(t, None)
        elif name in ("source", "."):
            self._forget_variables()
        elif name == "set":
            ops = texts[1:] if texts[:1] == ["--"] else [t for t in texts if t[:1] not in "-+"]
            if texts[:1] == ["--"] or ops:
                known = all(not a.dynamic for a in args)
                self.s.positional = tuple(ops) if known else None
        elif name == "shift":
            self.s.positional = None
        elif name == "alias":
            for t in texts:
                if "=" in t:
                    self.s.aliases.add(t.split("=", 1)[0])
        elif name == "unalias":
            self.s.aliases.difference_update(texts)

    def _cd(self, cmd: SimpleCommand) -> None:
        operands = [a for a in cmd.args if not (a.text.startswith("-") and len(a.text) > 1)]
        if cmd.name == "popd":
            new: str | None = None
        elif not operands:
            new = self.s.home
        elif operands[0].text == "-":
            new = self.s.oldcwd
        else:
            target = operands[0]
            values = {self._abs(v) for v in target.values}
            new = None if target.dynamic or len(values) != 1 else values.pop()
        self.s.oldcwd, self.s.cwd = self.s.cwd, new
        self.s.vars["PWD"] = Word(new) if new is not None else _unknown("PWD")
        old = self.s.oldcwd
        self.s.vars["OLDPWD"] = Word(old) if old is not None else _unknown("OLDPWD")

    def _abs(self, path: str) -> str | None:
        if path.startswith("/"):
            return _norm(path)
        if path == "~" or path.startswith("~/"):
            return _norm(self.s.home + path[1:])
        if self.s.cwd is None or path.startswith("~"):
            return None
        return _norm(posixpath.join(self.s.cwd, path))

    # --- payloads -------------------------------------------------------------------------

    def payload(self, arg: Word, ctx: _Ctx, source: str, *, child: bool = False) -> None:
        """Shell code in a word (``bash -c CODE``, ``eval CODE``, ``trap CODE``)."""
        if arg.dynamic:
            what = "a shell payload known only at run time"
            self.a.problems.append(Problem("dynamic", what, arg.text[:200] or source[:200]))
            return
        for value in arg.values:
            if value in self.payloads:  # `sh -c "$0 & $0" "sh -c ..."`: it runs itself
                self.a.bombs.append(f"{source[:120]} (a shell command that runs itself)")
                return
            self.payloads.append(value)
            try:
                if child:
                    self.child(lambda v=value: self.script(v, ctx._replace(depth=ctx.depth + 1)))
                else:
                    self.script(value, ctx._replace(depth=ctx.depth + 1))
            finally:
                self.payloads.pop()

    # --- words ----------------------------------------------------------------------------

    def word(self, n: Node, ctx: _Ctx) -> Word:
        """The value of a word node; commands inside it are walked as well."""
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                self._limit("too-deep", f"nested more than {MAX_NESTING} levels", self._t(n))
            if self.a.over_time():
                self._limit("too-complex", f"more than {MAX_CPU_S} s of work to check", self._t(n))
            return self._word(n, ctx)
        finally:
            self.nesting -= 1

    def _word(self, n: Node, ctx: _Ctx) -> Word:
        kind = n.type
        if kind == "word":
            raw = self._t(n, MAX_VALUE_CHARS * 4)
            return self._tilde(_unescape_word(raw))
        if kind in ("number", "variable_name", "test_operator", "regex", "extglob_pattern",
                    "heredoc_content"):  # fmt: skip
            return Word(self._t(n, MAX_VALUE_CHARS * 4))
        if kind == "raw_string":
            return Word(self._t(n, MAX_VALUE_CHARS * 4)[1:-1])
        if kind == "ansi_c_string":
            return Word(ansi_c(self._t(n, MAX_VALUE_CHARS * 4)[2:-1]))
        if kind == "string_content":
            return Word(re.sub(r"\\([$`\"\\\n])", r"\1", self._t(n, MAX_VALUE_CHARS * 4)))
        if kind in ("string", "translated_string"):
            if kind == "translated_string":
                inner = next(iter(n.named_children), None)
                return self.word(inner, ctx) if inner is not None else Word("")
            parts = [self.word(c, ctx) for c in n.named_children]
            return self._join_string(n, parts)
        if kind == "heredoc_body":
            parts = [self.word(c, ctx) for c in n.named_children]
            return self._join_string(n, parts, quotes=0) if parts else Word(self._t(n, 10**6))
        if kind == "concatenation":
            kids = n.named_children
            parts = [self.word(c, ctx) for c in kids]
            if kids and kids[0].type == "word" and parts[0].text == "~" and len(parts) > 1:
                # `~$USER`: bash leaves it alone, but `eval` and friends expand it: a home
                parts[0] = Word("~", (self.s.home,))
            return _product(parts)
        if kind == "simple_expansion":
            return self._lookup(self._t(n)[1:])
        if kind == "expansion":
            return self._expansion(n, ctx)
        if kind in ("command_substitution", "process_substitution"):
            before = len(self.a.commands)
            sub_ctx = ctx._replace(forked=True, certain=False)
            self.child(lambda: self.statements(n, sub_ctx))
            names = tuple(dict.fromkeys(c.name for c in self.a.commands[before:]))
            text = self._t(n, 400)
            if kind == "command_substitution" and len(self.a.commands) == before + 1:
                known = self._known_output(self.a.commands[before], text)
                if known is not None:
                    return known
            if kind == "process_substitution":
                return Word(text, (text,), dynamic=True, substituted=names or ("<(...)",),
                            tail="", procsub=True)  # fmt: skip
            return Word(text, (text, ""), dynamic=True, substituted=names or ("$(...)",), tail="")
        if kind == "arithmetic_expansion":
            for c in n.named_children:
                self._walk_expression(c, ctx)
            return Word(self._t(n), dynamic=True, tail="")
        if kind in _EXPRESSIONS or kind in ("variable_assignment", "array", "subscript"):
            self._walk_expression(n, ctx)
            return Word(self._t(n), dynamic=True, tail="")
        if kind == "command_name":
            return self.word(n.named_children[0], ctx) if n.named_children else Word("")
        self.a.problems.append(
            Problem("unknown-node", f"shell construct {kind!r} is not analysed", self._t(n))
        )
        return Word(self._t(n), dynamic=True, tail="")

    def _known_output(self, cmd: SimpleCommand, text: str) -> Word | None:
        """``$(pwd)`` is the cwd; ``$(mktemp -d)`` a new name in the temp directory (or in
        its -p/--tmpdir directory, or its template's): known enough to judge paths by."""
        if cmd.name == "pwd" and cmd.cwd is not None:
            return Word(cmd.cwd)
        if cmd.name in ("dirname", "basename", "realpath", "readlink", "echo", "printf"):
            return _simple_output(cmd, text)
        if cmd.name != "mktemp" or any(a.dynamic for a in cmd.args):
            return None
        texts = [a.text for a in cmd.args]
        base = self._lookup("TMPDIR").known or "/tmp"  # noqa: S108 -- mktemp's default
        template = "tmp.XXXXXXXXXX"
        i = 0
        while i < len(texts):
            t = texts[i]
            if t in ("-p", "--tmpdir") and i + 1 < len(texts):
                base, i = texts[i + 1], i + 2
                continue
            if t.startswith("--tmpdir="):
                base = t.split("=", 1)[1]
            elif not t.startswith("-"):
                template = t
                if "/" in t:
                    base = ""
            i += 1
        name = posixpath.join(base, template) if base else template
        return Word(text, (name.replace("X", "x"),), tail=None)

    def _tilde(self, value: str) -> Word:
        if not value.startswith("~"):
            return Word(value)
        head, sep, rest = value[1:].partition("/")
        if head == "":
            home = self.s.home
        elif head == "+" and self.s.cwd is not None:
            home = self.s.cwd
        elif head == "root":
            home = "/root"
        elif re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?", head):
            home = f"/home/{head}"  # another user's home: where it usually is
        else:
            return Word(value)
        return Word(value, (home.rstrip("/") + sep + rest if rest or sep else home,))

    def _join_string(self, n: Node, parts: list[Word], quotes: int = 1) -> Word:
        """Rebuild a quoted value from the source so the text between parts is kept."""
        pieces: list[Word] = []
        start = n.start_byte + quotes
        end = n.end_byte - quotes
        pos = start
        for c, w in zip(n.named_children, parts, strict=True):
            if c.start_byte > pos:
                gap = self.src[pos : c.start_byte].decode("utf-8", "replace")
                pieces.append(Word(gap))
            pieces.append(w)
            pos = max(pos, c.end_byte)
        if end > pos:
            pieces.append(Word(self.src[pos:end].decode("utf-8", "replace")))
        return _product(pieces) if pieces else Word("")

    def _lookup_word(self, name: str) -> Word:
        return self._lookup(name)

    def _lookup(self, name: str) -> Word:
        if name in self.s.vars:
            return self.s.vars[name]
        if name.isdigit() or name in ("@", "*", "#"):
            pos = self.s.positional
            if name == "0" or pos is None:
                return _unknown(name)
            if name == "#":
                return Word(str(len(pos)))
            if name in ("@", "*"):
                return Word(" ".join(pos))
            i = int(name)
            return Word(pos[i - 1] if i <= len(pos) else "")
        if name == "PWD" and self.s.cwd is not None:
            return Word(self.s.cwd)
        if name in _SHELL_SET or name in ("?", "$", "!", "-", "_") or not self.s.env_known:
            return _unknown(name)
        return Word("")

    def _expansion(self, n: Node, ctx: _Ctx) -> Word:
        text = self._t(n, MAX_VALUE_CHARS)
        kids = n.named_children
        name_node = next((c for c in kids if c.type in ("variable_name", "special_variable_name")),
                         None)  # fmt: skip
        operand_nodes = [c for c in kids if c is not name_node]
        operand_words = [self.word(c, ctx) for c in operand_nodes]  # walks $(...) inside
        inner = text[2:-1]
        if "@" in inner and re.search(r"@[PEAKaQUuLk]\s*$", inner):
            if re.search(r"@P\s*$", inner):
                self.a.problems.append(
                    Problem("dynamic", "prompt expansion ${...@P} can run commands", text)
                )
            return Word(text, (text, ""), dynamic=True, tail="")
        m = re.fullmatch(r"([#!]?)([A-Za-z_]\w*|\d+|[@*#?$!_-])(.*)", inner, re.S)
        if m is None or (name_node is None and not m.group(2)):
            return Word(text, (text, ""), dynamic=True, tail="")
        prefix, name, op = m.group(1), m.group(2), m.group(3)
        if prefix == "!":
            return Word(text, (text, ""), dynamic=True, tail="")  # indirection
        if op.startswith("["):
            elements = self._array(name, op)
            if elements is None or prefix:
                origin = self.s.vars[name].substituted if name in self.s.vars else ()
                return Word(text, (text, ""), dynamic=True, substituted=origin, tail="")
            return _product(_spaced(list(elements))) if elements else Word("")
        value = self._lookup(name)
        if prefix == "#":
            return Word(str(len(value.text)) if not value.dynamic else text,
                        dynamic=value.dynamic, tail="" if value.dynamic else None)  # fmt: skip
        if not op:
            return value
        operand = _product(operand_words) if operand_words else Word("")
        dm = re.match(r"(:?)([-=?+])", op)
        if dm is not None:
            colon, kind = dm.group(1), dm.group(2)
            empty = value.known == "" if colon else (value.known == "" and name not in self.s.vars)
            if kind in "-=":
                if value.known is not None and not empty:
                    return value
                result = operand if value.known is not None else _union(value, operand)
                if kind == "=" and _is_name(name):
                    self.set_var(name, result, ctx.certain)
                if value.dynamic:
                    return Word(text, tuple(v for v in result.values if v != ""),
                                dynamic=True, substituted=result.substituted, tail="")  # fmt: skip
                return result
            if kind == "?":
                if value.dynamic:  # never empty: the shell stops the line when it is
                    vals = tuple(v for v in value.values if v != "")
                    return Word(text, vals or (text,), dynamic=True, tail="")
                if empty or value.known == "":
                    # the shell stops the line here: nothing after it runs with this value
                    return Word(text, dynamic=True, tail="")
                return value
            # `+`: the operand when set
            if value.known is not None:
                return operand if not empty else Word("")
            return Word(text, (*operand.values, ""), dynamic=True, tail="")
        if value.dynamic:
            if name == "HOME":
                return Word(text, (self.s.home,), dynamic=True, tail="")
            return Word(text, (text, ""), dynamic=True, tail="")
        return _string_operation(value, op, operand, text)

    def _array(self, name: str, op: str) -> tuple[Word, ...] | None:
        """The elements ``${name[...]}`` stands for, when known: ``[@]``/``[*]``, ``[N]``."""
        m = re.fullmatch(r"\[\s*(@|\*|\d+)\s*\]", op)
        if m is None:
            return None
        if name in self.s.arrays:
            elements = self.s.arrays[name]
        elif name in self.s.vars:  # a scalar is an array of one
            elements = (self.s.vars[name],)
        elif self.s.env_known:
            elements = ()
        else:
            return None
        if elements is None:
            return None
        if m.group(1) in ("@", "*"):
            return elements
        i = int(m.group(1))
        return (elements[i],) if i < len(elements) else ()

    def _walk_expression(self, n: Node, ctx: _Ctx) -> None:
        if n.type in ("command_substitution", "process_substitution", "expansion",
                      "simple_expansion"):  # fmt: skip
            self.word(n, ctx)
            return
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                self._limit("too-deep", f"nested more than {MAX_NESTING} levels", self._t(n))
            for c in n.named_children:
                self._walk_expression(c, ctx)
        finally:
            self.nesting -= 1

    def _split_words(self, n: Node, ctx: _Ctx, name: bool = False) -> list[Word]:
        """What the shell makes of one word node: an unquoted ``$x`` whose known value has
        spaces is several words (``x="rm -rf /"; $x``), an empty one none; an unquoted
        ``{a,b}`` is brace-expanded into several words."""
        self.a.words += 1
        if self.a.words > MAX_WORDS:
            self._limit("too-complex", f"more than {MAX_WORDS} words", self._t(n, 200))
        word = self.word(n, ctx)
        text = self._t(n, 16)
        if text in ("$@", "$*", "${@}", "${*}", '"$@"', '"${@}"') and self.s.positional is not None:
            return [Word(p) for p in self.s.positional]  # each parameter its own word
        each = re.fullmatch(r'"?\$\{(\w+)\[[@*]\]\}"?', self._t(n, 200))
        if each is not None:  # "${arr[@]}": each element its own word
            elements = self._array(each.group(1), "[@]")
            if elements is not None:
                return list(elements)
            return [word]
        if n.type in ("simple_expansion", "expansion"):
            if not word.dynamic and len(word.values) == 1:
                return [Word(p) for p in word.text.split()]
            return [word]
        if n.type in ("word", "concatenation") and "{" in self._t(n):
            if not word.dynamic and _unquoted_only(n):
                expanded = brace_expand(self._t(n))
                if expanded is not None:
                    return [self._tilde(x) for x in expanded if x != ""]
            elif name and _unquoted_only(n) and brace_expand(self._t(n)) is not None:
                self.a.problems.append(Problem(
                    "dynamic", "brace expansion in a command name", self._t(n)))  # fmt: skip
        return [word]

    # --- guards ---------------------------------------------------------------------------

    def _check_newlines(self, n: Node) -> None:
        """tree-sitter-bash can fold a command on the next line into this one's arguments."""
        kids = n.named_children
        for i in range(1, len(kids)):
            gap = self.src[kids[i - 1].end_byte : kids[i].start_byte]
            joined = gap.replace(b"\\\n", b"")
            if b"\n" in joined or (gap and not joined):
                # a line break tree-sitter folded into the words, or `r\<newline>m`, which bash
                # reads as one word (`rm`) and tree-sitter as two
                self.a.problems.append(
                    Problem("misparse", "a line break inside one command's words", self._t(n))
                )
                return

    def _test_indirection(self, n: Node) -> None:
        # `[[ -v 'a[$(cmd)]' ]]` evaluates the subscript: a literal that is code.
        text = self._t(n)
        if re.search(r"-v\s", text) and ("$(" in text or "`" in text):
            self.a.problems.append(Problem("dynamic", "a test -v subscript can run commands", text))

    def _literal_output(self, n: Node, ctx: _Ctx) -> list[str] | None:
        """What ``echo``/``printf`` of literals, or ``cat`` of a heredoc, writes; else None."""
        cmd_node = n.child_by_field_name("body") if n.type == "redirected_statement" else n
        if cmd_node is None or cmd_node.type != "command":
            return None
        name_node = cmd_node.child_by_field_name("name")
        if name_node is None:
            return None
        probe = _Walker(Analysis(), self.s.copy())
        probe.src = self.src
        name = normalize_name(_unescape_word(self._t(name_node)))
        try:
            words = [probe.word(a, ctx) for a in _merge_dollar(
                cmd_node.children_by_field_name("argument"))]  # fmt: skip
        except _Limit:
            return None
        if any(w.dynamic for w in words):
            return None
        texts = [w.text for w in words]
        if name == "echo":
            newline = "\n"
            while texts and re.fullmatch(r"-[neE]+", texts[0]):
                newline = "" if "n" in texts[0] else newline
                texts = texts[1:]
            plain = " ".join(texts) + newline
            return list(dict.fromkeys([plain, ansi_c(plain)]))  # dash's echo reads escapes
        if name == "printf" and texts:
            if texts[0] == "--":
                texts = texts[1:]
            return [printf_output(texts[0], texts[1:])] if texts else None
        if name == "cat" and not words and n.type == "redirected_statement":
            for r in n.named_children:
                if r.type == "heredoc_redirect":
                    b = next((c for c in r.named_children if c.type == "heredoc_body"), None)
                    if b is None:
                        return [""]
                    value = probe.word(b, ctx)
                    return None if value.dynamic else [value.text]
                if r.type == "herestring_redirect":
                    value = _product(_spaced([probe.word(c, ctx) for c in r.named_children]))
                    return None if value.dynamic else [value.text + "\n"]
        return None


def _simple_output(cmd: SimpleCommand, text: str) -> Word | None:
    """What ``dirname``/``basename``/``realpath``/``readlink -f``/``echo``/``printf`` of known
    words print (without the trailing newline, as ``$(...)`` drops it)."""
    if any(a.known is None for a in cmd.args) or cmd.stdin_script:
        return None
    texts = [a.known or "" for a in cmd.args]
    ops = [t for t in texts if not t.startswith("-")]
    if cmd.name == "printf":
        return Word(text, (printf_output(texts[0], texts[1:]).rstrip("\n"),)) if texts else None
    if cmd.name == "echo":
        return Word(text, (" ".join(t for t in texts if not re.fullmatch(r"-[neE]+", t)),))
    if len(ops) != 1:
        return None
    path = ops[0]
    if cmd.name == "dirname":
        out = posixpath.dirname(path.rstrip("/")) or ("/" if path.startswith("/") else ".")
    elif cmd.name == "basename":
        out = posixpath.basename(path.rstrip("/"))
    elif cmd.name == "readlink" and not any(t in ("-f", "-e", "-m") for t in texts):
        return None
    elif cmd.cwd is not None or path.startswith("/"):  # realpath, readlink -f
        out = _norm(posixpath.join(cmd.cwd or "/", path))
    else:
        return None
    return Word(text, (out,))


def _loop_values(name: str, values: list[Word]) -> Word:
    out: list[str] = []
    dynamic = False
    subs: list[str] = []
    for v in values:
        dynamic = dynamic or v.dynamic
        subs.extend(v.substituted)
        out.extend(x for x in v.values if x)
        if any(c in v.text for c in "*?["):
            dynamic = True  # a glob: the names it matches
    if dynamic or not out or len(out) > MAX_ALTERNATIVES:
        vals = tuple(dict.fromkeys(out))[:MAX_ALTERNATIVES]
        return Word(f"${name}", (f"${name}", *vals), dynamic=True,
                    substituted=tuple(dict.fromkeys(subs)), tail="")  # fmt: skip
    uniq = tuple(dict.fromkeys(out))
    return Word(uniq[0], uniq if len(uniq) > 1 else ())


def _string_operation(value: Word, op: str, operand: Word, text: str) -> Word:
    """``${x%pat}``, ``${x#pat}``, ``${x/a/b}``, ``${x:1:2}``, ``${x^^}`` on a known value."""
    v = value.text
    pattern = operand.text
    try:
        if op.startswith(("%%", "%", "##", "#")):
            greedy = op.startswith(("%%", "##"))
            suffix = op.startswith("%")
            # suffixes longest first, prefixes shortest first
            cands = [v[i:] if suffix else v[:i] for i in range(len(v) + 1)]
            # `%%`: the longest suffix, `#`: the shortest prefix; `%` and `##` the other way
            ordered = cands if greedy == suffix else list(reversed(cands))

            for c in ordered:
                if fnmatch.fnmatchcase(c, pattern or ""):
                    return Word(v[: len(v) - len(c)] if suffix else v[len(c) :])
            return Word(v)
        if op.startswith("/"):
            parts = op[1:].lstrip("/#%").split("/", 1)
            old = parts[0] if parts else ""
            new = parts[1] if len(parts) > 1 else ""
            if any(ch in old for ch in "*?[$`\\") or "$" in new:
                return Word(text, (text, ""), dynamic=True, tail="")
            return Word(v.replace(old, new) if op.startswith("//") else v.replace(old, new, 1))
        if op.startswith(":") and re.fullmatch(r":\s*-?\d+(:\s*-?\d+)?", op):
            nums = [int(x) for x in op[1:].split(":")]
            start = nums[0] if nums[0] >= 0 else max(0, len(v) + nums[0])
            if len(nums) == 1:
                return Word(v[start:])
            ln = nums[1]
            return Word(v[start : start + ln] if ln >= 0 else v[start : len(v) + ln])
        if op in ("^^", "^"):
            return Word(v.upper() if op == "^^" else v[:1].upper() + v[1:])
        if op in (",,", ","):
            return Word(v.lower() if op == ",," else v[:1].lower() + v[1:])
    except (ValueError, IndexError):
        pass
    return Word(text, (text, ""), dynamic=True, tail="")


def _spaced(words: list[Word]) -> list[Word]:
    out: list[Word] = []
    for i, w in enumerate(words):
        if i:
            out.append(Word(" "))
        out.append(w)
    return out or [Word("")]


def _is_name(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_]\w*", text))


def _operands(texts: list[str], value_flags: str) -> list[str]:
    """Operands of a builtin whose short flags in ``value_flags`` take a value."""
    out: list[str] = []
    i = 0
    while i < len(texts):
        t = texts[i]
        if t == "--":
            out.extend(texts[i + 1 :])
            break
        if t.startswith("-") and len(t) > 1:
            if t[-1] in value_flags and len(t) == 2:
                i += 1
            i += 1
            continue
        out.append(t)
        i += 1
    return out


def _has_glob(text: str) -> bool:
    return "*" in text or "?" in text or bool(re.search(r"\[[^\]]+\]", text))


def _endless(n: Node, kind: str, src: bytes) -> bool:
    """``while true``, ``while :``, ``until false``, ``for ((;;))``, ``while [ 1 ]``."""
    text = src[n.start_byte : min(n.end_byte, n.start_byte + 200)].decode("utf-8", "replace")
    if kind == "c_style_for_statement":
        return bool(re.match(r"for\s*\(\(\s*[^;]*;\s*;", text))
    if kind != "while_statement":
        return False
    return bool(re.match(
        r"(while\s+(true|:|/bin/true|/usr/bin/true|\[\s*1\s*\]|\[\[\s*1\s*\]\]|\(\(\s*1\s*\)\))"
        r"|until\s+(false|/bin/false|!\s*true))\s*(;|\n|do\b)", text))  # fmt: skip


def _reads_input(n: Node, src: bytes) -> bool:
    """``while read ...``: fed by ``yes``, it never ends."""
    text = src[n.start_byte : min(n.end_byte, n.start_byte + 200)].decode("utf-8", "replace")
    return bool(re.match(r"while\s+(IFS=\S*\s+)?read\b", text))


def _merge_dollar(nodes: list[Node]) -> list[Node]:
    """tree-sitter-bash reads ``$"text"`` in an argument as a bare ``$`` then a string: bash
    reads one word (a translated string). Drop the ``$``."""
    out = []
    for i, c in enumerate(nodes):
        if not c.is_named and c.type == "$":
            nxt = nodes[i + 1] if i + 1 < len(nodes) else None
            if nxt is not None and nxt.start_byte == c.end_byte and nxt.type == "string":
                continue
        if c.is_named:
            out.append(c)
    return out


_EXPANDING = frozenset({"simple_expansion", "expansion", "command_substitution",
                        "arithmetic_expansion", "process_substitution"})  # fmt: skip


def _name_form(n: Node) -> str:
    """How a command name is written: ``literal``; ``variable`` (``$x``, ``"${x}"``, one
    expansion and nothing else: resolved from what is known); ``computed`` (expansions joined
    with other text: ``${x}m``, ``$(echo r)m``; only ``$DIR/literal/name`` is accepted)."""
    if n.type in ("simple_expansion", "expansion"):
        return "variable"
    kids = n.named_children
    if n.type == "string" and len(kids) == 1 and kids[0].type in ("simple_expansion",
                                                                    "expansion"):  # fmt: skip
        return "variable"
    todo = list(kids) if n.type in ("concatenation", "string") else [n]
    while todo:
        c = todo.pop()
        if c.type in _EXPANDING:
            return "computed"
        if c.type in ("string", "concatenation"):
            todo.extend(c.named_children)
    return "literal"


def _path_tail(n: Node, src: bytes) -> bool:
    """``$VENV/bin/python``, ``"$HOME/.local/bin/tool"``: after the last expansion comes a
    literal path whose last part names the program, whatever the directory is."""
    last_end = None
    todo = [n]
    while todo:
        c = todo.pop()
        if c.type in _EXPANDING:
            last_end = c.end_byte if last_end is None else max(last_end, c.end_byte)
        elif c.type in ("string", "concatenation"):
            todo.extend(c.named_children)
    if last_end is None:
        return True
    tail = src[last_end : n.end_byte].decode("utf-8", "replace").rstrip('"')
    base = tail.rsplit("/", 1)[-1]
    return "/" in tail and bool(base) and not _has_glob(base) and "$" not in base


def _unquoted_only(n: Node) -> bool:
    return n.type == "word" or all(c.type in ("word",) for c in n.named_children)


def _text(n: Node | None, data: bytes) -> str:
    if n is None:
        return ""
    return data[n.start_byte : min(n.end_byte, n.start_byte + 2000)].decode("utf-8", "replace")


def _first_error(n: Node) -> Node | None:
    todo = [n]
    while todo:
        cur = todo.pop()
        if cur.type == "ERROR" or cur.is_missing:
            return cur
        todo.extend(reversed([c for c in cur.children if c.has_error or c.is_missing]))
    return None


def _after_pipe(child: Node) -> bool:
    prev = child.prev_sibling
    return prev is not None and prev.type in ("|", "|&")


def _flatten(n: Node, kind: str) -> list[Node]:
    """The operands of nested ``kind`` nodes, in order, without recursion."""
    out: list[Node] = []
    todo = [n]
    while todo:
        cur = todo.pop()
        if cur.type == kind:
            todo.extend(reversed(cur.named_children))
        else:
            out.append(cur)
    return out


def _stage_names(n: Node, src: bytes) -> list[str]:
    if n.type == "redirected_statement":
        body = n.child_by_field_name("body")
        return _stage_names(body, src) if body is not None else []
    if n.type == "command":
        name = n.child_by_field_name("name")
        return [normalize_name(_unescape_word(_text(name, src)))] if name is not None else []
    return [n.type]


# --- wrappers and payloads ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Wrap:
    """How a wrapper finds the command it runs."""

    values: frozenset[str] = frozenset()  # options taking a separate value (short and long)
    positionals: int = 0  # operands before the command (timeout DURATION, chroot DIR)
    shell_flags: str = ""  # short flags meaning "through a shell" (sudo -s/-i)
    shell_long: tuple[str, ...] = ()
    code_flags: tuple[str, ...] = ()  # options whose value is a shell command line (su -c)
    bare_shell: bool = False  # with no command: an interactive shell on stdin (su, chroot)
    query_flags: str = ""  # flags that make it not run the command (command -v)


def _w(values: str = "", **kw: object) -> _Wrap:
    return _Wrap(values=frozenset(values.split()), **kw)  # type: ignore[arg-type]


_WRAPPERS: dict[str, _Wrap] = {
    "sudo": _w("-u -g -C -D -h -p -r -t -U -T -R --user --group --close-from --chdir --host "
               "--prompt --role --type --other-user --command-timeout --chroot",
               shell_flags="si", shell_long=("--shell", "--login")),
    "doas": _w("-u -C", shell_flags="s"),
    "su": _w("-s --shell -g --group -G --supp-group -w --whitelist-environment",
             code_flags=("-c", "--command", "--session-command"), bare_shell=True),
    "runuser": _w("-u --user -g --group -G --supp-group -s --shell -w --whitelist-environment",
                  code_flags=("-c", "--command", "--session-command")),
    "script": _w("-t -T -I -O -B -E -o -m --timing --log-timing --log-in --log-out --log-io "
                 "--echo --output-limit --logging-format",
                 code_flags=("-c", "--command"), bare_shell=True),
    "flock": _w("-w --timeout -E --conflict-exit-code", positionals=1,
                code_flags=("-c", "--command")),
    "sg": _w("", positionals=1, code_flags=("-c",)),
    "newgrp": _w("", bare_shell=True),
    "timeout": _w("-s --signal -k --kill-after", positionals=1),
    "nice": _w("-n --adjustment"),
    "ionice": _w("-c --class -n --classdata -t"),
    "nohup": _w(), "setsid": _w(), "caffeinate": _w("-t -w"), "unbuffer": _w(),
    "stdbuf": _w("-i -o -e --input --output --error"),
    "time": _w("-f -o --format --output"),
    "command": _w(query_flags="vV"), "builtin": _w(), "exec": _w("-a"),
    "coproc": _w(), "catchsegv": _w(), "torsocks": _w(), "tsocks": _w(),
    "proxychains": _w("-f"), "proxychains4": _w("-f"), "eatmydata": _w(), "nocache": _w(),
    "fakeroot": _w("-l -s -i --lib --faked"), "fakechroot": _w(), "dumb-init": _w(),
    "tini": _w("-s -e -p"), "dbus-run-session": _w("--config-file --dbus-daemon"),
    "dbus-launch": _w(), "xvfb-run": _w("-n -s -e -f -p --server-num --server-args "
                                        "--error-file --auth-file --xauth-protocol"),
    "rlwrap": _w("-a -b -C -D -e -f -F -g -h -H -l -m -M -N -O -p -P -q -r -s -S -t -w -z"),
    "firejail": _w(), "chroot": _w("--userspec --groups", positionals=1, bare_shell=True),
    "unshare": _w("--map-user --map-group --map-users --map-groups --setuid --setgid -S -G "
                  "--root -R --wd -w --propagation --setgroups --kill-child", bare_shell=True),
    "nsenter": _w("-t --target -S --setuid -G --setgid -r --root -w --wd --env", bare_shell=True),
    "setpriv": _w("--reuid --regid --ruid --rgid --euid --egid --groups --inh-caps "
                  "--ambient-caps --bounding-set --securebits --pdeathsig --selinux-label "
                  "--apparmor-profile --landlock-access --landlock-rule"),
    "pkexec": _w("--user"),
    "systemd-run": _w("-p --property -u --unit -E --setenv -M --machine --slice --description "
                      "--working-directory -d --uid --gid --nice --on-active --on-boot "
                      "--on-calendar -H --host", shell_flags="S", shell_long=("--shell",)),
    "taskset": _w("", positionals=1), "chrt": _w("-T -P -D", positionals=1),
    "numactl": _w("-C -N -m -p -i --physcpubind --cpunodebind --membind --preferred "
                  "--interleave"),
    "prlimit": _w("-p --pid"), "cgexec": _w("-g"),
    "strace": _w("-e -o -p -s -u -E -a -b -I -O -P -S -X -U"),
    "ltrace": _w("-e -o -p -s -u -a -n -A -D -F -l -x"),
    "valgrind": _w(), "perf": _w("-e -o -p -t -c -F -g -C --event --output --pid"),
    "sshpass": _w("-p -f -d -P"), "envdir": _w("", positionals=1),
    "setuidgid": _w("", positionals=1), "faketime": _w("-f", positionals=1),
    "chpst": _w("-u -U -e -/ -n -l -L -m -d -o -p -f -c -r -t"),
    "softlimit": _w("-m -a -d -s -l -f -c -o -p -t -r"),
    "daemonize": _w("-a -c -e -E -o -p -l -u"),
    "npx": _w("-p --package -c --call"), "bunx": _w("-p --package"),
    "mpirun": _w("-n -np -H --host --hostfile"), "srun": _w("-n -N -p -t -c -J"),
    "gtimeout": _w("-s --signal -k --kill-after", positionals=1),
}  # fmt: skip
#: ``TOOL SUBCOMMAND [options] CMD...``: tools that run a command in an environment.
_SUB_WRAPPERS: dict[tuple[str, str], _Wrap] = {
    ("uv", "run"): _w("--with --with-editable --with-requirements -p --python --project "
                      "--directory --env-file --group --extra --package --index --index-url "
                      "--extra-index-url --find-links -f"),
    ("uvx", ""): _w("--with --from -p --python"),
    ("poetry", "run"): _w("-C --directory -P --project"),
    ("pipenv", "run"): _w(), ("pdm", "run"): _w("-p --project"), ("hatch", "run"): _w(),
    ("rye", "run"): _w(), ("pixi", "run"): _w("-e --environment --manifest-path"),
    ("conda", "run"): _w("-n --name -p --prefix"), ("mamba", "run"): _w("-n --name -p --prefix"),
    ("micromamba", "run"): _w("-n --name -p --prefix"),
    ("bundle", "exec"): _w(), ("mise", "exec"): _w(), ("asdf", "exec"): _w(),
    ("direnv", "exec"): _w("", positionals=1), ("dotenv", "run"): _w(),
    ("op", "run"): _w("--env-file"), ("doppler", "run"): _w("-p --project -c --config"),
    ("pnpm", "exec"): _w(), ("pnpm", "dlx"): _w(), ("yarn", "exec"): _w(),
    ("nix", "shell"): _w(), ("nix-shell", ""): _w(),
}  # fmt: skip
_XARGS_VALUES = frozenset(
    {"-a", "-d", "-E", "-e", "-I", "-L", "-l", "-n", "-P", "-s", "--arg-file", "--delimiter",
     "--eof", "--max-lines", "--max-args", "--max-procs", "--max-chars", "--process-slot-var",
     "--replace"}
)  # fmt: skip
_SSH_VALUES = frozenset(
    {"-b", "-c", "-D", "-E", "-e", "-F", "-I", "-i", "-J", "-L", "-l", "-m", "-O", "-o", "-p",
     "-Q", "-R", "-S", "-W", "-w", "-B"}
)  # fmt: skip
_SHELL_VALUES = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})
#: Options of other tools whose value a local shell runs (exec hooks).
_EXEC_HOOKS = (
    ("tar", re.compile(r"^--(checkpoint-action=exec|to-command|use-compress-program|"
                       r"info-script|new-volume-script)=(.*)$", re.S)),
    ("tar", re.compile(r"^-(I)(.+)$", re.S)),
    ("rsync", re.compile(r"^--(rsh|rsync-path)=(.*)$", re.S)),
    ("ssh", re.compile(r"^-o(\s*|=)?(?:ProxyCommand|LocalCommand|KnownHostsCommand)[=\s]+(.*)$",
                       re.S | re.I)),
    ("git", re.compile(r"^(-c)?(?:alias\.[\w-]+=!|core\.(?:pager|editor|sshCommand|fsmonitor|"
                       r"hooksPath)=|diff\.external=|sequence\.editor=|credential\.helper=!)(.*)$",
                       re.S | re.I)),
)  # fmt: skip


def _strip_options(
    args: tuple[Word, ...], spec: _Wrap, *, stop_at_code: bool = False
) -> tuple[int, set[str], Word | None]:
    """Index of the first argument after a wrapper's options, the options seen, and the value
    of a code option (``su -c CODE``), if any."""
    seen: set[str] = set()
    i = 0
    while i < len(args):
        t = args[i].text
        if t == "--":
            return i + 1, seen, None
        if not t.startswith("-") or t == "-":
            return i, seen, None
        if t.startswith("--"):
            key, eq, val = t.partition("=")
            full = _long_match(key, (*spec.values, *spec.code_flags, *spec.shell_long))
            seen.add(full or key)
            if full in spec.code_flags:
                return i + 1, seen, (Word(val) if eq else args[i + 1] if i + 1 < len(args)
                                     else Word(""))  # fmt: skip
            i += 1 if eq or full not in spec.values else 2
            continue
        if t in spec.values:
            seen.add(t)
            i += 2
            continue
        # a cluster of short flags: `-sE`, `-lc CODE`, `-oL`
        letters = t[1:]
        for k, ch in enumerate(letters):
            seen.add("-" + ch)
            if "-" + ch in spec.code_flags:
                rest = letters[k + 1 :]
                return i + 1, seen, (Word(rest) if rest else args[i + 1] if i + 1 < len(args)
                                     else Word(""))  # fmt: skip
            if "-" + ch in spec.values:
                if k == len(letters) - 1:
                    i += 1  # the value is the next argument
                break
        i += 1
    return i, seen, None


def _long_match(key: str, options: tuple[str, ...] | frozenset[str]) -> str | None:
    """GNU getopt accepts any unambiguous prefix of a long option (``--recu``)."""
    longs = [o for o in options if o.startswith("--")]
    if key in longs:
        return key
    hits = [o for o in longs if o.startswith(key) and len(key) > 2]
    return hits[0] if len(hits) == 1 else None


def _unwrap(w: _Walker, cmd: SimpleCommand, ctx: _Ctx, fed: list[str] | None) -> None:
    """Record the command, then find the commands it runs: wrappers' inner commands and
    literal payloads."""
    w.a.commands.append(cmd)
    w.builtin_effects(cmd, ctx)
    name, args = cmd.name, cmd.args
    via = (*cmd.via, name)
    inner_ctx = ctx._replace(depth=ctx.depth + 1, via=via)
    spec = _WRAPPERS.get(name)
    sub_spec = None
    if args:
        sub_spec = _SUB_WRAPPERS.get((name, args[0].text))
    elif (name, "") in _SUB_WRAPPERS:
        sub_spec = _SUB_WRAPPERS[(name, "")]
    if sub_spec is None and (name, "") in _SUB_WRAPPERS:
        sub_spec = _SUB_WRAPPERS[(name, "")]
        args = (Word(""), *args)
    if sub_spec is not None:
        start, _seen, _code = _strip_options(args[1:], sub_spec)
        inner = args[1 + start + sub_spec.positionals :]
        if inner:
            w.emit(inner[0], tuple(inner[1:]), cmd.source, inner_ctx, cmd.writes, fed,
                   cmd.stdin_file)  # fmt: skip
        return
    if spec is not None:
        _run_wrapper(w, cmd, spec, inner_ctx, fed)
    elif name == "env":
        inner = _env_inner(w, cmd, inner_ctx)
        if inner:
            w.emit(inner[0], tuple(inner[1:]), cmd.source, inner_ctx, cmd.writes, fed,
                   cmd.stdin_file)  # fmt: skip
    elif name in ("busybox", "toybox") and args and not args[0].text.startswith("-"):
        w.emit(args[0], tuple(args[1:]), cmd.source, ctx._replace(via=via), cmd.writes, fed,
               cmd.stdin_file)  # fmt: skip
    elif name in ("xargs", "parallel"):
        _xargs(w, cmd, inner_ctx)
    elif name == "find":
        _find_exec(w, cmd, inner_ctx)
    elif name == "watch":
        i, _seen, _c = _strip_options(args, _w("-n --interval -q --equexit"))
        if i < len(args):
            w.payload(_product(_spaced(list(args[i:]))), ctx._replace(via=via), cmd.source,
                      child=True)  # fmt: skip
    elif name == "ssh":
        i, _seen, _c = _strip_options(args, _Wrap(values=_SSH_VALUES))
        for k, a in enumerate(args[:i]):
            _hooks(w, "ssh", a, inner_ctx)
            if a.text == "-o" and k + 1 < len(args):
                _hooks(w, "ssh", Word("-o" + args[k + 1].text, dynamic=args[k + 1].dynamic),
                       inner_ctx)  # fmt: skip
        rest = args[i + 1 :]  # after the host
        if rest:
            w.payload(_product(_spaced(list(rest))), ctx._replace(via=(*via, "remote")),
                      cmd.source, child=True)  # fmt: skip
    elif name == "alias":
        for a in args:  # `alias ll='rm -rf /'`: the value runs wherever the name is used
            if "=" in a.text:
                value = a.text.split("=", 1)[1]
                w.payload(Word(value, dynamic=a.dynamic), ctx._replace(via=via), cmd.source,
                          child=True)  # fmt: skip
    elif name == "trap" and args and not args[0].text.startswith("-"):
        w.payload(args[0], ctx._replace(via=via), cmd.source, child=True)
    elif name == "eval":
        if args and args[0].text == "--":
            args = args[1:]
        code = _product(_spaced(list(args))) if args else Word("")
        if code.dynamic and _trusted_generator(code.text):
            w._forget_variables()  # it may set anything
        elif code.dynamic:
            w.a.problems.append(
                Problem("dynamic", "eval of a value known only at run time", cmd.source[:200])
            )
            w._forget_variables()
        else:
            w.payload(code, ctx._replace(via=via), cmd.source)
    elif name in ("source", "."):
        if args:
            _program(w, cmd, args[0], ctx, fed, "source")
    elif is_shell(name):
        _shell(w, cmd, ctx, fed)
    elif interpreter(name) is not None:
        _interpreter(w, cmd, ctx, fed)
    elif name in ("at", "batch"):
        if any(a.text == "-f" for a in args):
            return
        _program(w, cmd, None, ctx, fed, name)
    elif name in ("awk", "gawk", "mawk", "nawk"):
        _inline_code_strings(w, cmd, ctx)
    else:
        if name == "rsync":
            for k, a in enumerate(args[:-1]):
                if a.text in ("-e", "--rsh") or (a.text.startswith("-") and not a.text.startswith(
                        "--") and a.text.endswith("e") and "e" in a.text[1:]):  # fmt: skip
                    w.payload(args[k + 1], inner_ctx._replace(via=(*via, "rsync -e")),
                              cmd.source, child=True)  # fmt: skip
        for tool, _rx in _EXEC_HOOKS:
            if tool == name:
                for a in args:
                    _hooks(w, name, a, inner_ctx)
                break


def _hooks(w: _Walker, tool: str, arg: Word, ctx: _Ctx) -> None:
    for name, rx in _EXEC_HOOKS:
        if name != tool:
            continue
        m = rx.match(arg.text)
        if m is not None:
            code = m.group(m.lastindex or 1)
            w.payload(Word(code, dynamic=arg.dynamic), ctx._replace(via=(*ctx.via, "exec hook")),
                      arg.text, child=True)  # fmt: skip


def _run_wrapper(w: _Walker, cmd: SimpleCommand, spec: _Wrap, ctx: _Ctx,
                 fed: list[str] | None) -> None:  # fmt: skip
    args = cmd.args
    if cmd.name == "nice" and args and re.fullmatch(r"-\d+", args[0].text):
        args = args[1:]
    if cmd.name in ("su", "sg", "newgrp") or (cmd.name == "runuser" and not any(
            a.text in ("-u", "--user") or a.text.startswith("--user=") for a in args)):  # fmt: skip
        _su(w, cmd, spec, args, ctx, fed)
        return
    i, seen, code = _strip_options(args, spec)
    if code is not None:
        w.payload(code, ctx, cmd.source, child=True)
        return
    if any(o.lstrip("-") and set(o.lstrip("-")) & set(spec.query_flags) for o in seen):
        return  # `command -v rm`: a question, nothing runs
    shell_mode = any(len(o) == 2 and o[1] in spec.shell_flags for o in seen) or any(
        o in spec.shell_long for o in seen
    )
    rest = args[i + spec.positionals :]
    if spec.code_flags and rest and rest[0].text.startswith("-"):
        j, _seen, code = _strip_options(rest, spec)  # `flock FILE -c CODE`
        if code is not None:
            w.payload(code, ctx, cmd.source, child=True)
            return
        rest = rest[j:]
    if shell_mode:
        # `sudo -s CMD` runs CMD through the user's shell; `sudo -s` alone reads its stdin
        if rest:
            w.emit(Word("sh"), (Word("-c"), _product(_spaced(list(rest)))), cmd.source, ctx,
                   cmd.writes, fed, cmd.stdin_file)  # fmt: skip
        else:
            w.emit(Word("sh"), (), cmd.source, ctx, cmd.writes, fed, cmd.stdin_file)
        return
    if cmd.name == "script":  # `script [FILE]`: an interactive $SHELL on its stdin
        w.emit(Word("sh"), (), cmd.source, ctx, cmd.writes, fed, cmd.stdin_file)
        return
    if not rest:
        if spec.bare_shell:
            w.emit(Word("sh"), (), cmd.source, ctx, cmd.writes, fed, cmd.stdin_file)
        return
    w.emit(rest[0], tuple(rest[1:]), cmd.source, ctx, cmd.writes, fed, cmd.stdin_file)


def _su(w: _Walker, cmd: SimpleCommand, spec: _Wrap, args: tuple[Word, ...], ctx: _Ctx,
        fed: list[str] | None) -> None:  # fmt: skip
    """``su [-] [USER] [-c CODE] [ARGS]``, ``sg GROUP [-c] CODE``, ``newgrp``: options may come
    before or after the user; without code, a shell reading its stdin (or ARGS: its script)."""
    rest = list(args)
    named = False
    while True:
        i, _seen, code = _strip_options(tuple(rest), spec)
        if code is not None:
            w.payload(code, ctx, cmd.source, child=True)
            return
        rest = rest[i:]
        if rest and rest[0].text == "-":
            rest = rest[1:]
            continue
        if rest and not named:
            named = True
            rest = rest[1:]  # the user or group
            if cmd.name == "sg" and rest and not rest[0].text.startswith("-"):
                w.payload(_product(_spaced(rest)), ctx, cmd.source, child=True)
                return
            continue
        break
    w.emit(Word("sh"), tuple(rest), cmd.source, ctx, cmd.writes, fed, cmd.stdin_file)


_ENV_LONG = ("--split-string", "--unset", "--chdir", "--ignore-environment", "--null", "--debug",
             "--ignore-signal", "--default-signal", "--block-signal", "--list-signal-handling",
             "--argv0")  # fmt: skip


def _env_inner(w: _Walker, cmd: SimpleCommand, ctx: _Ctx) -> tuple[Word, ...]:
    """The command ``env`` runs; ``env -S 'sh -c ...'`` splits a string into a command."""
    args = cmd.args
    i = 0
    while i < len(args):
        t = args[i].text
        if t == "--":
            return args[i + 1 :]
        if t.startswith("--"):
            key, eq, val = t.partition("=")
            full = _long_match(key, _ENV_LONG) or key
            if full == "--split-string":
                value = Word(val) if eq else (args[i + 1] if i + 1 < len(args) else Word(""))
                rest = list(args[i + 1 :] if eq else args[i + 2 :])
                return _split_string(w, value, rest)
            i += 1 if eq or full not in ("--unset", "--chdir", "--argv0") else 2
            continue
        if t.startswith("-") and t != "-":
            letters = t[1:]
            k = next((k for k, ch in enumerate(letters) if ch in "SuCPa"), None)
            if k is not None and letters[k] == "S":
                attached = letters[k + 1 :]
                value = Word(attached) if attached else (
                    args[i + 1] if i + 1 < len(args) else Word(""))  # fmt: skip
                rest = list(args[i + 1 :] if attached else args[i + 2 :])
                return _split_string(w, value, rest)
            i += 2 if k is not None and k == len(letters) - 1 else 1
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", t):
            var, _, val = t.partition("=")
            w._special_assignment(var, Word(val, dynamic=args[i].dynamic), ctx, cmd.source)
            i += 1
            continue
        break
    return args[i:]


def _split_string(w: _Walker, value: Word, rest: list[Word]) -> tuple[Word, ...]:
    """``env -S 'STRING' ARGS...``: STRING split into words as env does (quotes, escapes),
    then ARGS: the command env runs."""
    if value.dynamic:
        what = "env -S of a value known only at run time"
        w.a.problems.append(Problem("dynamic", what, value.text[:200]))
        return ()
    try:
        words = shlex.split(value.text, comments=False, posix=True)
    except ValueError:
        w.a.problems.append(Problem("dynamic", "env -S string env cannot split", value.text))
        return ()
    return (*(Word(x) for x in words), *rest)


def _xargs(w: _Walker, cmd: SimpleCommand, ctx: _Ctx) -> None:
    """``xargs CMD ARGS`` / ``parallel CMD ::: VALUES``: CMD with ARGS and what it is fed."""
    args = cmd.args
    spec = _Wrap(
        values=_XARGS_VALUES
        if cmd.name == "xargs"
        else frozenset(
            {"-j", "--jobs", "-S", "--sshlogin", "--joblog", "-d", "-a", "-I", "--results"}
        )
    )
    i, _seen, _c = _strip_options(args, spec)
    opts = [a.text for a in args[:i]]
    unbounded = any(re.fullmatch(r"-P0|--max-procs=0|-j0|--jobs=0", t) for t in opts) or any(
        t in ("-P", "--max-procs", "-j", "--jobs") and v == "0" for t, v in itertools.pairwise(opts)
    )
    if unbounded and "yes" in cmd.upstream:
        w.a.bombs.append(f"{cmd.source[:120]} (no limit on processes, endless input)")
    replace_str = None
    for k, a in enumerate(args[:i]):
        if a.text in ("-I", "--replace") and k + 1 < len(args):
            replace_str = args[k + 1].text
        elif a.text.startswith("-I") and len(a.text) > 2:
            replace_str = a.text[2:]
        elif a.text.startswith(("-i", "--replace")):
            replace_str = a.text.split("=", 1)[1] if "=" in a.text else (a.text[2:] or "{}")
    if cmd.name == "parallel" and replace_str is None:
        replace_str = "{}"
    rest = list(args[i:])
    source = ("xargs input",) if cmd.name == "xargs" else ("parallel input",)
    unknown = Word("<input>", ("<input>", ""), dynamic=True, substituted=(*source,
                   *cmd.upstream), tail="")  # fmt: skip
    fed: list[Word] = []
    if cmd.name == "parallel" and any(a.text in (":::", "::::", ":::+") for a in rest):
        k = next(k for k, a in enumerate(rest) if a.text in (":::", "::::", ":::+"))
        fed = [a for a in rest[k + 1 :] if a.text not in (":::", "::::", ":::+")]
        rest = rest[:k]
        if not rest:  # `parallel ::: 'cmd1' 'cmd2'`: the values are the command lines
            for value in fed:
                w.payload(value, ctx, cmd.source, child=True)
            return
    if not rest:
        if cmd.name == "parallel":  # each input line is a command line
            _program(w, cmd, None, ctx._replace(depth=ctx.depth - 1), None, "parallel")
        return  # `xargs` alone runs echo
    value = _loop_values("input", fed) if fed else unknown
    if replace_str is not None and any(replace_str in a.text for a in rest):
        out = []
        for a in rest:
            if replace_str in a.text:
                a = value if a.text == replace_str else Word(
                    a.text.replace(replace_str, value.text), dynamic=True,
                    substituted=value.substituted, tail="")  # fmt: skip
            out.append(a)
        rest = out
    else:
        rest = [*rest, value]
    if cmd.name == "parallel" and len(rest) > 1 and all(" " in a.text for a in rest[:1]):
        w.payload(_product(_spaced(rest)), ctx, cmd.source, child=True)
        return
    w.emit(rest[0], tuple(rest[1:]), cmd.source, ctx._replace(stdin="null"))


def _find_exec(w: _Walker, cmd: SimpleCommand, ctx: _Ctx) -> None:
    args = cmd.args
    k = 0
    while k < len(args) and (args[k].text in ("-H", "-L", "-P") or args[k].text.startswith(
            ("-D", "-O"))):  # fmt: skip
        k += 2 if args[k].text in ("-D",) else 1
    starts = []
    for a in args[k:]:
        if a.text.startswith(("-", "(", "!")):
            break
        starts.append(a)
    start = starts[0].text if len(starts) == 1 else "."
    if len(starts) > 1:
        start = "/" if any(s.text.startswith(("/", "~", "$")) for s in starts) else "."
    if starts and starts[0].dynamic and len(starts) == 1:
        start = next((v for v in starts[0].values if v), ".")
    i = 0
    while i < len(args):
        if args[i].text in ("-exec", "-execdir", "-ok", "-okdir"):
            j = i + 1
            while j < len(args) and args[j].text not in (";", "+"):
                j += 1
            found = Word(f"{start.rstrip('/')}/<found>", dynamic=True, substituted=("find",))
            inner = tuple(found if "{}" in a.text else a for a in args[i + 1 : j])
            if inner:
                w.emit(inner[0], inner[1:], cmd.source, ctx._replace(stdin="null"))
            i = j
        i += 1


def _shell_args(cmd: SimpleCommand) -> tuple[tuple[Word, ...], int | None, int, set[str]]:
    """A shell's arguments (after ``busybox sh``), the index of its ``-c`` payload if any, the
    index of its first operand (a script file, or the payload's ``$0``...), and its flags."""
    args = cmd.args[1:] if cmd.name in ("busybox", "toybox") else cmd.args
    payload: int | None = None
    flags: set[str] = set()
    i = 0
    while i < len(args):
        t = args[i].text
        if t == "--" or t == "-":
            i += 1
            break
        if t in _SHELL_VALUES:
            i += 2
            continue
        if t.startswith("--"):
            flags.add(t)
            if _long_match(t, ("--command",)):
                payload = -1
            i += 1
            continue
        if t[:1] in "-+" and len(t) > 1:
            flags.update(t[1:])
            if t[:1] == "-" and "c" in t[1:] and payload is None:
                payload = -1  # the next operand is the payload
            i += 1
            continue
        break
    if payload == -1:
        return args, (i if i < len(args) else None), i, flags
    return args, None, i, flags


def _shell(w: _Walker, cmd: SimpleCommand, ctx: _Ctx, fed: list[str] | None) -> None:
    """``bash -c 'PAYLOAD'``, ``bash FILE``, ``bash`` reading its program from stdin."""
    if cmd.name in ("busybox", "toybox") and not cmd.args:
        return
    args, payload, first, flags = _shell_args(cmd)
    if payload is not None:
        code = args[payload]
        # `sh -c CODE NAME ARGS...`: $0 is NAME, $1... the ARGS
        rest = args[payload + 1 :]
        saved = w.s
        w.s = saved.copy()
        w.s.positional = (
            tuple(a.text for a in rest[1:]) if all(not a.dynamic for a in rest) else None
        )
        try:
            w.payload(code, ctx._replace(via=(*cmd.via, f"{cmd.name} -c")), cmd.source)
        finally:
            w.s = saved
        return
    if first < len(args) and "s" not in flags:
        _program(w, cmd, args[first], ctx, fed, cmd.name)
    else:
        _program(w, cmd, None, ctx, fed, cmd.name)


def _interpreter(w: _Walker, cmd: SimpleCommand, ctx: _Ctx, fed: list[str] | None) -> None:
    flag = inline_code(cmd)
    if flag is not None:
        _inline_code_strings(w, cmd, ctx)
        return
    if any(a.text in ("-m",) or a.text.startswith("-m") for a in cmd.args[:3]):
        return  # `python -m module`: an installed module
    lang = interpreter(cmd.name) or ""
    value_opts = {"python": ("-W", "-X", "-Q"), "perl": ("-I", "-M", "-m"),
                  "node": ("-r", "--require", "--import", "--loader"),
                  "ruby": ("-I", "-r")}.get(lang, ())  # fmt: skip
    i = 0
    args = cmd.args
    while i < len(args) and args[i].text.startswith("-") and args[i].text not in ("-", "--"):
        i += 2 if args[i].text in value_opts else 1
    if i < len(args) and args[i].text == "--":
        i += 1
    _program(w, cmd, args[i] if i < len(args) else None, ctx, fed, cmd.name, code=lang != "")


def _program(w: _Walker, cmd: SimpleCommand, path: Word | None, ctx: _Ctx,
             fed: list[str] | None, what: str, *, code: bool = False) -> None:  # fmt: skip
    """Where a shell (or an interpreter, ``source``, ``at``) takes its program from: a file
    ``path``, or stdin when ``path`` is None or names stdin."""
    reads_stdin = path is None or (path.known is not None and bool(_STDIN_PATHS.match(path.known)))
    if path is not None and not reads_stdin:
        if path.procsub:
            literal = _procsub_output(w, path, ctx)
            if literal is None and what in ("source", ".") and _trusted_generator(path.text):
                w._forget_variables()
            elif literal is None:
                w.a.problems.append(Problem(
                    "dynamic", f"{what} runs a program read from a process substitution",
                    path.text[:200]))  # fmt: skip
            elif not code:
                for text in literal:
                    w.payload(Word(text), ctx._replace(via=(*cmd.via, f"{what} <(...)")),
                              cmd.source, child=what not in ("source", "."))  # fmt: skip
            return
        if any(_FD_PATHS.match(v) for v in path.values) or (
            path.known is None and any(_STDIN_PATHS.match(v) for v in path.values)
        ):
            w.a.problems.append(Problem(
                "dynamic", f"{what} runs a program read from a file descriptor",
                cmd.source[:200]))  # fmt: skip
            return
        _replace_last(w, cmd, program=path)
        return
    # the program comes from stdin
    if cmd.stdin == "file" and cmd.stdin_file is not None:
        if cmd.stdin_file.procsub or any(_FD_PATHS.match(v) for v in cmd.stdin_file.values):
            _program(w, replace(cmd, stdin="null"), cmd.stdin_file, ctx, None, what, code=code)
            return
        _replace_last(w, cmd, program=cmd.stdin_file)
        return
    if fed is not None:
        if not code:
            for text in fed:
                w.payload(Word(text), ctx._replace(via=(*cmd.via, f"{what} <<")), cmd.source,
                          child=what not in ("source", "."))  # fmt: skip
        return
    if cmd.stdin == "pipe":
        if not code:
            w.a.problems.append(Problem(
                "dynamic", f"{what} reads its program from a pipe", cmd.source[:200]))  # fmt: skip
        return
    if cmd.stdin == "job" and not code:
        if not w.a.stdin_readers:
            w.a.reader_cwd = w.s.cwd
        w.a.stdin_readers.append(what)


#: Tools whose output is shell code to set up an environment (``eval "$(ssh-agent -s)"``,
#: ``source <(kubectl completion bash)``): what they print is theirs, not the line's, so
#: running it is as trustworthy as running the tool. Only a single such command counts.
TRUSTED_GENERATORS = frozenset(
    {"ssh-agent", "gpg-agent", "keychain", "pyenv", "rbenv", "nodenv", "goenv", "jenv", "plenv",
     "direnv", "conda", "mamba", "micromamba", "brew", "starship", "zoxide", "fnm", "mise",
     "rtx", "opam", "luarocks", "kubectl", "helm", "gh", "npm", "pnpm", "pip", "pip3", "pipx",
     "poetry", "uv", "rustup", "minikube", "docker-machine", "dircolors", "fzf", "atuin",
     "register-python-argcomplete", "just", "task", "asdf", "nvm", "pdm", "hatch", "rye",
     "kind", "k3d", "stern", "terraform", "aws_completer", "gcloud", "az", "deno", "bun"}
)  # fmt: skip
_GENERATOR = re.compile(r"^(\$\(|<\(|`)\s*([\w./-]+)((\s+[\w./=:,@%+-]+)*)\s*(\)|`)$")


def _trusted_generator(text: str) -> bool:
    """``$(TOOL ARGS)`` / ``<(TOOL ARGS)`` with TOOL in ``TRUSTED_GENERATORS`` and plain
    arguments (no other command, no expansion)."""
    m = _GENERATOR.match(text.strip().strip('"'))
    return m is not None and normalize_name(m.group(2)) in TRUSTED_GENERATORS


def _replace_last(w: _Walker, cmd: SimpleCommand, **changes: object) -> None:
    for k in range(len(w.a.commands) - 1, -1, -1):
        if w.a.commands[k] is cmd:
            w.a.commands[k] = replace(cmd, **changes)  # type: ignore[arg-type]
            return


def _procsub_output(w: _Walker, path: Word, ctx: _Ctx) -> list[str] | None:
    """What ``<(echo ...)``/``<(printf ...)``/``<(cat <<EOF...)`` writes, when literal."""
    text = path.text
    if not (text.startswith("<(") and text.endswith(")")):
        return None
    inner = text[2:-1]
    probe = _Walker(Analysis(), w.s.copy())
    _yield_gil(len(inner))
    parser = _parser()
    _set_timeout(parser, MAX_PARSE_MICROS - w.a.parse_micros)
    began = time.perf_counter()
    try:
        tree = parser.parse(inner.encode())
    except ValueError:
        parser.reset()
        return None
    finally:
        w.a.parse_micros += int((time.perf_counter() - began) * 1e6)
    root = tree.root_node
    if root.has_error or root.named_child_count != 1:
        return None
    probe.src = inner.encode()
    try:
        return probe._literal_output(root.named_children[0], ctx)
    except _Limit:
        return None


def inline_code(cmd: SimpleCommand) -> str | None:
    """The inline-code flag of ``python -c``, ``perl -e``, ``node -e``... if the command has one
    (also in a cluster of short flags: ``python3 -Ic``, ``perl -ne``)."""
    base = interpreter(cmd.name)
    if base is None:
        return None
    flags = INLINE_CODE_FLAGS.get(base, ())
    for a in cmd.args:
        t = a.text
        if t in flags or any(t.startswith(f + "=") for f in flags if f.startswith("--")):
            return t.split("=", 1)[0]
        if re.fullmatch(r"-[A-Za-z]+", t) and any(len(f) == 2 and f[1] in t[1:] for f in flags):
            return t
        if not t.startswith("-"):
            return None  # a script file: what follows are its arguments
    return None


_STRING_LITERAL = re.compile(r"\"((?:[^\"\\]|\\.){2,2000})\"|'((?:[^'\\]|\\.){2,2000})'")
_CODE_BOMB = re.compile(
    r"fork\s*(\(\s*\))?\s*(while|until)\s*\(?\s*(fork|1|true|!\s*0)\b"
    r"|(while|until)\s*\(?\s*(1|true|True|:|!\s*0)\s*\)?\s*[:;{]?\s*(do\s+)?\s*"
    r"(os\.|Process\.|process\.)?fork\b"
    r"|loop\s*(do|\{)\s*(Process\.)?fork\b|for\s*\(\s*;\s*;\s*\)\s*\{?\s*(os\.)?fork\b",
    re.S,
)


def _inline_code_strings(w: _Walker, cmd: SimpleCommand, ctx: _Ctx) -> None:
    """``python -c 'os.system("rm -rf /")'``, ``awk 'BEGIN{system("...")}'``: string literals in
    inline code that parse as shell commands are checked too. A heuristic (code is not shell):
    literals that do not parse are ignored, and the code itself stays unverifiable."""
    for a in cmd.args:
        if _CODE_BOMB.search(a.text):
            w.a.bombs.append(f"{cmd.source[:120]} (forks in an endless loop)")
        for m in _STRING_LITERAL.finditer(a.text):
            literal = m.group(1) or m.group(2) or ""
            scratch = Analysis(nodes=w.a.nodes, parse_micros=w.a.parse_micros)
            sub = _Walker(scratch, w.s.copy())
            with contextlib.suppress(_Limit):
                sub.script(literal, ctx._replace(depth=ctx.depth + 1,
                                            via=(*cmd.via, f"{cmd.name} code")))  # fmt: skip
            w.a.nodes = max(w.a.nodes, scratch.nodes)
            w.a.parse_micros = max(w.a.parse_micros, scratch.parse_micros)
            w.a.commands.extend(scratch.commands)
            w.a.bombs.extend(scratch.bombs)


def reads_program_from_stdin(cmd: SimpleCommand) -> bool:
    """A shell with no script (or ``-c``) argument reads its program from stdin."""
    if not is_shell(cmd.name):
        return False
    args, payload, first, flags = _shell_args(cmd)
    if payload is not None:
        return False
    return first >= len(args) or "s" in flags or bool(_STDIN_PATHS.match(args[first].text))


# --- entry point ---------------------------------------------------------------------------------


def analyse(command: str, scope: Scope | None = None) -> Analysis:
    """Every simple command in ``command`` and every problem found analysing it. ``scope``:
    what is known before the line runs (the job's environment and cwd); the analysis's
    ``scope`` is what is known after it."""
    analysis = Analysis(scope=(scope or Scope()).copy())
    if len(command) > MAX_COMMAND_CHARS:
        analysis.problems.append(
            Problem("too-long", f"longer than {MAX_COMMAND_CHARS} characters", command[:80])
        )
        return analysis
    runs = _ANGLE_RUN.findall(command)
    if len(runs) > MAX_ANGLE_RUNS or any(len(r) > 64 for r in runs):
        what = f"more than {MAX_ANGLE_RUNS} runs of four or more < or >, or a longer run"
        analysis.problems.append(Problem("too-complex", what, command[:80]))
        return analysis
    walker = _Walker(analysis, analysis.scope)
    try:
        walker.script(command, _Ctx())
    except _Limit:
        pass
    except RecursionError:  # a safety net: the nesting cap should stop it first
        analysis.problems.append(Problem("too-deep", "nested too deeply to analyse", command[:80]))
    analysis.scope = walker.s
    return analysis
