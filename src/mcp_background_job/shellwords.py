"""The vocabulary of the command-line analysis: its limits, the name tables (shells,
interpreters), and the records it produces (``Word``, ``SimpleCommand``, ``Problem``,
``Scope``, ``Analysis``), plus the walker's per-node context. No parsing here."""

from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

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


def _norm(path: str) -> str:
    out = posixpath.normpath(path)
    return "/" + out.lstrip("/") if out.startswith("/") else out


def _unknown(name: str, substituted: tuple[str, ...] = ()) -> Word:
    return Word(f"${name}", (f"${name}", ""), dynamic=True, substituted=substituted, tail="")
