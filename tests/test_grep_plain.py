"""Which pages grep may match as bytes: ``grepping.is_plain`` and ``Redacted.plain`` (the
masking's own scan says the page is plain, so grep does not look again)."""

from __future__ import annotations

import pytest

from mcp_background_job.grepping import is_plain
from mcp_background_job.redact import Redactor

GITHUB = "ghp_1234567890abcdefghijABCDEFGHIJ123456"


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        (b"a line\n\tand another\n", True),
        ("héllo wörld\n".encode(), True),
        (b"ok\r\n", False),  # \r: the shown line has none
        (b"bell\x07\n", False),
        (b"del\x7f\n", False),
        (b"\x1b[31mred\x1b[0m\n", False),
        ("c1 \u009b31m\n".encode(), False),
    ],
)
def test_is_plain(text: bytes, plain: bool) -> None:
    assert is_plain(text) is plain


def test_the_masking_scan_says_whether_a_window_is_plain() -> None:
    r = Redactor()
    masked = r.window(f"x token {GITHUB}\nmore\n".encode(), 0, 20, live=False, final=True)
    assert masked.plain and b"*" in masked.data  # masked, and still plain
    for text in (b"a\x1b[1mb\n", "é\n".encode(), b"a\rb\n", b"a\x08b\n"):
        assert not r.window(text, 0, len(text), live=False, final=True).plain, text
    # Plain says no byte of the window shows differently, a CRLF aside (grep checks for \r).
    for text in (b"plain text\n", b"line\r\n"):
        w = r.window(text, 0, len(text), live=False, final=True)
        assert w.plain and is_plain(text) == (b"\r" not in text)
