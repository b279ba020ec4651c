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
... see ``shellwrap``).

Words are expanded as far as the line says: variables assigned earlier in the line and those of
the job's environment (``Scope.env_known``: a variable in neither is empty, as in the job), ``~``,
brace expansion, ``${VAR:-default}`` and friends. What stays unknown is marked ``dynamic``.

Bounded: the input length, the syntax nodes over every parse of one analysis (payloads
included), the nesting, the number of commands and tree-sitter's own parse time are capped, and
what exceeds a cap is a ``Problem`` of kind ``too-long``/``too-complex``/``too-deep``. The work is
linear in the input (a pipeline's stages share one list of names), so one check costs at most
about a second of one thread, most of it in tree-sitter's C code with the GIL released.

The work is split by concern: ``shellwords`` (limits and records), ``shelltext`` (pure word
and text functions), ``shelltree`` (tree-sitter itself), ``shellwalk`` (the walker over the
syntax tree), ``shellwrap`` (wrappers and payloads); this module is the entry point.
"""

from __future__ import annotations

from .shelltext import (
    ansi_c,
    base_name,
    brace_expand,
    interpreter,
    is_shell,
    normalize_name,
    printf_output,
)
from .shellwalk import _Walker
from .shellwords import (
    _ANGLE_RUN,
    INLINE_CODE_FLAGS,
    INTERPRETERS,
    MAX_ANGLE_RUNS,
    MAX_COMMAND_CHARS,
    MAX_CPU_S,
    SHELLS,
    Analysis,
    Problem,
    Scope,
    SimpleCommand,
    Upstream,
    Word,
    _Ctx,
    _Limit,
)
from .shellwrap import TRUSTED_GENERATORS, inline_code, reads_program_from_stdin

#: The analysis's public surface: what ``policy`` (and tests) import from here.
__all__ = [
    "INLINE_CODE_FLAGS",
    "INTERPRETERS",
    "MAX_COMMAND_CHARS",
    "MAX_CPU_S",
    "SHELLS",
    "TRUSTED_GENERATORS",
    "Analysis",
    "Problem",
    "Scope",
    "SimpleCommand",
    "Upstream",
    "Word",
    "analyse",
    "ansi_c",
    "base_name",
    "brace_expand",
    "inline_code",
    "interpreter",
    "is_shell",
    "normalize_name",
    "printf_output",
    "reads_program_from_stdin",
]


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
