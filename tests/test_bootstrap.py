"""The first start from a checkout, as an MCP client makes it: ``scripts/serve`` builds the
repository's .venv, then serves. A client gives a server 60 s to answer ``initialize``; one that
gives up SIGTERMs the server's process group (the Python SDK; then SIGKILL). The build must not
be left half-done by that, nor trusted if it was cut short anyway.

Each test works on a copy of the checkout (tracked and new files, no .venv), with the
environment MCP clients pass (HOME, PATH, ... only). Slow: each builds a venv (package caches
make the later ones quick).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
#: What an MCP client waits for initialize (the TypeScript SDK's default request timeout).
CLIENT_TIMEOUT_S = 60.0
#: A build on a busy machine with cold caches; only a stuck one takes longer.
BUILD_TIMEOUT_S = 300.0


def _client_env() -> dict[str, str]:
    keep = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER")
    return {k: os.environ[k] for k in keep if k in os.environ}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the checkout's files (as git sees them, new ones included), without .venv."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    copy = tmp_path / "checkout"
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    assert not (copy / ".venv").exists()
    return copy


def _builds(checkout: Path) -> list[int]:
    """Live build processes of this checkout (``venv.bash --install``)."""
    needle = f"{checkout}/scripts/lib/venv.bash\0--install".encode()
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in Path(entry.path, "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)


def _log(checkout: Path) -> str:
    log = checkout / ".venv-install.log"
    return log.read_text(errors="replace") if log.exists() else ""


@contextlib.contextmanager
def _serve(checkout: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``scripts/serve`` started as the Python SDK starts a server: in a new session, on pipes."""
    proc = subprocess.Popen(
        [str(checkout / "scripts" / "serve"), "--db", str(checkout / "jobs.db")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=_client_env(), cwd=checkout, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _give_up(proc: subprocess.Popen[bytes]) -> None:
    """What the Python SDK does to a server that does not answer: SIGTERM to its process
    group, SIGKILL 2 s later."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def _start_with_a_client(checkout: Path) -> float:
    """Start scripts/serve with a real MCP client; run a job. Returns the seconds until
    ``initialize`` was answered."""
    transport = StdioTransport(
        str(checkout / "scripts" / "serve"), ["--db", str(checkout / "jobs.db")],
        env=_client_env(), cwd=str(checkout), keep_alive=False,
        log_file=checkout / "serve.log",
    )  # fmt: skip
    started = time.monotonic()
    async with Client(transport, timeout=CLIENT_TIMEOUT_S) as client:
        took = time.monotonic() - started
        job = await client.call_tool("execute", {"command": "echo hello"})
        assert job.structured_content is not None
        waited = await client.call_tool(
            "wait", {"job_id": job.structured_content["id"], "timeout_s": 30}
        )
        assert waited.structured_content is not None
        assert waited.structured_content["job"]["exit_code"] == 0
    return took


async def test_first_start_answers_within_a_client_s_timeout(checkout: Path) -> None:
    took = await _start_with_a_client(checkout)
    print(f"first start to initialize: {took:.1f} s\n{_log(checkout)}")
    assert took < CLIENT_TIMEOUT_S
    assert (checkout / ".venv" / ".bootstrap-stamp").read_text() == "\n"
    assert not (checkout / ".venv.new").exists()
    assert _log(checkout).count("Installing mcp-background-job") == 1
    # The second start builds nothing.
    await _start_with_a_client(checkout)
    assert _log(checkout).count("Installing mcp-background-job") == 1


async def test_a_client_that_gives_up_does_not_stop_the_build(checkout: Path) -> None:
    """The client's SIGTERM reaches scripts/serve, not the build in its own session: the build
    finishes and the next start uses it, without building again."""
    with _serve(checkout) as proc:
        _wait(lambda: "Installing mcp-background-job" in _log(checkout), 60, "the build")
        assert _builds(checkout), "no build process"
        _give_up(proc)
    _wait(lambda: not _builds(checkout), BUILD_TIMEOUT_S, "the build to finish")
    assert (checkout / ".venv" / ".bootstrap-stamp").exists(), _log(checkout)
    assert "Installed with" in _log(checkout)
    await _start_with_a_client(checkout)
    assert _log(checkout).count("Installing mcp-background-job") == 1


async def test_a_build_killed_halfway_is_not_trusted(checkout: Path) -> None:
    """SIGKILL of the build itself (a reboot, the OOM killer): what it left is not used; the
    next start builds again and works."""
    with _serve(checkout) as proc:
        _wait(lambda: (checkout / ".venv.new" / "bin" / "python").exists(), 120, "the new venv")
        for pid in _builds(checkout):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the build leads its own session
        _give_up(proc)
    _wait(lambda: not _builds(checkout), 30, "the killed build to go")
    assert not (checkout / ".venv" / ".bootstrap-stamp").exists()
    await _start_with_a_client(checkout)
    assert (checkout / ".venv" / ".bootstrap-stamp").exists()
    assert not (checkout / ".venv.new").exists()
    assert _log(checkout).count("Installing mcp-background-job") == 2
