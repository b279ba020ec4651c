"""The security layer in App (without MCP): rate limit, refusals and their audit rows, redacted
reads of a real job, and masking stored output in place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcp_background_job.admission import Client, TokenBucket, audit_text
from mcp_background_job.app import App
from mcp_background_job.config import Settings
from mcp_background_job.errors import PolicyRefused, RateLimited
from mcp_background_job.jobs import Stream
from mcp_background_job.redact import Redactor


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_burst_then_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(burst=3, per_s=2.0, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token every 0.5 s
    clock.now += 0.5
    assert bucket.take() == 0.0
    clock.now += 60  # refills to the burst, not beyond
    assert [bucket.take() for _ in range(4)][-1] > 0


def test_audit_text_masks_escapes_and_caps() -> None:
    r = Redactor()
    assert audit_text(r, "deploy --token=abcdef123456") == "deploy --token=************"
    assert audit_text(r, "printf '\x1b]52;c;x\x07'") == "printf '\\x1b]52;c;x\\x07'"
    long = audit_text(r, "echo " + "a" * 5000)
    assert len(long) < 2100 and long.endswith("more characters]")


@pytest.fixture
async def secure_app(tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(
        db=tmp_path / "state" / "jobs.db",
        subreaper=False,
        rate_limit_burst=3,
        rate_limit_per_s=0.001,
        store_redacted=True,
    )
    app = await App.open(settings)
    yield app
    await app.close()


async def test_refusal_and_rate_limit_are_audited(secure_app: App, tmp_path: Path) -> None:
    who = Client(name="test-agent", version="1.0", session_id="s1")
    with pytest.raises(PolicyRefused) as info:
        await secure_app.execute("sudo rm -rf /", cwd=str(tmp_path), client=who)
    assert info.value.rule == "builtin:rm-root"
    assert info.value.matched == "sudo rm -rf /"  # the simple command as written
    await secure_app.execute("true", cwd=str(tmp_path))
    await secure_app.execute("true", cwd=str(tmp_path))
    with pytest.raises(RateLimited) as limited:
        await secure_app.execute("true", cwd=str(tmp_path))
    assert limited.value.retry_after_s > 0
    events = (await secure_app.audit()).events
    assert [e.kind for e in events] == [
        "rate_limited", "execute", "execute", "execute", "policy_loaded",
    ]  # fmt: skip
    refused = events[-2]
    assert (refused.decision, refused.rule, refused.client_name) == (
        "refused", "builtin:rm-root", "test-agent",
    )  # fmt: skip
    assert refused.session_id == "s1"
    assert (await secure_app.audit(kind="rate_limited", limit=1)).next_before_id is not None


async def test_reads_are_masked_and_the_stored_copy_is_masked_at_the_end(
    secure_app: App, tmp_path: Path
) -> None:
    job = await secure_app.execute(
        "echo 'aws AKIAIOSFODNN7EXAMPLE'; printf 'token=%s\\n' \"$DEPLOY_TOKEN\"",
        cwd=str(tmp_path),
        env={"DEPLOY_TOKEN": "given-by-the-caller"},
    )
    live = await secure_app.output(job.id)
    await secure_app.wait(job.id, 20)
    assert "IOSFODNN7EXAMPLE" not in live.text
    out = await secure_app.output(job.id)
    assert "AKIA****************" in out.text
    assert "given-by-the-caller" not in out.text
    assert out.redactions == 0  # masked in the database already (store_redacted)
    tail = await secure_app.tail(job.id, 5)
    assert "IOSFODNN7EXAMPLE" not in tail.text
    chunks = await secure_app.store.read_stream(job.id, Stream.STDOUT, 0, 1 << 20)
    stored = b"".join(c.data for c in chunks)
    assert b"IOSFODNN7EXAMPLE" not in stored and b"given-by-the-caller" not in stored
    assert len(stored) == out.bytes


async def test_a_secret_at_the_very_end_is_masked_in_the_stored_copy(
    secure_app: App, tmp_path: Path
) -> None:
    job = await secure_app.execute("printf 'password=hunter22'", cwd=str(tmp_path))
    await secure_app.wait(job.id, 20)
    chunks = await secure_app.store.read_stream(job.id, Stream.STDOUT, 0, 1 << 20)
    assert b"".join(c.data for c in chunks) == b"password=********"


@pytest.mark.parametrize("max_bytes", [7, 64, 1000])
async def test_paging_in_small_pieces_never_shows_a_secret(
    app: App, tmp_path: Path, max_bytes: int
) -> None:
    secrets = ["AKIAIOSFODNN7EXAMPLE", "ghp_" + "x1" * 18, "password=hunter22secret"]
    script = "; ".join(f"echo 'line {i} {s} tail'" for i, s in enumerate(secrets * 20))
    job = await app.execute(script, cwd=str(tmp_path))
    await app.wait(job.id, 20)
    pages, cursor = [], None
    while True:
        page = await app.output(job.id, cursor=cursor, max_bytes=max_bytes)
        pages.append(page.text)
        cursor = page.cursor
        if page.end:
            break
    text = "".join(pages)
    assert "IOSFODNN7EXAMPLE" not in text and "x1x1x1" not in text and "hunter22" not in text
    whole = (await app.output(job.id)).text
    assert text == whole
    assert whole.count("AKIA****************") == 20


async def test_allow_with_audit_runs_the_command_and_records_what_was_not_verified(
    tmp_path: Path,
) -> None:
    settings = Settings(
        db=tmp_path / "jobs.db", subreaper=False, policy_unparseable="allow-with-audit"
    )
    app = await App.open(settings)
    try:
        # A name in the job's env is known (`$TOOL` with TOOL=echo is `echo`): only a name
        # computed at run time is unverifiable.
        job = await app.execute("$(printf echo) ok", cwd=str(tmp_path))
        await app.wait(job.id, 20)
        assert (await app.output(job.id)).text == "ok\n"
        (event,) = [e for e in (await app.audit(kind="execute")).events]
        assert (event.decision, event.rule) == ("allowed", "unverifiable:dynamic")
        assert "$(printf echo)" in str(event.detail["unverified"])
    finally:
        await app.close()
