"""The command line's commands for people (everything but ``serve``), one function each.

Reading commands open the database through ``history.open_existing`` (migrated like a server
would if they can write it, read-only if they cannot; never created by a typo). ``run`` and
``kill`` open an ``App``: for their duration this process is a server on the database, so the
same checks and policy apply as for MCP tools, and other servers see it as alive.

Import rule: the top of the command line, beside ``server``. Only ``run`` and ``kill`` use
``app`` (imported inside them: the job stack is not loaded to list or show; through its
facade: ``App.job``, never ``app.store``; following output is ``history``'s job, on the store);
the other commands use ``history``, ``store`` and ``report``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import db, history, proctree, worker
from .config import parse_since
from .db import utcnow
from .errors import InvalidRequest, JobStateError, StorageError
from .history import FileSink
from .jobs import JobStatus, Stream
from .models import summary, view
from .report import Report, db_files, ended_how_view, human_bytes, human_duration, output_text
from .store import JobFilter, Stats

if TYPE_CHECKING:
    from .app import App
    from .config import Settings
    from .jobs import Job, ServerInstance
    from .store import Store

#: ``run``'s exit status for a job that ran out of time, as GNU ``timeout`` does.
EXIT_TIMED_OUT = 124


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.cmd == "db" and args.db_cmd in ("upgrade", "downgrade", "current", "history"):
        return schema(args, settings)
    handlers: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]] = {
        "list": list_jobs,
        "history": list_jobs,
        "show": show,
        "logs": logs,
        "grep": grep,
        "run": run,
        "start": start,
        "kill": kill,
        "stats": stats,
        "audit": audit,
        "worker": worker.work,
        "db": prune if args.cmd == "db" and args.db_cmd == "prune" else vacuum,
    }
    return asyncio.run(handlers[args.cmd](args, settings))


def _out() -> Report:
    return Report(sys.stdout)


def _note(text: str) -> None:
    print(f"mcp-background-job: {text}", file=sys.stderr, flush=True)


async def _reading(settings: Settings) -> Store:
    return await history.open_existing(settings.db)


async def _changing(settings: Settings) -> Store:
    """An existing database, for a command that writes to it (``db prune``, ``db vacuum``)."""
    return await history.open_existing(settings.db, reading=False)


# --- reading ---------------------------------------------------------------------------------


async def list_jobs(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit < 0:
        raise InvalidRequest("--limit must be 0 (all) or more.")
    flt = JobFilter(
        statuses=frozenset(JobStatus(s) for s in args.status or ()),
        label=args.label,
        command_contains=args.command_contains,
        since=parse_since(args.since) if args.since else None,
        until=parse_since(args.until) if args.until else None,
        exit_code=args.exit_code,
        host=args.on_host,
    )
    store = await _reading(settings)
    try:
        jobs: list[Job] = []
        cursor: str | None = None
        while not args.limit or len(jobs) < args.limit:
            want = 200 if not args.limit else min(200, args.limit - len(jobs))
            page, cursor = await store.list_jobs(flt, limit=want, cursor=cursor)
            jobs.extend(page)
            if cursor is None:
                break
    finally:
        await store.close()
    now = utcnow()
    if args.json:
        print(json.dumps([summary(j, now).model_dump(mode="json") for j in jobs], indent=2))
    else:
        _out().jobs(jobs, now)
    return 0


async def show(args: argparse.Namespace, settings: Settings) -> int:
    store = await _reading(settings)
    try:
        job = await store.get_job(await store.resolve_id(args.id))
        tail, _ = await history.last_lines(store, job, list(Stream), max(0, args.lines))
    finally:
        await store.close()
    now = utcnow()
    if args.json:
        data = view(job, now).model_dump(mode="json")
        data["last_lines"] = output_text(tail, styled=False).plain
        print(json.dumps(data, indent=2))
    else:
        _out().show(view(job, now), tail, args.lines, now)
    return 0


async def logs(args: argparse.Namespace, settings: Settings) -> int:
    streams = list(Stream) if args.stream == "both" else [Stream(args.stream)]
    out, err = sys.stdout.buffer, sys.stderr.buffer
    files = {Stream.STDOUT: out, Stream.STDERR: err} if args.stream == "both" else {streams[0]: out}
    sink = FileSink(files, sys.stderr)
    store = await _reading(settings)
    try:
        job = await store.get_job(await store.resolve_id(args.id), events=False)
        if args.tail is not None:
            chunks, pos = await history.last_lines(store, job, streams, args.tail)
            starts = {s: pos[s] for s in Stream}
            for ch in reversed(chunks):
                starts[ch.stream] = ch.offset
            history.emit(chunks, starts, sink)
        else:
            pos = {s: 0 for s in Stream}
            await history.copy_output(store, job.id, streams, pos, sink)
        if args.follow:
            await history.follow(store, job.id, streams, pos, sink, host=settings.host)
    finally:
        await store.close()
    return 0


async def grep(args: argparse.Namespace, settings: Settings) -> int:
    """``grep``: see ``historygrep`` (imported here: the masking stack only for this command)."""
    from . import historygrep

    return await historygrep.grep(args, settings)


async def stats(args: argparse.Namespace, settings: Settings) -> int:
    store = await _reading(settings)
    try:
        st = await store.stats(longest=max(0, args.longest))
    finally:
        await store.close()
    now = utcnow()
    if args.json:
        data = {
            "jobs": st.jobs,
            "by_status": {str(s): n for s, n in st.by_status},
            "output_written_bytes": st.written_bytes,
            "output_stored_bytes": st.stored_bytes,
            "output_dropped_bytes": st.dropped_bytes,
            "database_bytes": _db_bytes(settings.db, st),
            "free_bytes": st.free_pages * st.page_size,
            "longest": [summary(j, now).model_dump(mode="json") for j in st.longest],
        }
        print(json.dumps(data, indent=2))
    else:
        _out().stats(st, settings.db, now)
    return 0


async def audit(args: argparse.Namespace, settings: Settings) -> int:
    """``audit``: the security audit log, oldest of the page first (as a log reads)."""
    store = await _reading(settings)
    try:
        events = await store.list_audit(
            kind=args.kind,
            since=parse_since(args.since) if args.since else None,
            job_id=await store.resolve_id(args.job, audited=True) if args.job else None,
            limit=args.limit,
        )
    finally:
        await store.close()
    for e in reversed(events):
        if args.json:
            print(json.dumps({**asdict(e), "at": e.at.isoformat() if e.at else None},
                             default=str))  # fmt: skip
            continue
        who = f" client={e.client_name}" if e.client_name else ""
        who += f" token={e.token}" if e.token else ""
        what = " ".join(
            x for x in (e.decision, f"rule={e.rule}" if e.rule else None,
                        f"job={e.job_id}" if e.job_id else None) if x
        )  # fmt: skip
        cmd = f" {e.command!r}" if e.command else ""
        extra = "" if e.command else f" {json.dumps(e.detail, sort_keys=True)}"
        print(f"{e.at:%Y-%m-%d %H:%M:%S} #{e.id} {e.kind} {what}{who}{cmd}{extra}")
    return 0


# --- starting and stopping jobs ----------------------------------------------------------------


async def run(args: argparse.Namespace, settings: Settings) -> int:
    argv: list[str] = args.argv
    line = argv[0] if len(argv) == 1 else shlex.join(argv)
    env = _env_pairs(args.env or ())
    from .app import App  # the job stack: only the commands that run or signal a job

    app = await App.open(settings)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()
    caught = {signal.SIGINT: "INT", signal.SIGTERM: "TERM", signal.SIGHUP: "HUP"}
    job_id: str | None = None
    stops = 0
    early: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        # Like a terminal's Ctrl-C for a foreground job; a second one kills at once. A signal
        # that comes while the job is being started is applied once it has an id.
        nonlocal stops
        if job_id is None:
            early.append(signum)
            return
        stops += 1
        name = caught[signum] if stops == 1 else "KILL"
        grace = settings.kill_grace_s if stops == 1 else 0.0
        task = loop.create_task(app.kill(job_id, name, grace), name=f"kill-{name}")
        tasks.add(task)

    for signum in caught:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        job_view = await app.execute(line, args.cwd, env, args.timeout, args.label or [])
        job_id = job_view.id
        if not args.quiet:
            _note(f"job {job_id} started: {line}")
        for signum in early:
            on_signal(signum)
        tasks.add(loop.create_task(_forward_stdin(app, job_id), name="stdin"))
        sink = FileSink(
            {Stream.STDOUT: sys.stdout.buffer, Stream.STDERR: sys.stderr.buffer}, sys.stderr
        )
        pos = {s: 0 for s in Stream}
        job = await history.follow(
            app.store, job_id, list(Stream), pos, sink, poll_s=0.05, check_owner=False
        )
        if not args.quiet:
            _note(_ended_note(job))
        return exit_status(job)
    finally:
        for signum in caught:
            loop.remove_signal_handler(signum)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await app.close()


def _env_pairs(pairs: Iterable[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise InvalidRequest(f"--env {pair!r}: use NAME=VALUE.")
        env[name] = value
    return env


def _ended_note(job: Job) -> str:
    end = view(job, utcnow())
    how = ended_how_view(end)
    return (
        f"job {job.id} {job.status}"
        + (f" ({how})" if how != "-" else "")
        + (f": {job.reason}" if job.reason else "")
        + f" after {human_duration(end.duration_s)}"
    )


def exit_status(job: Job) -> int:
    """The job's exit status as a shell reports it: the exit code, or 128 + the signal number;
    124 for a timeout (as ``timeout`` does), 1 for a job that never ran or was lost."""
    if job.status is JobStatus.TIMED_OUT:
        return EXIT_TIMED_OUT
    if job.exit_code is not None:
        return job.exit_code
    if job.signal:
        name = job.signal.removeprefix("SIG")
        with contextlib.suppress(KeyError, ValueError):
            return 128 + (int(name) if name.isdigit() else signal.Signals[f"SIG{name}"].value)
    return 1


async def _forward_stdin(app: App, job_id: str) -> None:
    """Copy this process's stdin to the job's (EOF included), without blocking the loop: a
    daemon thread does the blocking reads, one buffer at a time (back-pressure)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    def reader() -> None:
        while True:
            try:
                data = os.read(sys.stdin.fileno(), 65536)
            except (OSError, ValueError):
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
            except (RuntimeError, asyncio.CancelledError):
                return  # the loop is gone: the job has ended
            if not data:
                return

    threading.Thread(target=reader, name="stdin", daemon=True).start()
    while True:
        data = await queue.get()
        while True:
            try:
                await app.write_stdin(job_id, data, eof=not data)
                break
            except JobStateError:
                job = await app.job(job_id)
                if job.status.is_terminal:
                    return
                await asyncio.sleep(0.05)  # queued, or its stdin buffer is full: try again
        if not data:
            return


async def kill(args: argparse.Namespace, settings: Settings) -> int:
    if isinstance(settings.db, Path) and not await asyncio.to_thread(db.inspect_file, settings.db):
        raise db.no_database(settings.db)  # not a new database at a mistyped path
    from .app import App  # the job stack: only the commands that run or signal a job

    if (args.id is None) == (args.label is None):
        raise InvalidRequest("kill: give a job id, or --label LABEL (not both).")
    app = await App.open(settings)
    try:
        if args.label is not None:
            return await _kill_labelled(app, args.label, args.signal, args.grace)
        before = await app.job(args.id)
        job_id = before.id
        after = await app.kill(job_id, args.signal, args.grace)
    finally:
        await app.close()
    how = ended_how_view(after)
    if before.status.is_terminal:
        print(
            f"job {job_id} had already ended: {after.status}" + (f" ({how})" if how != "-" else "")
        )
        return 0
    print(f"job {job_id} {after.status}" + (f" ({how})" if how != "-" else ""))
    return 0 if after.status.is_terminal else 1


async def _kill_labelled(app: App, label: str, sig: str, grace: float | None) -> int:
    """Kill every queued or running job with ``label`` (detached ones of no server too)."""
    flt = JobFilter(label=label, statuses=frozenset({JobStatus.QUEUED, JobStatus.RUNNING}))
    jobs, _ = await app.store.list_jobs(flt, limit=10_000)
    if not jobs:
        print(f"no queued or running job has the label {label!r}")
        return 0
    after = await asyncio.gather(*(app.kill(j.id, sig, grace) for j in jobs))
    for killed in after:
        how = ended_how_view(killed)
        print(f"job {killed.id} {killed.status}" + (f" ({how})" if how != "-" else ""))
    return 0 if all(v.status.is_terminal for v in after) else 1


async def start(args: argparse.Namespace, settings: Settings) -> int:
    """Start a detached job and print its id; this process does not wait for it (it leaves it
    running as it stops, like any server: see runner/keeper.py)."""
    argv: list[str] = args.argv
    line = argv[0] if len(argv) == 1 else shlex.join(argv)
    from .app import App  # the job stack: only the commands that run or signal a job

    app = await App.open(settings)
    try:
        view = await app.execute(
            line, args.cwd, _env_pairs(args.env or ()), args.timeout, args.label or [],
            detach=True,
        )  # fmt: skip
    finally:
        await app.close()
    print(view.id)
    return 0


# --- the database ------------------------------------------------------------------------------


def _db_bytes(target: Path | str, st: Stats) -> int:
    """The database's size: its files (with the WAL), or what PostgreSQL reports."""
    if isinstance(target, str):
        return st.page_count * st.page_size
    return sum(p.stat().st_size for p in db_files(target))


def schema(args: argparse.Namespace, settings: Settings) -> int:
    """``db upgrade|downgrade|current|history``: Alembic's commands through the same
    connection set-up as the server (``db.migrate_to``, newer schemas refused). Only upgrade
    and downgrade take the write lock."""
    path = settings.db
    try:
        return _schema(args, path)
    except Exception as exc:
        described = db.storage_error(exc, path)
        if described is None or described is exc:
            raise
        raise described from exc


def _schema(args: argparse.Namespace, path: Path | str) -> int:
    from alembic import command as alembic  # only for `db` actions: ~0.3 s to import

    changing = args.db_cmd in ("upgrade", "downgrade")
    if isinstance(path, str):  # PostgreSQL: the database exists; it may have no schema yet
        exists = True
    else:
        exists = db.check_for_writing(path) if changing else db.inspect_file(path)
    if args.db_cmd == "history" and not exists:
        alembic.history(db.alembic_config())
        return 0
    if not exists:
        assert isinstance(path, Path)  # (a PostgreSQL database always exists)
        if args.db_cmd != "upgrade":
            raise db.no_database(path)
        db.create_database(path, args.revision)
    engine = db.make_sync_engine(path, writer=changing)
    try:
        with engine.connect() as conn:
            cfg = db.alembic_config(conn)
            before = None if not exists else db.check_revision(conn, cfg)
            conn.rollback()
            if args.db_cmd == "current":
                alembic.current(cfg)
            elif args.db_cmd == "history":
                alembic.history(cfg, indicate_current=True)
            else:
                if exists:
                    db.migrate_to(conn, args.revision, downgrade=args.db_cmd == "downgrade")
                after = db.check_revision(conn, cfg)
                conn.rollback()
                print(
                    f"{db.describe(path)}: schema revision {before or 'none'} -> {after or 'none'}"
                )
    finally:
        engine.dispose()
    return 0


async def prune(args: argparse.Namespace, settings: Settings) -> int:
    store = await _changing(settings)
    try:
        candidates = await store.prune_candidates(
            ended_before=utcnow() - args.older_than if args.older_than else None,
            max_output_bytes=args.max_output,
            keep_failed=args.keep_failed,
        )
        size = human_bytes(sum(c.stored_bytes for c in candidates))
        if args.dry_run:
            print(f"would delete {len(candidates)} ended jobs with {size} of output")
            return 0
        result = await store.delete_jobs([c.job_id for c in candidates])
    finally:
        await store.close()
    print(
        f"deleted {result.jobs} ended jobs with {human_bytes(result.output_bytes)} of output "
        f"({result.chunks} output rows); `db vacuum` gives the space back to the disk"
    )
    return 0


async def vacuum(args: argparse.Namespace, settings: Settings) -> int:
    """``db vacuum``, refused while a server on this host uses the database: VACUUM writes the
    whole database into the WAL, and the WAL cannot be truncated while the server's readers
    use it (measured: 825 MiB became 1.6 GiB on disk)."""
    store = await _changing(settings)
    try:
        live = await _live_servers(store, settings.host)
        if live:
            pids = ", ".join(f"pid {s.pid}" for s in live)
            raise StorageError(
                f"A server is using {db.describe(settings.db)} ({pids}): VACUUM now would leave "
                "a WAL as big as the database next to it (its readers keep it from being "
                "truncated), doubling the space used instead of freeing it. Stop the server(s) "
                "and run `db vacuum` again; until then new output reuses the space that `db prune` "
                "freed.",
                kind="in_use",
            )
        before = _db_bytes(settings.db, await store.stats(longest=0))
        folded = await store.vacuum()
        after = _db_bytes(settings.db, await store.stats(longest=0))
    finally:
        await store.close()
    print(f"{db.describe(settings.db)}: {human_bytes(before)} -> {human_bytes(after)}")
    if not folded:
        _note(
            "another program kept reading the database, so its WAL still holds the rewritten "
            "copy; the space comes back at the next checkpoint (a server's, or when the last "
            "program using the database closes it)"
        )
    return 0


async def _live_servers(store: Store, host: str) -> list[ServerInstance]:
    """Servers registered on the database and alive on this host (``host``: the setting, the
    name this machine's servers register under; ``run`` and ``kill`` count: they are servers
    while they run). Servers of other hosts cannot be seen from here."""
    return [
        s
        for s in await store.servers_not_stopped()
        if s.hostname == host and proctree.is_alive(s.pid, s.pid_start, s.boot_id)
    ]
