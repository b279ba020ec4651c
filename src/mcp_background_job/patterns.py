"""Allow/deny patterns of the command policy: globs over ``name arg1 arg2...`` or ``re:`` + a
regular expression. Light on purpose (no tree-sitter): ``config`` compiles the configured
patterns with it to fail closed at start-up."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .shellwords import SimpleCommand


class PatternError(ValueError):
    """A configured pattern cannot be compiled."""


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
    """The command as the patterns see it: as written, and with each word's other values."""
    lines = [cmd.line]
    if any(a.vals for a in cmd.args):
        for k in range(1, 3):
            alt = " ".join([cmd.name, *(a.values[min(k, len(a.values)) - 1] if a.vals else a.text
                                        for a in cmd.args)])  # fmt: skip
            if alt not in lines:
                lines.append(alt)
    return lines
