"""Argument checks of the job operations (pure helpers of ``checks``)."""

from __future__ import annotations

import signal

from mcp_background_job.checks import parse_signal


def test_parse_signal() -> None:
    assert parse_signal("sigkill") is signal.SIGKILL
    assert parse_signal("15") is signal.SIGTERM
