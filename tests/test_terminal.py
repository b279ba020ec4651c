"""Plain text from terminal output, unfinished escape sequences, and key names (pure)."""

from __future__ import annotations

import signal

import pytest

from mcp_background_job.errors import InvalidRequest
from mcp_background_job.terminal import incomplete_suffix, parse_key, render, render_traced


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        ("", ""),
        ("plain text\n", "plain text\n"),
        ("crlf\r\nlines\r\n", "crlf\nlines\n"),
        # a progress bar redrawn with \r reads as its last state
        ("".join(f"\rload {i:3d}%" for i in range(101)) + "\r\ndone\r\n", "load 100%\ndone\n"),
        # a shorter redraw leaves the tail of the longer one, as on a screen...
        ("loading.....\rdone", "doneing....."),
        # ...unless the line is erased first
        ("loading.....\r\x1b[Kdone", "done"),
        ("loading.....\r\x1b[2Kdone", "done"),
        ("abc\bX", "abX"),
        ("abc\b\b\x1b[P", "ac"),  # delete a character (readline editing)
        ("ab\x1b[D\x1b[1@X", "aXb"),  # insert a blank, then type over it
        ("colour \x1b[1;31mred\x1b[0m \x1b[38;5;208morange\x1b[m", "colour red orange"),
        ("\x1b]0;window title\x07after", "after"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x1b[?2004hbash-5.2# ", "bash-5.2# "),
        ("\x1b(Bcharset\x1b=\x1b>", "charset"),
        ("bell\x07 and nul\x00", "bell and nul"),
        ("a\tb", "a\tb"),
        ("tab\tX\rY", "Yab\tX"),
        # node's REPL redraws its prompt line: column 1, erase below, prompt, column 3
        ("Welcome\r\n\x1b[1G\x1b[0J> \x1b[3G", "Welcome\n> "),
        # multi-line progress: cursor up and redraw
        ("a 10%\nb 10%\n\x1b[2A\ra 90%\n\rb 50%\n", "a 90%\nb 50%\n"),
        ("x\x1b[3Cy", "x   y"),
        ("abcdef\x1b[3G\x1b[1K", "   def"),
        ("abcdef\x1b[2G\x1b[2X", "a  def"),
        ("unterminated \x1b]0;title", "unterminated "),
        ("lone escape \x1b", "lone escape "),
    ],
)
def test_render(raw: str, plain: str) -> None:
    assert render(raw) == plain


def test_render_bounds_cursor_moves_to_the_width() -> None:
    assert render("a\x1b[999Cb", width=10) == "a" + " " * 8 + "b"
    assert len(render("a\x1b[99999Cb")) < 2000


def test_render_keeps_every_line_of_long_output() -> None:
    text = "".join(f"line {i}\r\n" for i in range(5000))
    assert render(text).splitlines() == [f"line {i}" for i in range(5000)]


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("done", 0),
        ("abc\x1b", 1),
        ("abc\x1b[", 2),
        ("abc\x1b[31", 4),
        ("abc\x1b[31m", 0),
        ("abc\x1b[?20", 5),
        ("abc\x1b]0;tit", 7),
        ("abc\x1b]0;title\x07", 0),
        ("abc\x1b]0;title\x1b", 1),  # the first half of the string terminator
        ("abc\x1b]0;title\x1b\\", 0),
        ("abc\x1b(", 2),
        ("abc\x1b(B", 0),
    ],
)
def test_incomplete_suffix(text: str, held: int) -> None:
    assert incomplete_suffix(text) == held


def test_incomplete_suffix_gives_up_on_endless_strings() -> None:
    assert incomplete_suffix("\x1b]0;" + "x" * 10_000) == 0


@pytest.mark.parametrize(
    ("name", "data", "pipe_signal", "pipe_eof"),
    [
        ("C-c", b"\x03", signal.SIGINT, False),
        ("ctrl-C", b"\x03", signal.SIGINT, False),
        ("^C", b"\x03", signal.SIGINT, False),
        ("C-d", b"\x04", None, True),
        ("C-z", b"\x1a", signal.SIGTSTP, False),
        ("C-\\", b"\x1c", signal.SIGQUIT, False),
        ("C-[", b"\x1b", None, False),
        ("C-@", b"\x00", None, False),
        ("M-x", b"\x1bx", None, False),
        ("Enter", b"\r", None, False),
        ("tab", b"\t", None, False),
        ("Esc", b"\x1b", None, False),
        ("Backspace", b"\x7f", None, False),
        ("Up", b"\x1b[A", None, False),
        ("PageDown", b"\x1b[6~", None, False),
        ("F1", b"\x1bOP", None, False),
        ("F12", b"\x1b[24~", None, False),
    ],
)
def test_keys(name: str, data: bytes, pipe_signal: signal.Signals | None, pipe_eof: bool) -> None:
    key = parse_key(name)
    assert (key.data, key.pipe_signal, key.pipe_eof) == (data, pipe_signal, pipe_eof)


def test_enter_is_a_newline_on_a_pipe() -> None:
    assert parse_key("Enter").pipe_data == b"\n"


@pytest.mark.parametrize("name", ["", "C-", "C-cc", "Hyper-x", "F13", "M-xy"])
def test_unknown_keys_say_what_works(name: str) -> None:
    with pytest.raises(InvalidRequest, match=r"Unknown key .* Use names like C-c"):
        parse_key(name)


@pytest.mark.parametrize(
    "raw",
    [
        "loading.....\rdone",
        "abc\b\b\x1b[P",
        "ab\x1b[D\x1b[1@X",
        "a 10%\nb 10%\n\x1b[2A\ra 90%\n\rb 50%\n",
        "abcdef\x1b[3G\x1b[1K",
        "abcdef\x1b[2G\x1b[2X",
        "tab\tX\rY",
        "x\x1b[3Cy\x1b[1;31mz\x1b[0m",
        "Welcome\r\n\x1b[1G\x1b[0J> \x1b[3G",
    ],
)
def test_render_traced_shows_the_same_text_and_where_each_character_came_from(raw: str) -> None:
    lines = render_traced(raw, range(len(raw)))
    assert "\n".join("".join(cells) for cells, _ in lines) == render(raw)
    for cells, origins in lines:
        for cell, origin in zip(cells, origins, strict=True):
            if origin >= 0:  # written by that character of the input
                assert raw[origin] == cell
            else:  # padding or an erased cell
                assert cell in (" ", "")
