"""PTY jobs, keys and interact's waiting, in-process with real programs on real terminals."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_background_job import ptyjob
from mcp_background_job.app import App
from mcp_background_job.errors import InvalidRequest, JobStateError
from mcp_background_job.jobs import Job, JobStatus, Stream

from .conftest import wait_for


async def _ended(app: App, job_id: str, timeout: float = 20) -> Job:
    assert await app.runner.wait_end(job_id, timeout), "job did not end"
    return await app.store.get_job(job_id)


async def _stdout(app: App, job_id: str) -> bytes:
    chunks = await app.store.read_stream(job_id, Stream.STDOUT, 0, 1 << 30)
    return b"".join(c.data for c in chunks)


async def test_a_pty_job_runs_on_a_terminal_of_its_size(app: App) -> None:
    view = await app.execute(
        "test -t 0 && test -t 1 && test -t 2 && echo tty; stty size; echo $TERM; echo err >&2",
        pty=True,
        rows=30,
        cols=100,
    )
    assert (view.pty, view.rows, view.cols) == (True, 30, 100)
    await _ended(app, view.id)
    out = await app.output(view.id)
    assert (out.text, out.render) == ("tty\n30 100\nxterm-256color\nerr\n", "plain")
    # stored as the terminal produced it; stderr shares the terminal
    assert await _stdout(app, view.id) == b"tty\r\n30 100\r\nxterm-256color\r\nerr\r\n"
    assert (await app.output(view.id, stream="stderr")).text == ""
    raw = await app.output(view.id, render="raw")
    assert (raw.text, raw.render, raw.cursor) == (
        "tty\r\n30 100\r\nxterm-256color\r\nerr\r\n",
        "raw",
        "34:0",
    )


async def test_pty_defaults_and_a_terminal_type_of_the_callers_choice(app: App) -> None:
    view = await app.execute("stty size; echo $TERM", pty=True, env={"TERM": "dumb"})
    await _ended(app, view.id)
    assert (await app.output(view.id)).text == "24 120\ndumb\n"
    with pytest.raises(InvalidRequest, match="need pty=true"):
        await app.execute("true", rows=10)


async def test_a_job_without_pty_has_no_terminal(app: App) -> None:
    view = await app.execute("test -t 0 || test -t 1 || echo no tty")
    await _ended(app, view.id)
    assert (await app.output(view.id)).text == "no tty\n"


async def test_plain_rendering_resolves_colours_and_redraws(app: App) -> None:
    command = r"printf 'a\033[31mred\033[0m\n10%%\r50%%\r100%%\n'"
    piped = await app.execute(command)
    await _ended(app, piped.id)
    # Raw text keeps carriage returns; escape sequences never reach a client (issue 3).
    assert (await app.output(piped.id)).text == "ared\n10%\r50%\r100%\n"
    assert (await app.output(piped.id, render="plain")).text == "ared\n100%\n"
    tail = await app.tail(piped.id, lines=1, render="plain")
    assert (tail.text, tail.lines, tail.render) == ("100%\n", 1, "plain")


async def test_a_read_stops_before_an_escape_sequence_still_being_written(
    app: App, tmp_path: Path
) -> None:
    view = await app.execute(
        r"printf 'ab\033['; until [ -e gate ]; do sleep 0.02; done; printf '31mred\033[0m\n'",
        cwd=str(tmp_path),
        pty=True,
    )
    await wait_for(lambda: _has(app, view.id, b"ab\x1b["))
    first = await app.output(view.id)
    assert (first.text, first.cursor, first.more) == ("ab", "2:0", True)
    (tmp_path / "gate").touch()
    await _ended(app, view.id)
    rest = await app.output(view.id, cursor=first.cursor)
    assert (rest.text, rest.end) == ("red\n", True)


async def _has(app: App, job_id: str, data: bytes) -> bool:
    await app.runner.flush(job_id)
    return data in await _stdout(app, job_id)


async def test_python_repl_waiting_for_input_is_detected(app: App) -> None:
    view = await app.execute("python3 -i -q", pty=True)
    r = await app.interact(view.id, until=r"^>>> $")
    assert (r.returned_because, r.output) == ("prompt", ">>> ")
    r = await app.interact(view.id, "x = 6 * 7\n")
    assert (r.returned_because, r.output) == ("waiting_for_input", "x = 6 * 7\n>>> ")
    # a slow statement: the REPL is not reading its terminal meanwhile, so interact waits
    r = await app.interact(view.id, "import time; time.sleep(1); print(x)\n")
    assert r.returned_because == "waiting_for_input"
    assert r.output == "import time; time.sleep(1); print(x)\n42\n>>> "
    r = await app.interact(view.id, "", eof=True)
    assert (r.returned_because, r.status) == ("ended", JobStatus.COMPLETED)


async def test_waiting_for_input_on_a_pipe(app: App) -> None:
    view = await app.execute("while read line; do echo got:$line; done")
    r = await app.interact(view.id, "a\nb\n")
    assert (r.returned_because, r.output) == ("waiting_for_input", "got:a\ngot:b\n")
    r = await app.interact(view.id, "", eof=True)
    assert (r.returned_because, r.status) == ("ended", JobStatus.COMPLETED)


async def test_a_program_seen_reading_is_awaited_until_it_reads_again(app: App) -> None:
    view = await app.execute("read go; echo working; sleep 0.5; echo done; read again")
    # Output pauses longer than settle_s, but the job was seen waiting for input before the
    # write, so only its next read (or the end) ends the wait.
    r = await app.interact(view.id, "go\n", settle_s=0.1)
    assert (r.returned_because, r.output) == ("waiting_for_input", "working\ndone\n")
    await app.kill(view.id, grace_s=0)


_SELECT_THEN_SLEEP = (
    'python3 -c "import select, sys, time\n'
    "select.select([sys.stdin], [], [])\n"
    "print('got', sys.stdin.readline().strip(), flush=True)\n"
    'time.sleep(60)"'
)


async def test_quiet_ends_the_wait_for_programs_not_seen_reading(app: App) -> None:
    # Waiting in select() on a pipe is not shown as waiting for input: output, then silence
    # for settle_s while nothing runs, ends the wait.
    view = await app.execute(_SELECT_THEN_SLEEP)
    r = await app.interact(view.id, "go\n", settle_s=0.3, wait_s=30)
    assert (r.returned_because, r.output) == ("quiet", "got go\n")
    r = await app.interact(view.id, "", settle_s=0.1, wait_s=0.3)
    assert (r.returned_because, r.output) == ("timeout", "")
    await app.kill(view.id, grace_s=0)


async def test_until_waits_for_its_match_only(app: App) -> None:
    view = await app.execute("cat")
    r = await app.interact(view.id, "one\ntwo\n", until=r"^two$")
    assert (r.returned_because, r.output) == ("prompt", "one\ntwo\n")
    # with `until`, neither quiet output nor a program waiting for input ends the wait
    r = await app.interact(view.id, "", until="never", wait_s=0.3)
    assert (r.returned_because, r.output) == ("timeout", "")
    with pytest.raises(InvalidRequest, match="not a valid regular expression"):
        await app.interact(view.id, "", until="(")
    with pytest.raises(InvalidRequest, match="Unknown key"):
        await app.interact(view.id, "", keys=["C-c", "Hyper-x"])
    r = await app.interact(view.id, "", keys=["C-d"])
    assert (r.returned_because, r.status, r.eof_sent) == ("ended", JobStatus.COMPLETED, False)


async def test_ctrl_c_on_a_pipe_signals_the_process_group(app: App) -> None:
    view = await app.execute("echo started; exec sleep 60")
    await wait_for(lambda: _has(app, view.id, b"started"))
    r = await app.interact(view.id, "", keys=["C-c"])
    assert (r.returned_because, r.status) == ("ended", JobStatus.KILLED)
    job = await app.store.get_job(view.id)
    assert job.signal == "SIGINT"
    assert job.reason == "interrupted by Ctrl-C sent with interact; ended by signal SIGINT"
    other = await app.execute("cat")
    with pytest.raises(JobStateError, match="only be the last key"):
        await app.interact(other.id, "", keys=["C-d", "Enter"])
    await app.interact(other.id, "", keys=["Enter", "C-d"])
    assert (await _ended(app, other.id)).status is JobStatus.COMPLETED
    assert (await app.output(other.id)).text == "\n"


async def test_ctrl_c_on_a_pty_interrupts_the_foreground_program(app: App) -> None:
    # A handled Ctrl-C: the shell (job control on) is not interrupted, the job goes on.
    view = await app.execute(
        "python3 -c \"import time\ntry:\n print('ready', flush=True)\n time.sleep(60)\n"
        "except KeyboardInterrupt:\n print('caught')\" ; echo shell goes on",
        pty=True,
    )
    await wait_for(lambda: _has(app, view.id, b"ready"))
    r = await app.interact(view.id, "", keys=["C-c"], wait_s=20)
    assert r.returned_because == "ended"
    assert r.output.endswith("caught\nshell goes on\n")
    job = await app.store.get_job(view.id)
    assert (job.status, job.exit_code) == (JobStatus.COMPLETED, 0)


async def test_eof_on_a_pty_is_ctrl_d(app: App) -> None:
    view = await app.execute("cat", pty=True)
    r = await app.interact(view.id, "hello\n")
    assert r.output == "hello\nhello\n"  # the terminal's echo, then cat's copy
    r = await app.interact(view.id, "", eof=True)
    assert (r.returned_because, r.status, r.eof_sent) == ("ended", JobStatus.COMPLETED, True)


async def test_kill_and_timeouts_stop_pty_jobs(app: App) -> None:
    view = await app.execute("sleep 60 & sleep 60", pty=True)
    final = await app.kill(view.id, grace_s=2)
    assert final.status is JobStatus.KILLED
    idle = await app.execute("echo once; exec sleep 60", pty=True, idle_timeout_s=0.5)
    job = await _ended(app, idle.id)
    assert job.status is JobStatus.TIMED_OUT
    assert job.reason == "idle timeout: no output for 0.5 s; ended by signal SIGTERM"


@pytest.mark.parametrize("pty", [True, False])
async def test_a_prompt_printed_before_the_call_is_shown_and_matched(app: App, pty: bool) -> None:
    view = await app.execute('echo intro; printf "Name? "; read n; echo "hi $n"', pty=pty)
    await wait_for(lambda: _has_prompt(app, view.id))
    r = await app.interact(view.id, until=r"Name\? $")
    assert (r.returned_because, r.output) == ("prompt", "Name? ")
    r = await app.interact(view.id)  # nothing to send: it is waiting for input already
    assert (r.returned_because, r.output) == ("waiting_for_input", "Name? ")
    r = await app.interact(view.id, "Bo\n")
    assert r.returned_because == "ended"
    assert r.output == ("Bo\nhi Bo\n" if pty else "hi Bo\n")


async def _has_prompt(app: App, job_id: str) -> bool:
    await app.runner.flush(job_id)
    job = await app.store.get_job(job_id, events=False)
    return job.stdout_bytes + job.stderr_bytes >= len("intro\nName? ") + (1 if job.pty else 0)


def test_a_closed_terminal_is_never_used_again() -> None:
    """After close its descriptor numbers may name other files: nothing may touch them."""
    term = ptyjob.Terminal(24, 80)
    term.close()
    term.close()
    assert term.pump() is False
    with pytest.raises(OSError, match="closed"):
        term.pending_input()
    with pytest.raises(OSError, match="closed"):
        term.line_editing()
