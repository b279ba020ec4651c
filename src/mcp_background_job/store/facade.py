"""``Store``: the async face of the storage gateway. Each method hands one function of a
``Connection`` (``lifecycle``, ``output``, ``upkeep``, ``listing``) to the writer thread or a
reader thread (``connections``), and returns frozen records from ``jobs``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from ..db import utcnow
from ..errors import InvalidRequest, JobNotFound
from ..jobs import (
    AuditEvent,
    Chunk,
    EndCause,
    Job,
    JobEvent,
    JobOptions,
    JobStatus,
    ServerInstance,
    Stream,
)
from ..tokens import ApiToken
from . import controls, counts, lifecycle, listing, output, search, tokens, upkeep
from .connections import Connections
from .controls import ANSWER_CHANNEL, CONTROL_CHANNEL, Control
from .records import (
    Change,
    JobFilter,
    OutputBatch,
    PruneCandidate,
    PruneResult,
    QueueState,
    Stats,
    StatusChange,
    audit_values,
)

if TYPE_CHECKING:
    from ..db.listen import Notices

#: Job ids are this many lowercase hex characters.
JOB_ID_LENGTH = 12
#: Jobs whose rows (events and labels cascading) are deleted in one transaction.
_PRUNE_JOBS_PER_TXN = 200


class Store:
    """Jobs, events, output chunks, server instances, tokens and control rows, in one SQLite
    file or PostgreSQL database.

    Over the ~400-line bound (~560) on purpose: it is the one storage gateway, and every method
    is a thin, documented hand-off of a ``store/`` function to the writer thread or a reader;
    the SQL lives in those modules (lifecycle, listing, output, search, tokens, controls, ...)."""

    def __init__(self, path: Path | str, *, read_pool: int = 4, writer_nice: int = 0) -> None:
        self.path = path
        self._db = Connections(path, read_pool=read_pool, writer_nice=writer_nice)
        self._write = self._db.write
        self._query = self._db.query
        #: LISTEN (PostgreSQL only), started by the first ``listen``.
        self._notices: Notices | None = None

    @property
    def read_only(self) -> bool:
        return self._db.no_writes is not None

    async def open(self, *, create: bool = True, reading: bool = False) -> None:
        """Check the file, create it if missing (``create``; owner-only, all at once) and
        migrate it to the newest schema if it is older.

        The schema revision is read without the write lock: a database already at the newest
        schema opens while another program holds the lock. ``reading``: the caller only reads
        (the command line's list, show, logs, stats, audit). A database it cannot write, or
        another user's, is then opened read-only instead of refused, and nothing is created.
        Any failure closes the store again (no writer thread is left behind).
        """
        try:
            await self._db.open(create=create, reading=reading)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._notices is not None:
            await self._notices.close()
        await self._db.close()

    def wal_bytes(self) -> int:
        return self._db.wal_bytes()

    async def checkpoint(self) -> None:
        """Copy the WAL into the database file (see ``Connections.checkpoint``)."""
        await self._db.checkpoint()

    # --- servers --------------------------------------------------------------------------

    async def register_server(self, server: ServerInstance, version: str) -> None:
        await self._write(partial(lifecycle.register_server, server=server, version=version))

    async def mark_server_stopped(self, server_id: str) -> None:
        await self._write(partial(lifecycle.mark_server_stopped, server_id=server_id))

    async def servers_not_stopped(self, exclude: str = "") -> list[ServerInstance]:
        return await self._query(partial(lifecycle.servers_not_stopped, exclude=exclude))

    async def get_server(self, server_id: str) -> ServerInstance | None:
        return await self._query(partial(lifecycle.get_server, server_id=server_id))

    async def heartbeat(self, server_id: str) -> None:
        await self._write(partial(controls.heartbeat, server_id=server_id))

    async def silent_hosts(self, before: datetime, exclude: str) -> list[str]:
        return await self._query(partial(controls.silent_hosts, before=before, exclude=exclude))

    async def declare_dead(
        self, host: str, before: datetime, server_id: str, reason: str
    ) -> list[str] | None:
        """See ``controls.declare_dead``: the ids of the jobs failed (None: not declared)."""
        return await self._write(partial(controls.declare_dead, host=host, before=before,
                                         server_id=server_id, reason=reason))  # fmt: skip

    # --- requests to another host's server (see ``controls``) -----------------------------

    async def listen(self) -> bool:
        """Start listening for requests and answers (PostgreSQL); False: poll (SQLite, or
        LISTEN failed)."""
        if not isinstance(self.path, str):
            return False
        if self._notices is None:
            # Imported here: psycopg is loaded only by servers on PostgreSQL (cheap CLI calls).
            from ..db.listen import Notices

            self._notices = Notices(self.path, (CONTROL_CHANNEL, ANSWER_CHANNEL))
        await self._notices.start()
        return self._notices.listening

    def notice(self, channel: str, payload: str) -> asyncio.Event | None:
        """The event the next notice on ``channel`` with ``payload`` sets (None: no LISTEN)."""
        if self._notices is None or not self._notices.listening:
            return None
        return self._notices.event(channel, payload)

    def drop_notice(self, channel: str, payload: str) -> None:
        if self._notices is not None:
            self._notices.drop(channel, payload)

    async def ask_control(self, job_id: str, host: str, kind: str, request: str) -> int:
        return await self._write(partial(controls.ask, job_id=job_id, host=host, kind=kind,
                                         request=request))  # fmt: skip

    async def pending_controls(self, host: str, server_id: str) -> list[Control]:
        return await self._query(partial(controls.pending, host=host, server_id=server_id))

    async def take_control(self, control_id: int, server_id: str) -> bool:
        return await self._write(partial(controls.take, control_id=control_id,
                                         server_id=server_id))  # fmt: skip

    async def answer_control(self, control_id: int, answer: str | None, error: str | None) -> None:
        await self._write(partial(controls.answer, control_id=control_id, answer=answer,
                                  error=error))  # fmt: skip

    async def get_control(self, control_id: int) -> Control | None:
        return await self._query(partial(controls.get, control_id=control_id))

    async def withdraw_control(self, control_id: int) -> bool:
        return await self._write(partial(controls.withdraw, control_id=control_id))

    async def forget_control(self, control_id: int) -> None:
        await self._write(partial(controls.forget, control_id=control_id))

    # --- jobs -----------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        job_id: str,
        command: str,
        cwd: str,
        shell: str,
        env: Mapping[str, str],
        labels: Iterable[str],
        timeout_s: float | None,
        owner_id: str | None,
        options: JobOptions = JobOptions(),  # noqa: B008 (frozen)
        audit: AuditEvent | None = None,
        starting_on: str | None = None,
        host: str | None = None,
    ) -> Job:
        """Record a new queued job with its labels and dependencies.

        Every id in ``options.after`` must name an existing job (``InvalidRequest`` otherwise).
        Dependencies can only name jobs that exist already and never change afterwards, so
        they cannot form a cycle.

        ``audit``: an event about the job written in the same transaction (its ``job_id`` is set
        here): if it cannot be written, neither is the job, so nothing runs unaudited.
        ``starting_on``: the boot id of the server about to spawn the job at once; its intent to
        start is recorded with the row (see ``mark_start_attempt``).
        """
        now = utcnow()
        opts = options
        job = Job(
            id=job_id,
            command=command,
            cwd=cwd,
            shell=shell,
            env=dict(env),
            labels=tuple(sorted(set(labels))),
            status=JobStatus.QUEUED,
            created_at=now,
            owner_id=owner_id,
            timeout_s=timeout_s,
            pty=opts.pty,
            rows=opts.rows,
            cols=opts.cols,
            priority=opts.priority,
            idle_timeout_s=opts.idle_timeout_s,
            after=tuple(sorted(set(opts.after))),
            run_anyway=opts.run_anyway,
            rerun_of=opts.rerun_of,
            detached=opts.detached,
            boot_id=starting_on,
            start_attempted_at=now if starting_on is not None else None,
            host=host,
            events=(JobEvent(now, None, JobStatus.QUEUED, None, owner_id),),
        )
        row = None
        if audit is not None:
            row = audit_values(replace(audit, job_id=job_id), now)
        await self._write(partial(lifecycle.create, job=job, audit=row))
        return job

    async def mark_start_attempt(self, job_id: str, server_id: str, boot_id: str) -> Job:
        """Record that ``server_id`` is about to spawn its queued job, before it does: a queued
        job with the mark may have run, so no server starts it again (a server that takes it
        over looks for its processes instead). Raises ``TransitionConflict`` if the job is no
        longer this server's to start (ended, or marked already)."""
        return await self._write(
            partial(
                lifecycle.mark_start_attempt, job_id=job_id, server_id=server_id, boot_id=boot_id
            )
        )

    async def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        server_id: str | None,
        reason: str | None = None,
        only_from: frozenset[JobStatus] | None = None,
        started_at: datetime | None = None,
        ended_at: datetime | None = None,
        exit_code: int | None = None,
        signal: str | None = None,
        pid: int | None = None,
        pid_start: int | None = None,
        boot_id: str | None = None,
    ) -> Job:
        """Move a job to ``to`` if its current status allows it, with its event row, atomically.

        The other arguments are recorded with it (``None``: left as it is; ``started_at`` and
        ``ended_at`` default to now when the job starts or ends).
        Raises ``TransitionConflict`` if the job is not in an allowed status (someone else moved
        it first); never overwrites a status it did not expect. The returned job has no events.
        """
        change = Change(started_at, ended_at, exit_code, signal, pid, pid_start, boot_id)

        def work(conn: Connection) -> Job:
            job = lifecycle.load(conn, job_id, events=False)
            return lifecycle.transition(
                conn,
                job,
                to,
                server_id=server_id,
                reason=reason,
                only_from=only_from,
                change=change,
            )

        return await self._write(work)

    async def record_exit(
        self,
        job_id: str,
        returncode: int,
        ended_at: datetime,
        *,
        server_id: str,
        disk_full: bool = False,
    ) -> Job:
        """Record how a running job's main process ended, reading why the server was stopping
        it (if it was) in the same transaction, so a kill requested by any server counts.

        A job still queued with its start intent recorded (its server died before it recorded
        ``running``, and its exit was found later) is moved to running first, from the time of
        the intent, so its events tell what happened."""
        return await self._write(
            partial(
                lifecycle.record_exit,
                job_id=job_id,
                returncode=returncode,
                ended_at=ended_at,
                server_id=server_id,
                disk_full=disk_full,
            )
        )

    async def request_end(self, job_id: str, cause: EndCause) -> Job:
        """Record why the server is stopping an active job, before any signal is sent; the first
        cause wins (a timeout that fires during a kill stays a kill), except that an interrupt
        note gives way to any real stop request."""
        return await self._write(partial(lifecycle.request_end, job_id=job_id, cause=cause))

    async def claim(self, job_id: str, from_owner: str | None, to_owner: str) -> bool:
        """Take over an active job of a dead server; False if another server took it first."""
        return await self._write(
            partial(lifecycle.claim, job_id=job_id, from_owner=from_owner, to_owner=to_owner)
        )

    async def note(self, job_id: str, reason: str, *, server_id: str) -> bool:
        """An event on a running job of ``server_id`` without a status change; False if it is
        not running there any more."""
        return await self._write(
            partial(lifecycle.note, job_id=job_id, reason=reason, server_id=server_id,
                    owner=server_id)
        )  # fmt: skip

    async def adopt(self, job_id: str, from_owner: str | None, to_owner: str) -> bool:
        """Take over a running detached job of a server that is gone, with an "adopted" event;
        False if another server took it first (a compare-and-set on the owner)."""
        return await self._write(
            partial(lifecycle.adopt, job_id=job_id, from_owner=from_owner, to_owner=to_owner)
        )

    async def queue_state(
        self, owner_id: str, limit: int, *, starting: frozenset[str] = frozenset()
    ) -> QueueState:
        """The server's queue, read in one transaction: up to ``limit`` queued jobs whose
        dependencies allow them to start (highest priority first, then oldest), the queued jobs
        that never can (a dependency did not complete and the job does not run anyway), and how
        many jobs it has queued in all. Jobs in ``starting`` (being started already) are left
        out. Read on the write connection, in order with the writes."""
        # On the writer, in order with the writes: a job whose start was recorded before this
        # read can never look queued to it (the runner relies on that to start a job once).
        return await self._write(
            partial(lifecycle.queue_state, owner_id=owner_id, limit=limit, starting=starting)
        )

    async def resolve_id(self, id_or_prefix: str, *, audited: bool = False) -> str:
        """A full job id from an id or a unique prefix of one. ``audited``: ids found only in
        the audit log count too (a job deleted since, or refused before it got a row)."""
        text = id_or_prefix.strip().lower()
        if not text or not all(c in "0123456789abcdef" for c in text):
            raise JobNotFound(id_or_prefix)
        if len(text) == JOB_ID_LENGTH:
            return text  # a whole id: whoever loads it reports a missing job
        rows = await self._query(partial(lifecycle.ids_with_prefix, prefix=text, audited=audited))
        if len(rows) == 1 or (rows and rows[0] == text):
            return str(rows[0])
        if not rows:
            raise JobNotFound(id_or_prefix)
        raise InvalidRequest(
            f"Job id prefix {id_or_prefix!r} matches several jobs: give more characters."
        )

    async def get_job(self, job_id: str, *, events: bool = True) -> Job:
        return await self._query(partial(lifecycle.load, job_id=job_id, events=events))

    async def ended_among(self, job_ids: Iterable[str]) -> set[str]:
        """Those of the jobs that have ended, or no longer exist (pruned): one short read."""
        ids = sorted(set(job_ids))
        return await self._query(partial(lifecycle.ended_among, job_ids=ids))

    async def get_jobs(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The jobs of these ids that exist (without events), by id."""
        jobs = await self._query(partial(lifecycle.get_jobs, job_ids=job_ids))
        return {j.id: j for j in jobs}

    async def list_jobs(
        self, flt: JobFilter, *, limit: int, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        """Newest first; returns the page and the cursor of the next page (None at the end).

        How it stays fast on a big history (measured on 100,000 jobs): see ``listing``.
        """
        query = listing.list_query(flt, limit, cursor)
        jobs = await self._query(
            partial(listing.list_page, query=query, command_contains=flt.command_contains)
        )
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, (listing.encode_list_cursor(jobs[-1]) if more else None)

    async def orphaned_jobs(
        self, dead_owner_ids: Iterable[str], host: str | None = None
    ) -> list[Job]:
        """Jobs nobody will look after: queued or running jobs of the given (dead) servers, of
        no server, or of servers that stopped (a stopped server's running job is one whose end
        it could not record: it left it in the spool directory). Oldest first. ``host``: only
        jobs of that host (and of no recorded host): a job queued for a host has no server
        until one there claims it."""
        dead = list(dead_owner_ids)
        return await self._query(partial(lifecycle.orphaned_jobs, dead_owner_ids=dead, host=host))

    # --- output ---------------------------------------------------------------------------

    async def write_output(self, batches: Sequence[OutputBatch]) -> None:
        """Store new chunks, drop trimmed ones and update the byte counters, in one transaction."""
        await self._write(partial(output.write_output, batches=batches))

    async def chunk_layout(self, job_id: str, stream: Stream) -> tuple[list[tuple[int, int]], int]:
        """(offset, length) of every stored chunk of a stream, and the highest seq of the job.

        Used to resume ingestion of a job this process did not start (after a crash).
        """
        return await self._query(partial(output.chunk_layout, job_id=job_id, stream=stream))

    async def read_stream(
        self, job_id: str, stream: Stream, start: int, max_bytes: int, *, whole_rows: bool = False
    ) -> list[Chunk]:
        """Stored bytes of one stream from ``start``, at most ``max_bytes``, as chunks in order.

        If ``start`` falls in a dropped gap, the result begins at the next stored chunk. Rows are
        cut in SQL, so reading 64 KiB out of 1 MiB rows moves 64 KiB; ``whole_rows`` returns the
        rows that cover the range uncut instead (to rewrite them).
        """
        return await self._query(
            partial(
                output.read_stream,
                job_id=job_id,
                stream=stream,
                start=start,
                max_bytes=max_bytes,
                whole_rows=whole_rows,
            )
        )

    async def read_around(
        self, job_id: str, stream: Stream, start: int, max_bytes: int, context: int
    ) -> tuple[list[Chunk], list[Chunk], list[Chunk]]:
        """``read_stream(start, max_bytes)``, and the ``context`` bytes before ``start`` and
        after the last byte returned (each as ``read_stream`` returns them), in one trip: a
        page with the context its masking needs (three trips cost ~3x under load, issue 13)."""
        return await self._query(
            partial(
                output.read_around,
                job_id=job_id,
                stream=stream,
                start=start,
                max_bytes=max_bytes,
                context=context,
            )
        )

    async def read_interleaved(
        self, job_id: str, starts: Mapping[Stream, int], max_bytes: int
    ) -> list[Chunk]:
        """Chunks of both streams in the order they were stored, from the given stream offsets."""
        return await self._query(
            partial(output.read_interleaved, job_id=job_id, starts=starts, max_bytes=max_bytes)
        )

    async def read_backwards(
        self, job_id: str, streams: Sequence[Stream], enough: int, max_bytes: int
    ) -> list[Chunk]:
        """The last stored bytes (in storage order) until ``enough`` newlines or ``max_bytes``
        are seen. Its cost depends on how much is returned, not on how much the job wrote."""
        return await self._query(
            partial(
                output.read_backwards,
                job_id=job_id,
                streams=streams,
                enough=enough,
                max_bytes=max_bytes,
            )
        )

    async def other_stream_offset(self, job_id: str, stream: Stream, offset: int) -> int:
        """See ``search.other_stream_offset`` (a cursor for both streams at a line)."""
        return await self._query(
            partial(search.other_stream_offset, job_id=job_id, stream=stream, offset=offset)
        )

    async def newlines_before(self, job_id: str, stream: Stream, offset: int) -> int:
        """See ``search.newlines_before`` (line numbers of a grep that starts mid-output)."""
        return await self._query(
            partial(search.newlines_before, job_id=job_id, stream=stream, offset=offset)
        )

    async def rewrite_chunks(
        self, job_id: str, stream: Stream, updates: Sequence[tuple[int, bytes]]
    ) -> None:
        """Replace the bytes of stored chunks (same offsets, same lengths: masked output)."""
        if updates:
            await self._write(
                partial(output.rewrite_chunks, job_id=job_id, stream=stream, updates=updates)
            )

    # --- history and retention ----------------------------------------------------------

    async def status_changes(self, after: int, limit: int = 500) -> tuple[list[StatusChange], int]:
        """Status changes recorded after event ``after``, oldest first, and the newest event id
        (lower than ``after`` when pruning removed the newest events: start again from it)."""
        # Polled twice a second for resource subscribers: one trip to a reader thread.
        return await self._query(partial(upkeep.status_changes, after=after, limit=limit))

    async def stats(self, *, longest: int = 5) -> Stats:
        return await self._query(partial(upkeep.stats, longest=longest))

    async def prune_candidates(
        self,
        *,
        ended_before: datetime | None = None,
        max_output_bytes: int | None = None,
        keep_failed: bool = False,
    ) -> list[PruneCandidate]:
        """Ended jobs to delete: those that ended before ``ended_before``, then the oldest others
        while the stored output of all jobs is above ``max_output_bytes``. Never an active job.
        """
        return await self._query(
            partial(
                upkeep.prune_candidates,
                ended_before=ended_before,
                max_output_bytes=max_output_bytes,
                keep_failed=keep_failed,
            )
        )

    async def delete_jobs(
        self, job_ids: Sequence[str], *, batch_rows: int = upkeep.PRUNE_BATCH_ROWS
    ) -> PruneResult:
        """Delete ended jobs with their output, events and labels, ``batch_rows`` output rows per
        transaction so other writers wait at most one batch. Active jobs are never deleted (the
        status is checked in every statement), whatever the caller passes."""
        jobs = chunks = freed = 0
        for start in range(0, len(job_ids), _PRUNE_JOBS_PER_TXN):
            group = list(job_ids[start : start + _PRUNE_JOBS_PER_TXN])
            while True:
                # One transaction per batch; other writes queued meanwhile go in between.
                deleted = await self._write(
                    partial(upkeep.delete_output_batch, job_ids=group, batch_rows=batch_rows)
                )
                chunks += deleted
                if deleted < batch_rows:
                    break
            size, count = await self._write(partial(upkeep.delete_ended, job_ids=group))
            freed += size
            jobs += count
        return PruneResult(jobs=jobs, chunks=chunks, output_bytes=freed)

    async def vacuum(self) -> bool:
        """Rebuild the file without its free pages, then truncate the WAL that VACUUM filled.
        False if the WAL could not be truncated (another program kept reading for the whole
        busy timeout): it then holds a copy of the database until the next checkpoint.

        VACUUM cannot run in a transaction: it goes through the driver connection directly.
        """
        return await self._write(upkeep.vacuum, transaction=False)

    # --- audit log ------------------------------------------------------------------------

    async def record_audit(self, event: AuditEvent) -> AuditEvent:
        """Append one audit event; returns it with its id and time."""
        now = utcnow()
        event_id = await self._write(partial(upkeep.insert_audit, row=audit_values(event, now)))
        return replace(event, id=event_id, at=now)

    async def list_audit(
        self,
        *,
        kind: str | None = None,
        since: datetime | None = None,
        job_id: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[AuditEvent]:
        """Audit events newest first (page on with ``before_id`` = the last id returned)."""
        return await self._query(
            partial(
                upkeep.list_audit,
                kind=kind,
                since=since,
                job_id=job_id,
                limit=limit,
                before_id=before_id,
            )
        )

    # --- bearer tokens (serve --http) -----------------------------------------------------

    async def create_token(self, token: ApiToken) -> None:
        """Store a token (its hash); ``InvalidRequest`` if the name is taken."""
        await self._write(partial(tokens.insert_token, token=token))

    async def list_tokens(self) -> list[ApiToken]:
        return await self._query(tokens.list_tokens)

    async def find_token(self, sha256: str) -> ApiToken | None:
        return await self._query(partial(tokens.find_token, sha256=sha256))

    async def revoke_token(self, name: str) -> bool:
        """Revoke the token of that name now; False if there is none."""
        return await self._write(partial(tokens.revoke_token, name=name, at=utcnow()))

    async def counts_by_status(self) -> dict[JobStatus, int]:
        """How many jobs are in each status (every status listed, 0 included)."""
        return await self._query(counts.by_status)
