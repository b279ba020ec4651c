"""tree-sitter-bash itself: the language, one parser per thread with a parse timeout, and
letting the event loop run before a long parse."""

from __future__ import annotations

import threading
import time
import warnings

import tree_sitter_bash
from tree_sitter import Language, Parser, Query

from .shellwords import MAX_PARSE_MICROS

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
