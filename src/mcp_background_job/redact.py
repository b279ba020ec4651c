"""Masking secrets in the text clients read of job output, and stripping terminal controls.

Pure (no I/O); a leaf but for ``terminal`` (its renderer: text is masked as it is shown).
Import rule: layer ``pure`` in ``tests/test_layers.py``.

**What is masked is what a client sees.** The rules run on *views* of the raw bytes, and each
view knows which raw byte each of its bytes came from:

- *raw*: the bytes as written (a secret inside a title or clipboard escape is masked too);
- *stripped*: without control sequences (CSI such as colours, OSC, DCS, ...), C0/C1 controls,
  a carriage return not followed by a line feed, and zero-width, format and combining
  characters, so none of them between the characters of a secret hides it;
- *rendered*: as ``terminal.render`` shows it (backspaces, ``\\r`` redraws, cursor moves and
  erases applied), when the bytes contain such moves.

A secret found in any view is masked by replacing the raw bytes behind its visible characters
with ``*``: redaction is **length-preserving**, so the byte offsets of masked text are those of
the raw output. Cursors, counters and chunk offsets stay valid whether the database holds raw
or masked bytes, and a read can be masked with context from before and after it without any
offset arithmetic. Output of plain ASCII text without controls (almost all build output) has
one view, scanned once.

Exact values of secrets the caller handed to a job (``env`` variables with secret-like names)
are masked too, and so is any run of ``PIECE`` or more consecutive characters of one, wherever
it appears (a value printed in pieces). At the live end of a running job, a trailing word that
may be the start of a secret, or that is a piece of a known value, is held back.

Best effort, and said so: output that is encoded (base64, ``rev``), a value printed in pieces
shorter than ``PIECE`` characters apart from each other, characters inserted between a secret's
characters that are visible (``A-K-I-A``), or a secret format not listed here passes through.

RE2 (``google-re2``) runs the rules on bytes (Latin-1 mode: in UTF-8 mode its classes match no
invalid byte, so one stray ``\\xff`` in a key block would end the match): linear time whatever
the input, ~100x the throughput of the stdlib ``re`` on this rule set. RE2 has no look-around
and refuses repetition counts over 1000, which the patterns respect.
"""

from __future__ import annotations

import bisect
import codecs
import itertools
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import re2

from . import terminal

#: Context read before and after a window so that secrets crossing its edges are seen whole.
#: Longer than any rule can match except a private key block (masked up to this far after its
#: BEGIN line when its END is not in sight).
CONTEXT_BYTES = 32 * 1024
#: At the live end of a running job, a trailing word this long (or with a trigger) is held back.
_HOLD_MIN_TOKEN = 16
_HOLD_MAX_TOKEN = 4096
#: Known secret values shorter than this are not masked (they would match too much).
MIN_VALUE = 6
#: Any run of this many consecutive characters of a known value is masked wherever it appears.
PIECE = 6
#: At a live end, a trailing piece of a known value this long (a prefix: ``_HOLD_PREFIX``) is
#: held back until more output shows whether the value goes on.
_HOLD_PIECE = 3
_HOLD_PREFIX = 2
#: Known values longer than this are masked as a whole only (pieces would make the regex huge).
_MAX_PIECED_VALUE = 4096
#: The live-end hold looks at most this far back (it needs the last line, at most 4 KiB of it).
_HOLD_LOOK_BACK = 64 * 1024
MASK = ord("*")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    pattern: bytes  # RE2 syntax; exactly one capture group: the part that is masked


RULES: tuple[Rule, ...] = (
    Rule(
        "private-key",
        rb"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----([\s\S]*?)"
        rb"(?:-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----|\z)",
    ),
    Rule("aws-access-key", rb"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])([A-Z0-9]{16})\b"),
    Rule(
        "aws-secret-key",
        rb"(?i:aws)[A-Za-z0-9_.-]{0,30}(?i:secret|key)[A-Za-z0-9_.-]{0,20}[\"']?\s{0,3}[=:]\s{0,3}"
        rb"[\"']?([A-Za-z0-9/+]{40})\b",
    ),
    Rule("github-token", rb"\b(?:ghp|gho|ghu|ghs|ghr)_([A-Za-z0-9]{36,255})\b"),
    Rule("github-fine-grained-token", rb"\bgithub_pat_([A-Za-z0-9_]{22,255})\b"),
    Rule(
        "gitlab-token",
        rb"\bgl(?:pat|dt|rt|ptt|ft|imt|oas|cbt|soat|agent)-([A-Za-z0-9_-]{20,255})",
    ),
    Rule("slack-token", rb"\bxox[abposre]-([A-Za-z0-9-]{10,255})"),
    Rule("slack-webhook", rb"hooks\.slack\.com/services/([A-Za-z0-9+/_-]{20,255})"),
    Rule("stripe-key", rb"\b(?:sk|rk|pk)_(?:live|test)_([A-Za-z0-9]{10,255})\b"),
    Rule(
        "openai-style-key",
        rb"\bsk-(?:proj-|svcacct-|admin-|ant-[a-z0-9]{0,10}-?)?([A-Za-z0-9_-]{20,255})",
    ),
    Rule("google-api-key", rb"\bAIza([0-9A-Za-z_-]{35})\b"),
    Rule("npm-token", rb"\bnpm_([A-Za-z0-9]{36})\b"),
    Rule("pypi-token", rb"\bpypi-(AgE[A-Za-z0-9_-]{50,1000})"),
    Rule("huggingface-token", rb"\bhf_([A-Za-z0-9]{34,64})\b"),
    Rule(
        "jwt",
        rb"\beyJ([A-Za-z0-9_-]{5,1000}\.eyJ[A-Za-z0-9_-]{5,1000}\.[A-Za-z0-9_-]{5,1000})",
    ),
    Rule(
        "url-credentials",
        rb"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://[^\s/:@\"']{1,200}:([^\s/@\"']{1,200})@",
    ),
    Rule(
        "authorization-header",
        rb"(?i:authorization|proxy-authorization)[\"']?\s{0,3}[:=]\s{0,3}[\"']?"
        rb"(?i:bearer|basic|token|digest)\s+([A-Za-z0-9._~+/=-]{6,1000})",
    ),
    Rule(
        "secret-assignment",
        rb"(?i:password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
        rb"|client[_-]?secret|auth[_-]?token)(?:[_.-][A-Za-z0-9_-]{0,20})?[\"']?\s{0,3}(?:=|:\s)\s{0,3}[\"']?"
        rb"([^\s\"'`&,;<>]{4,500})",
    ),
)


def _options() -> re2.Options:
    opts = re2.Options()
    opts.log_errors = False
    # The combined rules need more DFA memory than RE2's default 8 MiB to extract matches: with
    # it, every secret found fell back to the NFA (measured: 2 MB/s with a secret every
    # thousand lines of a build log; 72 MB/s with 32 MiB, which RE2 only uses as needed).
    opts.max_mem = 32 * 1024 * 1024
    # Bytes, not UTF-8: in UTF-8 mode a class such as [\s\S] matches no invalid byte.
    opts.encoding = re2.Options.Encoding.LATIN1
    return opts


#: Words that start a secret format: a trailing partial word at the live end containing one of
#: these is held back until it is complete, so a secret is never shown in two halves.
_TRIGGERS = re2.compile(
    rb"(?i:akia|asia|ghp_|gho_|ghu_|ghs_|ghr_|github_pat|glpat|xox|sk_|rk_|sk-|aiza|npm_|pypi-"
    rb"|hf_|eyj|://|password|passwd|secret|token|api_?key|bearer|-----begin)",
    _options(),
)
#: Keywords whose value follows on the same line (``token: ab...``, ``Bearer ab...``).
_KEYWORDS = re2.compile(
    rb"(?i:password|passwd|passphrase|secret|token|api_?key|access_?key|bearer|basic)", _options()
)
#: A value has started after the keyword: ``=x``, ``: x``, ``": "x`` or (Bearer) `` x``; not
#: ``Password: `` or ``password for bob: ``, prompts that wait for input.
_VALUE_STARTED = re.compile(rb"[\w-]{0,20}[\"']?\s{0,3}[=:]\s{0,3}[\"']?[^\s\"']")
_SCHEME_VALUE = re.compile(rb"\s+\S")


# --- views: the text a client sees, and where each of its bytes came from --------------------

#: Characters that show nothing (or only change their neighbour) and so can hide a secret when
#: put between its characters: format characters (Unicode Cf: zero-width space and joiners,
#: bidirectional controls, soft hyphen, BOM, tags), combining marks of the general blocks,
#: variation selectors, Hangul fillers.
_INVISIBLE: tuple[tuple[int, int], ...] = (
    (0xAD, 0xAD), (0x300, 0x36F), (0x483, 0x489), (0x600, 0x605), (0x61C, 0x61C),
    (0x6DD, 0x6DD), (0x70F, 0x70F), (0x890, 0x891), (0x8E2, 0x8E2), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x200B, 0x200F),
    (0x202A, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0x20D0, 0x20FF), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFE20, 0xFE2F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x13438), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F), (0xE0100, 0xE01EF),
)  # fmt: skip
_INVISIBLE_CHARS = frozenset(chr(c) for lo, hi in _INVISIBLE for c in range(lo, hi + 1))


def _utf8_ranges(lo: int, hi: int) -> list[list[tuple[int, int]]]:
    """The UTF-8 encodings of code points ``lo..hi`` as sequences of byte ranges."""
    for top in (0x7F, 0x7FF, 0xFFFF):  # one encoded length at a time
        if lo <= top < hi:
            return _utf8_ranges(lo, top) + _utf8_ranges(top + 1, hi)
    if hi <= 0x7F:
        return [[(lo, hi)]]
    for i in (1, 2, 3):  # split until only the trailing bytes vary, each over a whole range
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m:
                return _utf8_ranges(lo, lo | m) + _utf8_ranges((lo | m) + 1, hi)
            if hi & m != m:
                return _utf8_ranges(lo, (hi & ~m) - 1) + _utf8_ranges(hi & ~m, hi)
    return [list(zip(chr(lo).encode(), chr(hi).encode(), strict=True))]


def _utf8_pattern(ranges: Iterable[tuple[int, int]]) -> bytes:
    def byte(a: int, b: int) -> bytes:
        return b"\\x%02x" % a if a == b else b"[\\x%02x-\\x%02x]" % (a, b)

    seqs = [seq for lo, hi in ranges for seq in _utf8_ranges(lo, hi)]
    return b"|".join(b"".join(byte(a, b) for a, b in seq) for seq in seqs)


#: What the stripped view leaves out is ``strip_controls``'s sequences (in UTF-8 bytes), a
#: carriage return not followed by a line feed (a redraw: the text around it is joined), and
#: the invisible characters. Three scans, each fast on its own: escape sequences (stdlib ``re``
#: finds its literal first byte quickly, and look-ahead finds a lone ``\\r``), then RE2 for the
#: rest, which is rare (stdlib ``re`` scans an alternation of many first bytes at ~10 MB/s).
#: An OSC string's body also ends at a byte that cannot go on in valid UTF-8: the view keeps a
#: byte the client may not see rather than drop one it sees.
_STRING_BODY = rb"(?:[^\x07\x1b\xc2]|\xc2[\x80-\x9b\x9d-\xbf])*(?:\x07|\x1b\\|\xc2\x9c)?"
_ESCAPES = re.compile(
    rb"(\x1b(?:\[[0-?]*[ -/]*[@-~]?|[\]PX^_]" + _STRING_BODY + rb"|[ -/]*[0-~]?))"
)
_LONE_CR = re.compile(rb"\r(?!\n)")
_OTHER = re2.compile(
    rb"(?:\xc2\x9b[0-?]*[ -/]*[@-~]?|\xc2[\x90\x98\x9d\x9e\x9f]" + _STRING_BODY
    + rb"|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]|\xc2[\x80-\x9f]|"
    + _utf8_pattern(_INVISIBLE) + rb")+",
    _options(),
)  # fmt: skip
#: One control sequence or control character at a time (``_structure``).
_CONTROL_ITEM = re2.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]?|[\]PX^_]" + _STRING_BODY + rb"|[ -/]*[0-~]?)"
    rb"|\xc2\x9b[0-?]*[ -/]*[@-~]?|\xc2[\x90\x98\x9d\x9e\x9f]" + _STRING_BODY
    + rb"|[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]",
    _options(),
)  # fmt: skip
#: Printable ASCII, tab, line feed, carriage return and escape: ASCII output with no byte but
#: these needs no ``_OTHER`` scan.
_NOT_OTHER = bytes(range(0x20, 0x7F)) + b"\t\n\r\x1b"
#: A byte that may make the stripped view differ from the raw bytes (anything but printable
#: ASCII, tab, line feed, and a carriage return before a line feed).
_SPECIAL = rb"[^\x20-\x7e\t\n\r]|\r(?:[^\n]|\z)"
_SPECIAL_RE = re2.compile(_SPECIAL, _options())
#: A rule with a negated class, ``\s``, ``\S`` or ``.`` may take in a special byte: the scan for
#: plain text does not see a special byte inside a match of such a rule, so look there.
_MAY_SPAN_CONTROLS = re.compile(rb"\\[sS]|\[\^|\.")
#: Moves that make the rendered view differ from the stripped one (see ``terminal.render``),
#: with a lone carriage return and a backspace.
_CURSOR_MOVES = re.compile(rb"\x1b\[[0-9;]*[@A-GJKPX]")
#: The start of a string sequence (OSC, DCS, SOS, PM, APC), with ESC or in C1.
_STRINGS = re2.compile(rb"\x1b[\]PX^_]|\xc2[\x90\x98\x9d\x9e\x9f]", _options())


class _View:
    """Text as a reader sees it. Piece ``k`` is ``text[starts[k]:starts[k+1]]`` and came byte
    for byte from the raw data at ``origins[k]`` (-1: no raw byte, such as a line break the
    renderer joined lines with). No pieces: ``text`` is the raw data itself."""

    __slots__ = ("_origins", "_starts", "text")

    def __init__(
        self, text: bytes, starts: list[int] | None = None, origins: list[int] | None = None
    ) -> None:
        self.text = text
        self._starts = starts
        self._origins = origins

    def spans(self, a: int, b: int) -> list[tuple[int, int]]:
        """The raw byte ranges behind ``text[a:b]`` (in the view's order, adjacent ones merged)."""
        if self._starts is None or self._origins is None:
            return [(a, b)] if a < b else []
        starts, origins = self._starts, self._origins
        out: list[tuple[int, int]] = []
        k = max(0, bisect.bisect_right(starts, a) - 1)
        while k < len(starts) and starts[k] < b:
            lo = max(a, starts[k])
            hi = min(b, starts[k + 1] if k + 1 < len(starts) else len(self.text))
            if origins[k] >= 0 and lo < hi:
                r_lo, r_hi = origins[k] + lo - starts[k], origins[k] + hi - starts[k]
                if out and out[-1][1] == r_lo:
                    out[-1] = (out[-1][0], r_hi)
                else:
                    out.append((r_lo, r_hi))
            k += 1
        return out

    def raw_start(self, i: int, default: int) -> int:
        """The raw offset of the first byte at or after ``text[i]`` that came from the data."""
        spans = self.spans(i, len(self.text))
        return spans[0][0] if spans else default


@dataclass(frozen=True, slots=True)
class _Stripped:
    """The stripped view, the raw byte ranges it leaves out (sorted; computed when asked: only
    secrets found in the raw bytes need them), and whether a lone carriage return was seen."""

    view: _View
    removed: Callable[[], list[tuple[int, int]]]
    lone_cr: bool


def _stripped_view(data: bytes) -> _Stripped:
    # split() and accumulate() keep the loop over escape sequences in C: colourful output has
    # one every few dozen bytes.
    parts = _ESCAPES.split(data)  # kept, escape, kept, ..., kept
    offsets = list(itertools.accumulate(map(len, parts), initial=0))

    def escapes() -> list[tuple[int, int]]:
        return [(offsets[i], offsets[i + 1]) for i in range(1, len(parts), 2)]

    extra: list[tuple[int, int]] = []
    lone_cr = b"\r" in data and data.count(b"\r") != data.count(b"\r\n")
    if lone_cr:
        extra += [m.span() for m in _LONE_CR.finditer(data)]
    if not data.isascii() or data.translate(None, _NOT_OTHER):
        extra += [m.span() for m in _OTHER.finditer(data)]
    if not extra:
        if len(parts) == 1:
            return _Stripped(_View(data), list, lone_cr)
        kept = parts[0::2]
        kept_at = list(itertools.accumulate(map(len, kept), initial=0))
        return _Stripped(_View(b"".join(kept), kept_at[:-1], offsets[0::2]), escapes, lone_cr)
    removed = sorted(escapes() + extra)
    starts: list[int] = []
    origins: list[int] = []
    pieces: list[bytes] = []
    v = r = 0  # view and raw offsets of the next kept byte
    for lo, hi in removed:
        if lo > r:
            starts.append(v)
            origins.append(r)
            pieces.append(data[r:lo])
            v += lo - r
        r = max(r, hi)
    if r < len(data):
        starts.append(v)
        origins.append(r)
        pieces.append(data[r:])
    return _Stripped(_View(b"".join(pieces), starts, origins), lambda: removed, lone_cr)


_STRING_INTROS = frozenset(
    [b"\x1b" + bytes([c]) for c in b"]PX^_"]
    + [b"\xc2" + bytes([c]) for c in b"\x90\x98\x9d\x9e\x9f"]
)


def _structure(
    data: bytes, removed: Sequence[tuple[int, int]], near: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The bytes of ``data`` near the ranges ``near`` that make up control sequences and
    characters (``removed``: where they are), except the text inside a string sequence (an OSC
    title, a DCS payload): masking them would break the sequence and show what it hides, or
    change what a terminal does. Sorted."""
    spans: set[tuple[int, int]] = set()
    for lo, hi in near:
        k = max(0, bisect.bisect_right(removed, (lo, lo)) - 1)
        while k < len(removed) and removed[k][0] < hi:
            if removed[k][1] > lo:
                spans.add(removed[k])
            k += 1
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        for m in _CONTROL_ITEM.finditer(data, a, b):
            lo, hi = m.span()
            if data[lo : lo + 2] in _STRING_INTROS:
                end = hi - (1 if data.endswith(b"\x07", lo, hi) else 0)
                end -= 2 if data.endswith((b"\x1b\\", b"\xc2\x9c"), lo, hi) else 0
                out += [(lo, lo + 2), (max(lo + 2, end), hi)]  # not the text between
            else:
                out.append((lo, hi))
    return out


def _clip(
    mask: Sequence[tuple[int, int]], keep: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """``mask`` without the byte ranges in ``keep`` (sorted, not overlapping)."""
    out: list[tuple[int, int]] = []
    for lo, hi in mask:
        k = max(0, bisect.bisect_right(keep, (lo, lo)) - 1)
        at = lo
        while at < hi and k < len(keep):
            k_lo, k_hi = keep[k]
            if k_hi <= at:
                k += 1
                continue
            if k_lo >= hi:
                break
            if k_lo > at:
                out.append((at, k_lo))
            at = max(at, k_hi)
            k += 1
        if at < hi:
            out.append((at, hi))
    return out


_TRACE = threading.local()


def _note_invalid(exc: UnicodeError) -> tuple[str, int]:
    """Decode as ``replace`` does (what clients get), remembering which bytes were invalid."""
    assert isinstance(exc, UnicodeDecodeError)
    _TRACE.invalid.append((exc.start, exc.end))
    return "\ufffd", exc.end


codecs.register_error("mcp_background_job.trace", _note_invalid)


def _decode_traced(data: bytes) -> tuple[str, Sequence[int]]:
    """``data`` decoded as clients get it, and the raw offset of each character."""
    if data.isascii():
        return data.decode("ascii"), range(len(data))
    invalid: list[tuple[int, int]] = []
    _TRACE.invalid = invalid
    text = data.decode("utf-8", "mcp_background_job.trace")
    origins: list[int] = []
    at = k = 0
    for ch in text:
        origins.append(at)
        if k < len(invalid) and invalid[k][0] == at:
            at = invalid[k][1]
            k += 1
        else:
            c = ord(ch)
            at += 1 if c < 0x80 else 2 if c < 0x800 else 3 if c < 0x10000 else 4
    return text, origins


def _rendered_view(data: bytes, width: int | None) -> _View:
    text, char_origins = _decode_traced(data)
    out = bytearray()
    starts: list[int] = []
    origins: list[int] = []
    follows = -2  # the raw offset that continues the current piece (-1: a piece of no bytes)
    for row, (cells, cell_origins) in enumerate(terminal.render_traced(text, char_origins, width)):
        if row:
            starts.append(len(out))
            origins.append(-1)
            follows = -1
            out += b"\n"
        line = "".join(cells)
        first = cell_origins[0] if cell_origins else -1
        if (  # most lines: ASCII written left to right, one piece
            first >= 0
            and line.isascii()
            and len(line) == len(cells)
            and cell_origins == list(range(first, first + len(cells)))
        ):
            if first != follows:
                starts.append(len(out))
                origins.append(first)
            follows = first + len(line)
            out += line.encode()
            continue
        for ch, at in zip(cells, cell_origins, strict=True):
            if not ch or ch in _INVISIBLE_CHARS:
                continue
            enc = ch.encode()
            if at >= 0 and data.startswith(enc, at):  # (not a U+FFFD for invalid bytes)
                if at != follows:
                    starts.append(len(out))
                    origins.append(at)
                follows = at + len(enc)
            elif follows != -1:
                starts.append(len(out))
                origins.append(-1)
                follows = -1
            out += enc
    return _View(bytes(out), starts, origins)


@dataclass(frozen=True, slots=True)
class Found:
    """A secret found in some view, in raw offsets: the match (``start``..``end``, with what
    names it, such as ``AKIA``) and the byte ranges to mask. ``at_end``: the match reaches the
    end of the view, so it may go on in bytes not seen yet."""

    start: int
    end: int
    mask: tuple[tuple[int, int], ...]
    name: str
    at_end: bool


@dataclass(frozen=True, slots=True)
class Redacted:
    """Masked bytes of a window, how far the window could be returned, and what was masked."""

    data: bytes
    end: int
    hits: Counter[str]
    #: The window (with its context) is ASCII without a byte that changes what it shows
    #: (``_SPECIAL``), known from the one scan that masks it: callers need not look again.
    plain: bool = False


class Redactor:
    """Masks the rules' matches, plus known secret values and their pieces, in every view of
    some bytes (length-preserving)."""

    def __init__(
        self,
        rules: Iterable[Rule] = RULES,
        values: Iterable[bytes] = (),
        *,
        _compiled: tuple[re2._Regexp, re2._Regexp] | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self._names = [r.name for r in self.rules]
        self._spans_controls = {r.name for r in self.rules if _MAY_SPAN_CONTROLS.search(r.pattern)}
        if _compiled is None:
            alternatives = b"|".join(b"(" + r.pattern + b")" for r in self.rules)
            _compiled = (
                re2.compile(alternatives, _options()),
                # One scan finds the secrets of plain text and says whether it is plain.
                re2.compile(alternatives + b"|(" + _SPECIAL + b")", _options()),
            )
        self._compiled = _compiled
        self._values = tuple(dict.fromkeys(v for v in values if len(v) >= MIN_VALUE))
        self._pieces: dict[bytes, list[tuple[int, int]]] = {}
        for n, v in enumerate(self._values):
            if len(v) <= PIECE or len(v) > _MAX_PIECED_VALUE:
                self._pieces.setdefault(v, []).append((n, 0))
                continue
            for i in range(len(v) - PIECE + 1):
                self._pieces.setdefault(v[i : i + PIECE], []).append((n, i))
        self._value_regex = (
            re2.compile(b"|".join(re.escape(p) for p in self._pieces), _options())
            if self._pieces
            else None
        )
        self._derived: dict[tuple[bytes, ...], Redactor] = {}

    def with_values(self, values: Iterable[bytes]) -> Redactor:
        """A redactor that also masks these values and their pieces (secrets the caller gave a
        job). Kept for reuse: a job's reads ask for the same values again."""
        values = tuple(values)
        if not values:
            return self
        derived = self._derived.get(values)
        if derived is None:
            if len(self._derived) >= 256:
                self._derived.clear()
            derived = Redactor(self.rules, (*self._values, *values), _compiled=self._compiled)
            self._derived[values] = derived
        return derived

    # --- finding -------------------------------------------------------------------------

    def find(self, data: bytes, *, width: int | None = None) -> list[Found]:
        """Every secret in every view of ``data`` (``width``: the terminal's, for rendering)."""
        return self._find(data, width)[0]

    def _find(self, data: bytes, width: int | None) -> tuple[list[Found], _View, bool]:
        """The secrets, the stripped view (the live-end hold reads it), and whether ``data``
        is plain (ASCII without a ``_SPECIAL`` byte: all its views are the raw bytes)."""
        raw = _View(data)
        if data.isascii():  # most output: one scan finds its secrets and says it is plain
            plain = self._matches(raw, data, self._compiled[1])
            if plain is not None and not any(
                f.name in self._spans_controls and _SPECIAL_RE.search(data, f.start, f.end)
                for f in plain
            ):
                return plain + self._value_matches(raw, data), raw, True
        stripped = _stripped_view(data)
        views = [stripped.view]
        if stripped.lone_cr or b"\x08" in data or _CURSOR_MOVES.search(data) is not None:
            views.append(_rendered_view(data, width))
        found: list[Found] = []
        for view in views:
            found += self._matches(view, data, self._compiled[0]) or []
            found += self._value_matches(view, data)
        if _STRINGS.search(data) is not None:
            # The raw bytes too: a secret in a title or a payload, which a read that starts in
            # the middle of the sequence would show. Masks there keep the sequence whole.
            in_raw = self._matches(raw, data, self._compiled[0]) or []
            in_raw += self._value_matches(raw, data)
            if in_raw:
                structure = _structure(
                    data, stripped.removed(), (r for f in in_raw for r in f.mask)
                )
                for f in in_raw:
                    mask = _clip(f.mask, structure)
                    if mask:
                        found.append(Found(f.start, f.end, tuple(mask), f.name, f.at_end))
        return found, stripped.view, False

    def _matches(self, view: _View, data: bytes, regex: re2._Regexp) -> list[Found] | None:
        """The rules' matches in ``view`` not masked already; None if the scan for plain text
        (``regex`` with the extra group for special bytes) met one."""
        out: list[Found] = []
        text = view.text
        special = 2 * len(self.rules)
        for m in regex.finditer(text):
            groups = m.groups()
            if len(groups) > special and groups[special] is not None:
                return None
            k = next(i for i in range(0, special, 2) if groups[i] is not None)
            s, e = m.span(k + 2)
            if s < 0:
                s, e = m.span(k + 1)
            found = self._found(view, data, m.start(), m.end(), s, e, self._names[k // 2])
            if found is not None:
                out.append(found)
        return out

    def _found(
        self, view: _View, data: bytes, ms: int, me: int, s: int, e: int, name: str
    ) -> Found | None:
        if view.text is data:  # the raw bytes: no mapping (most output, so the fast way)
            if not data[s:e].strip(b"*"):
                return None  # masked already (stored masked)
            return Found(ms, me, ((s, e),), name, me == len(data))
        mask = view.spans(s, e)
        if not any(data[a:b].strip(b"*") for a, b in mask):
            return None
        extent = view.spans(ms, me)
        return Found(
            min(a for a, _ in extent),
            max(b for _, b in extent),
            tuple(mask),
            name,
            me == len(view.text),
        )

    def _value_matches(self, view: _View, data: bytes) -> list[Found]:
        """Known values, and runs of at least ``PIECE`` of their characters, in ``view``."""
        if self._value_regex is None:
            return []
        out: list[Found] = []
        text = view.text
        pos = 0
        while (m := self._value_regex.search(text, pos)) is not None:
            s, e = m.span()
            e = self._extend(text, s, e)
            found = self._found(view, data, s, e, s, e, "known-secret")
            if found is not None:
                out.append(found)
            # Overlapping runs: a piece starting inside this match may follow another value.
            pos = max(s + 1, e - PIECE + 1)
        return out

    def _extend(self, text: bytes, s: int, e: int) -> int:
        """The end of the longest run of a known value's characters that starts with the
        piece ``text[s:e]``."""
        best = e
        for n, i in self._pieces[text[s:e]]:
            value = self._values[n]
            j, p = i + e - s, e
            while p < len(text) and j < len(value) and text[p] == value[j]:
                p += 1
                j += 1
            best = max(best, p)
        return best

    # --- masking -------------------------------------------------------------------------

    def redact(self, data: bytes) -> tuple[bytes, Counter[str]]:
        """All of ``data``, masked (for complete output, such as an ended job's)."""
        r = self.window(data, 0, len(data), live=False, final=True)
        return r.data, r.hits

    def window(
        self,
        data: bytes,
        start: int,
        end: int,
        *,
        live: bool,
        final: bool,
        width: int | None = None,
    ) -> Redacted:
        """Mask ``data[start:end]`` using the rest of ``data`` as context.

        ``final``: ``data`` ends where the stream ends for good (a match touching its end is
        complete). ``live``: ``data`` ends at what a running job has written so far; the trailing
        part that may be an incomplete secret is held back (``end`` of the result is smaller).
        Otherwise a match touching the end of ``data`` may continue past it, so the window stops
        before such a match (unless it starts at ``start``: the masked part is returned).
        ``width``: the terminal's columns (rendering bounds cursor moves by it).
        """
        found, stripped, plain = self._find(data, width)
        cut = end
        for f in found:
            if f.at_end and not final and start < f.start < cut:
                cut = f.start
        if live and end == len(data):
            cut = min(cut, max(start, self._hold_from(data, stripped)))
        if not found:  # most pages: nothing to mask, no copy through a bytearray
            return Redacted(data[start:cut], cut, Counter(), plain)
        buf = bytearray(data[start:cut])
        hits: Counter[str] = Counter()
        counted_to = -1  # one secret seen in several views (or pieces) counts once
        for f in sorted(found, key=lambda f: f.start):
            fresh = False
            for lo, hi in f.mask:
                lo, hi = max(lo, start), min(hi, cut)
                if lo < hi:
                    fresh = fresh or bool(buf[lo - start : hi - start].strip(b"*"))
                    buf[lo - start : hi - start] = b"*" * (hi - lo)
            if fresh:
                if f.start >= counted_to:
                    hits[f.name] += 1
                counted_to = max(counted_to, f.end)
        return Redacted(bytes(buf), cut, hits, plain)

    def _hold_from(self, data: bytes, stripped: _View) -> int:
        """Where a possibly incomplete secret at the live end of ``data`` starts, in raw bytes
        (``len(data)``: nothing to hold). Judged on the stripped view, as the client reads it."""
        text = stripped.text
        hold = min(_hold_back_from(text, len(text)), self._value_hold(text))
        return stripped.raw_start(hold, len(data)) if hold < len(text) else len(data)

    def _value_hold(self, text: bytes) -> int:
        """Where a trailing piece of a known value starts (``len(text)``: none): it may be the
        start of the value printed in parts, the rest to follow."""
        n = len(text)
        for size in range(min(PIECE - 1, n), _HOLD_PREFIX - 1, -1):
            tail = text[n - size :]
            for value in self._values:
                if value.startswith(tail) or (size >= _HOLD_PIECE and tail in value):
                    return n - size
        return n


def _hold_back_from(data: bytes, end: int) -> int:
    """Where a possibly incomplete secret at the live end starts (``end``: nothing to hold).

    Held back: a trailing word that is long or contains a trigger (``AKIA``, ``ghp_``, ...), and
    on the last, unfinished line, a trigger whose value has started (``token: ab``,
    ``Bearer x``). Not held: a prompt waiting for input (``Password: ``, ``>>> ``).
    """
    lo = max(0, end - _HOLD_MAX_TOKEN)
    tail = data[lo:end]
    ws = max(tail.rfind(b" "), tail.rfind(b"\n"), tail.rfind(b"\t"), tail.rfind(b"\r"))
    if ws < 0 and lo > 0:
        return lo  # a word longer than we look at: hold the whole window back
    hold = end
    token = tail[ws + 1 :]
    if token and (len(token) >= _HOLD_MIN_TOKEN or _TRIGGERS.search(token) is not None):
        hold = lo + ws + 1
    line_start = max(tail.rfind(b"\n"), tail.rfind(b"\r")) + 1
    line = tail[line_start:]
    last = None
    for m in _KEYWORDS.finditer(line):
        last = m
    started = _SCHEME_VALUE if last is not None and last.group(0).lower() in (
        b"bearer", b"basic") else _VALUE_STARTED  # fmt: skip
    if last is not None and started.match(line, last.end()):
        word = max(line.rfind(b" ", 0, last.start()), line.rfind(b"\t", 0, last.start())) + 1
        hold = min(hold, lo + line_start + word)
    return hold


# --- terminal control sequences -----------------------------------------------------------------

_CONTROL = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI (colours, cursor movement, ...)
    # OSC (such as 52, the clipboard), DCS, SOS, PM, APC: up to BEL or ST, or the end
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"  # other escapes
    r"|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]"  # remaining C0/C1 controls, DEL
)


_SGR = re.compile(r"\x1b\[[0-9;]*m")
#: The characters ``_CONTROL`` can start with (ESC and CSI among them), as UTF-8: the C0 ones
#: and DEL as bytes, the C1 ones (U+0080-U+009F) as ``C2 80``-``C2 9F``.
_C0_BYTES = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_C1_UTF8 = re.compile(rb"\xc2[\x80-\x9f]")


def _has_controls(text: str) -> bool:
    """Whether ``_CONTROL`` can match anywhere in ``text``. Deleting bytes in C scans 64 KiB in
    ~0.1 ms; ``_CONTROL.sub`` on text without any took 4-8 ms (its alternation is tried at
    every position): a third of an ``output`` page's time (issue 13)."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data.translate(None, _C0_BYTES)) != len(data):
        return True
    return not text.isascii() and _C1_UTF8.search(data) is not None


def strip_controls(text: str, *, keep_colours: bool = False) -> str:
    """Text without terminal control sequences: an escape in a job's output (an OSC 52 clipboard
    write, a title change, cursor movement) must not reach the client's terminal. Tabs, line
    feeds and carriage returns stay. ``keep_colours``: colour and style sequences (SGR,
    ``ESC [ ... m``) stay, for the web page, which turns them into HTML."""
    if text.isprintable() or not _has_controls(text):
        return text
    if keep_colours:
        return _CONTROL.sub(lambda m: m[0] if _SGR.fullmatch(m[0]) else "", text)
    return _CONTROL.sub("", text)
