"""Patterns for finding things in output (``grep``, ``wait`` until, ``search``), and what those
tools return.

Patterns are RE2 (linear time: no pattern can hang the server on a long log); a construct RE2
does not have is named in the error, with what to do instead. Import rule: pure; imports only
``errors``, ``checks`` and ``jobs``.
"""

from __future__ import annotations

from typing import Literal, Protocol, cast

import re2
from pydantic import BaseModel, ConfigDict, Field

from .checks import shown
from .errors import InvalidRequest
from .jobs import JobStatus

#: Constructs of Python's ``re`` (and PCRE) that RE2 rejects, by the text RE2's error quotes.
_UNSUPPORTED = (
    ("(?=", "lookahead (?=...)"),
    ("(?!", "negative lookahead (?!...)"),
    ("(?<=", "lookbehind (?<=...)"),
    ("(?<!", "negative lookbehind (?<!...)"),
    ("(?P=", "named backreference (?P=name)"),
    ("(?>", "atomic group (?>...)"),
    ("\\1", "backreference \\1"),
    ("\\2", "backreference \\2"),
    ("\\k", "named backreference \\k<name>"),
    ("*+", "possessive quantifier *+"),
    ("++", "possessive quantifier ++"),
    ("?+", "possessive quantifier ?+"),
)


class Match(Protocol):
    def start(self) -> int: ...
    def end(self) -> int: ...


class Pattern(Protocol):
    """A compiled RE2 pattern, searched in bytes (UTF-8 output): offsets are byte offsets."""

    def search(
        self, text: bytes, pos: int | None = None, endpos: int | None = None
    ) -> Match | None: ...


def compile_pattern(pattern: str, *, ignore_case: bool = False, what: str = "pattern") -> Pattern:
    """``pattern`` compiled for matching lines of output (bytes, UTF-8): ``^``/``$`` match at
    line boundaries. Raises ``InvalidRequest`` naming what RE2 rejected."""
    if not pattern:
        raise InvalidRequest(f"{what} is empty: pass a regular expression (RE2 syntax).")
    opts = re2.Options()
    opts.log_errors = False  # RE2 would print its parse errors to stderr (our stdout is MCP)
    opts.case_sensitive = not ignore_case
    opts.never_nl = False
    try:
        return cast(Pattern, re2.compile("(?m)" + pattern, opts))
    except re2.error as exc:
        why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        construct = next((name for key, name in _UNSUPPORTED if key in why), None)
        if construct is None:
            construct = next((name for key, name in _UNSUPPORTED if key in pattern), None)
        what_is = f"it uses a {construct}, which RE2 does not support" if construct else why
        raise InvalidRequest(
            f"{what} {shown(pattern)} is not a valid RE2 regular expression: {what_is}"
            f" ({why}). RE2 is Python's syntax without backreferences, lookarounds, atomic "
            "groups or possessive quantifiers (they can take exponential time): match a wider "
            "pattern and narrow it down by reading the lines returned."
        ) from None


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class GrepMatch(_Model):
    stream: Literal["stdout", "stderr"]
    line_number: int = Field(description="Line of its stream (1-based; stored lines).")
    cursor: str = Field(description="Where the line starts: pass to `output` to read there.")
    line: str
    before: list[str] = Field(default_factory=list)
    after: list[str] = Field(default_factory=list)


class OutputGap(_Model):
    """Output the limit dropped: never searched."""

    stream: Literal["stdout", "stderr"]
    offset: int
    bytes: int


class GrepResult(_Model):
    job_id: str
    matches: list[GrepMatch]
    total_matches: int = Field(description="Matching lines from the cursor on, returned or not.")
    bytes_searched: int
    gaps: list[OutputGap] = Field(default_factory=list)
    next_cursor: str | None = Field(
        default=None, description="More matches past max_matches: call again with this cursor."
    )
    status: JobStatus


class SearchHit(_Model):
    job_id: str
    command: str
    status: JobStatus
    created_at: str
    match_count: int
    complete: bool = Field(description="False: the job's count stopped at the work budget.")
    first_matches: list[GrepMatch]


class SearchResult(_Model):
    jobs: list[SearchHit]
    jobs_scanned: int
    bytes_scanned: int
    next_cursor: str | None = Field(
        default=None, description="Older jobs (or the rest of one) remain: call again with it."
    )


class WaitUntilResult(_Model):
    job_id: str
    until: Literal["matched", "ended", "timeout"] = Field(
        description="matched: a line matched; ended: the job ended first; timeout: call again."
    )
    match: GrepMatch | None = None
    cursor: str = Field(description="After the matching line (or what was searched): pass on.")
    waited_s: float
    status: JobStatus
