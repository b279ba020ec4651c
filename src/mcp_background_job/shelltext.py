"""Pure text work on shell words: normalized command names, quoting and ANSI-C escapes,
what ``printf`` prints, brace expansion, and words combined into sets of possible values."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from .shellwords import INTERPRETERS, MAX_ALTERNATIVES, SHELLS, Word


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


def _spaced(words: list[Word]) -> list[Word]:
    out: list[Word] = []
    for i, w in enumerate(words):
        if i:
            out.append(Word(" "))
        out.append(w)
    return out or [Word("")]
