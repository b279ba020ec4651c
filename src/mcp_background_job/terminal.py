"""Terminal text: what a person would see for a stream of terminal output, and key names.

Import rule: ``errors`` only (layer ``pure`` in ``tests/test_layers.py``).

Pure functions, no I/O. ``render`` turns decoded terminal output into plain text: escape
sequences (colours, titles, modes) are removed; carriage returns, backspaces, line erases and
cursor moves within and between lines are applied, so a progress bar redrawn with ``\\r`` a
thousand times reads as its last state. It keeps the stream's lines (no screen size, no
wrapping): full-screen programs that position the cursor absolutely are not reproduced, their
text is kept in order instead.

``incomplete_suffix`` says how much of the end of a text is the start of an escape sequence
whose end has not been written yet, so a read can stop before it (like an unfinished UTF-8
character) instead of showing half a sequence as text.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InvalidRequest

#: Cursor moves go at most this far right when the terminal's width is not known.
_DEFAULT_WIDTH = 1024
#: An unfinished escape sequence longer than this is not held back (it is not one).
MAX_PENDING = 4096
_TAB = 8

_TOKEN = re.compile(
    r"""
      (?P<csi>\x1b\[ (?P<params>[0-?]*) (?P<inter>[\ -/]*) (?P<final>[@-~]) )
    | (?P<string>\x1b[\]PX^_] (?: .*?(?:\x07|\x1b\\) | .*\Z ) )  # OSC, DCS, SOS, PM, APC to BEL/ST
    | (?P<esc>\x1b[\ -/]*[0-~])                                  # charset, keypad, save, ...
    | (?P<ctl>[\x00-\x1f\x7f-\x9f])                              # one control (also a lone ESC)
    | (?P<text>[^\x00-\x1f\x7f-\x9f]+)
    """,
    re.VERBOSE | re.DOTALL,
)
_PARTIAL = re.compile(
    r"\x1b(?: \[[0-?]*[\ -/]* | [\]PX^_][^\x07]*? | [\ -/]* )\Z", re.VERBOSE | re.DOTALL
)


class _Lines:
    """An unbounded stack of lines with a cursor; cells are characters ('' after a tab).

    With ``traced``, each cell also keeps where its character came from (an int the caller
    gives per character of the input, -1 for cells no character wrote: padding, erased cells):
    the redactor uses it to mask the bytes behind text only visible once rendered.
    """

    def __init__(self, width: int, traced: bool = False) -> None:
        self.lines: list[list[str]] = [[]]
        self.origins: list[list[int]] | None = [[]] if traced else None
        self.row = 0
        self.col = 0
        self.width = width

    @property
    def line(self) -> list[str]:
        return self.lines[self.row]

    def _set(self, lo: int, hi: int | None, cells: Sequence[str], origins: Sequence[int]) -> None:
        """Replace the cells [lo:hi] of the current line (hi None: to its end)."""
        self.line[lo:hi] = cells
        if self.origins is not None:
            self.origins[self.row][lo:hi] = origins

    def _pad(self) -> None:
        n = self.col - len(self.line)
        if n > 0:
            self._set(self.col, None, " " * n, [-1] * n)

    def write(self, text: str, origins: Sequence[int] = ()) -> None:
        self._pad()
        end = self.col + len(text)
        self._set(self.col, end, text, origins)
        self.col = end

    def tab(self, origin: int = -1) -> None:
        stop = (self.col // _TAB + 1) * _TAB
        self._pad()
        self._set(self.col, stop, ["\t", *([""] * (stop - self.col - 1))],
                  [origin, *([-1] * (stop - self.col - 1))])  # fmt: skip
        self.col = stop

    def newline(self) -> None:
        self.row += 1
        if self.row == len(self.lines):
            self.lines.append([])
            if self.origins is not None:
                self.origins.append([])
        self.col = 0

    def move_to_row(self, row: int) -> None:
        self.row = max(0, row)
        while self.row >= len(self.lines):
            self.lines.append([])
            if self.origins is not None:
                self.origins.append([])

    def move_to_col(self, col: int) -> None:
        self.col = min(max(0, col), self.width - 1)

    def csi(self, params: str, final: str) -> None:
        if params[:1] in ("?", ">", "=", "<"):
            return  # private modes: cursor visibility, bracketed paste, ...
        nums = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else []
        first = nums[0] if nums else 0
        n = max(1, first)
        line = self.line
        if final == "K":  # erase in line
            if first == 0:
                self._set(self.col, None, (), ())
            elif first == 1:
                k = min(self.col + 1, len(line))
                self._set(0, self.col + 1, " " * k, [-1] * k)
            elif first == 2:
                self._set(0, None, (), ())
        elif final == "J" and first == 0:  # erase below (a redraw); clearing the screen is ignored
            self._set(self.col, None, (), ())
            del self.lines[self.row + 1 :]
            if self.origins is not None:
                del self.origins[self.row + 1 :]
        elif final == "C":
            self.move_to_col(self.col + n)
        elif final == "D":
            self.move_to_col(self.col - n)
        elif final == "G":
            self.move_to_col(n - 1)
        elif final in "AF":
            self.move_to_row(self.row - n)
            if final == "F":
                self.col = 0
        elif final in "BE":
            self.move_to_row(self.row + n)
            if final == "E":
                self.col = 0
        elif final == "X":  # erase characters
            end = min(self.col + n, len(line))
            k = max(0, end - self.col)
            self._set(self.col, end, " " * k, [-1] * k)
        elif final == "P":  # delete characters
            self._set(self.col, self.col + n, (), ())
        elif final == "@" and self.col < len(line):  # insert blanks
            self._set(self.col, self.col, " " * n, [-1] * n)
        # Everything else (colours, absolute positions, scroll regions, ...) changes no text.

    def text(self) -> str:
        return "\n".join("".join(line) for line in self.lines)


def _render(text: str, width: int | None, origins: Sequence[int] | None) -> _Lines:
    screen = _Lines(width if width and width > 0 else _DEFAULT_WIDTH, origins is not None)
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "text":
            screen.write(m.group(), origins[m.start() : m.end()] if origins is not None else ())
        elif kind == "ctl":
            ch = m.group()
            if ch == "\n":
                screen.newline()
            elif ch == "\r":
                screen.col = 0
            elif ch == "\b":
                screen.col = max(0, screen.col - 1)
            elif ch == "\t":
                screen.tab(origins[m.start()] if origins is not None else -1)
            # other controls (BEL, NUL, SI/SO, a lone ESC, C1) show nothing
        elif kind == "csi" and not m.group("inter"):
            screen.csi(m.group("params"), m.group("final"))
        # "string" and "esc": titles, charsets, keypad modes... show nothing
    return screen


def render(text: str, width: int | None = None) -> str:
    """The plain text a person would read for terminal output ``text`` (see the module doc).

    ``width``: the terminal's columns, which bounds cursor moves to the right.
    """
    if not text:
        return ""
    return _render(text, width, None).text()


def render_traced(
    text: str, origins: Sequence[int], width: int | None = None
) -> list[tuple[list[str], list[int]]]:
    """``render`` that says where each character shown came from: the rendered lines, each as
    its cells and, per cell, the ``origins`` entry of the character that wrote it last (-1 for
    padding and erased cells). ``origins`` has one entry per character of ``text``."""
    screen = _render(text, width, origins)
    assert screen.origins is not None
    return list(zip(screen.lines, screen.origins, strict=True))


def incomplete_suffix(text: str) -> int:
    """How many characters at the end of ``text`` are an escape sequence still being written."""
    at = text.rfind("\x1b", max(0, len(text) - MAX_PENDING))
    if at < 0 or not _PARTIAL.match(text, at):
        return 0
    return len(text) - at


# --- keys ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """A key press: the bytes a terminal sends for it, and what it means for a job that has no
    terminal (its stdin is a pipe): a signal to its process group, end of input, or bytes."""

    name: str
    data: bytes
    pipe_data: bytes | None = None
    pipe_signal: signal.Signals | None = None
    pipe_eof: bool = False


_NAMED: dict[str, bytes] = {
    "enter": b"\r",
    "return": b"\r",
    "tab": b"\t",
    "escape": b"\x1b",
    "esc": b"\x1b",
    "backspace": b"\x7f",
    "space": b" ",
    "up": b"\x1b[A",
    "down": b"\x1b[B",
    "right": b"\x1b[C",
    "left": b"\x1b[D",
    "home": b"\x1b[H",
    "end": b"\x1b[F",
    "pageup": b"\x1b[5~",
    "pagedown": b"\x1b[6~",
    "insert": b"\x1b[2~",
    "delete": b"\x1b[3~",
    "f1": b"\x1bOP",
    "f2": b"\x1bOQ",
    "f3": b"\x1bOR",
    "f4": b"\x1bOS",
}
_NAMED.update(
    {
        f"f{n}": f"\x1b[{code}~".encode()
        for n, code in enumerate((15, 17, 18, 19, 20, 21, 23, 24), 5)
    }
)
_CTRL_SYMBOLS = {"@": 0, "space": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31, "?": 127}
_PIPE_SIGNALS = {3: signal.SIGINT, 28: signal.SIGQUIT, 26: signal.SIGTSTP}
KEY_HELP = (
    "Use names like C-c (Ctrl-C), C-d, C-z, C-\\, M-x (Alt-x), Enter, Tab, Esc, Backspace, "
    "Space, Up, Down, Left, Right, Home, End, PageUp, PageDown, Insert, Delete, F1..F12; other "
    "characters and escape sequences go in `input` as text (JSON escapes like \\u001b work)."
)


def parse_key(name: str) -> Key:
    """A key from its name: ``C-c``/``Ctrl-C``/``^C``, ``M-x``, ``Enter``, ``Up``, ``F5``, ..."""
    raw = name.strip()
    low = raw.lower()
    ctrl: str | None = None
    for prefix in ("c-", "ctrl-", "ctrl+", "^"):
        if low.startswith(prefix) and len(raw) > len(prefix):
            ctrl = low[len(prefix) :]
            break
    if ctrl is not None:
        if len(ctrl) == 1 and "a" <= ctrl <= "z":
            code = ord(ctrl) - ord("a") + 1
        elif ctrl in _CTRL_SYMBOLS:
            code = _CTRL_SYMBOLS[ctrl]
        else:
            raise InvalidRequest(f"Unknown key {name!r}. {KEY_HELP}")
        return Key(
            raw,
            bytes([code]),
            pipe_signal=_PIPE_SIGNALS.get(code),
            pipe_eof=code == 4,
        )
    for prefix in ("m-", "alt-", "alt+"):
        if low.startswith(prefix) and len(raw) == len(prefix) + 1:
            return Key(raw, b"\x1b" + raw[-1].encode())
    if low in _NAMED:
        data = _NAMED[low]
        return Key(raw, data, pipe_data=b"\n" if data == b"\r" else None)
    raise InvalidRequest(f"Unknown key {name!r}. {KEY_HELP}")
