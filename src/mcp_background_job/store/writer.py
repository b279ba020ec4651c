"""The writer thread: the process's one write connection, with group commit."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from ..db import BUSY_TIMEOUT_MS, is_locked, lower_thread_priority, storage_error
from ..errors import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Write units committed in one transaction at most: bounds how long a group holds the lock.
GROUP_MAX = 64
#: However late a unit comes round, it gets at least this long to take a held lock.
MIN_LOCK_WAIT_S = 1.0


@dataclass(frozen=True, slots=True)
class _Unit:
    work: Callable[[Connection], Any]
    transaction: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    deadline: float  # time.monotonic() after which it stops waiting for a held lock


class Writer:
    """The process's one write connection, owned by one thread, with group commit.

    Callers hand it units of work (functions of a ``Connection``). Every unit waiting when the
    thread comes round runs in one ``BEGIN IMMEDIATE`` transaction; if one raises, the
    transaction is undone and run again without it, so an error undoes only the unit that
    raised. Units are functions of the database alone, so running one again is safe. A unit
    costs one thread hop however many
    statements it runs (aiosqlite hops once per statement: under CPU load each hop waits for a
    time slice), and concurrent writes share a commit.

    A unit that was handed over is carried out even if its caller is cancelled: the end of a job
    is recorded although the call that recorded it went away.

    While another program holds the write lock, a unit waits for it at most ``lock_wait_s``
    after it was handed over (at least ``MIN_LOCK_WAIT_S`` once its turn comes), then fails
    with "the database is locked by another program": the wait is bounded per unit, not per
    attempt, so units queued behind a stuck one wait together instead of one timeout each in
    turn (a 60 s lock made each write wait its own 10 s, one after the other). Once a wait has
    run out, later units wait ``MIN_LOCK_WAIT_S`` only, until a write goes through again.
    Errors reach callers as ``storage_error`` describes them. If the thread dies (it cannot
    even connect), every waiting and every later unit fails with the reason.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        nice: int = 0,
        path: Path | str | None = None,
        lock_wait_s: float = BUSY_TIMEOUT_MS / 1000,
    ) -> None:
        self._engine = engine
        self._nice = nice
        self._path: Path | str = path if path is not None else Path(str(engine.url.database))
        self._lock_wait_s = lock_wait_s
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failed: StorageError | None = None
        self._guard = threading.Lock()  # orders hand-overs with the thread's death
        self._busy_ms = BUSY_TIMEOUT_MS
        #: Until then, another program is known to keep the lock: units fail fast.
        self._stuck_until = 0.0
        #: Units the thread has taken from the queue and not answered yet (for its death).
        self._taken: list[_Unit | None] = []

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        with self._guard:
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="db-writer", daemon=True)
                self._thread.start()

    async def run(self, work: Callable[[Connection], T], *, transaction: bool = True) -> T:
        """Run ``work`` on the write connection, in a transaction (shared with the other units
        waiting), or alone outside any transaction (``transaction=False``: VACUUM, checkpoints,
        migrations, which manage their own). Starts the thread on first use."""
        if self._closed:
            raise StorageError("The database is closed (the server is stopping).", kind="closed")
        self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        unit = _Unit(work, transaction, loop, future, time.monotonic() + self._lock_wait_s)
        with self._guard:
            if self._failed is not None:
                raise _again(self._failed)
            self._queue.put(unit)
        return await future

    async def close(self) -> None:
        """Finish the units already handed over, then close the connection."""
        if self._thread is None or self._closed:
            self._closed = True
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _main(self) -> None:
        if self._nice:
            lower_thread_priority(self._nice)
        try:
            self._serve()
        except BaseException as exc:  # nothing may be left waiting for a dead thread
            described = storage_error(exc, self._path)
            failure = described or StorageError(
                f"The database writer stopped: {type(exc).__name__}: {exc}", kind="other"
            )
            # A known cause is said plainly; anything else is a bug: with its traceback.
            log.error(  # noqa: TRY400
                "db_writer_failed path=%s error=%s", self._path, failure, exc_info=described is None
            )
            with self._guard:
                self._failed = failure
                # Units taken but not answered (a settled one is skipped), then the queue.
                left = [u for u in self._taken if u is not None]
                while True:
                    try:
                        unit = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if unit is not None:
                        left.append(unit)
            _deliver([(u, False, _again(failure)) for u in left])

    def _serve(self) -> None:
        carry: list[_Unit | None] = []
        with self._engine.connect() as conn:
            while True:
                unit = carry.pop() if carry else self._queue.get()
                self._taken = [unit]
                if unit is None:
                    return
                if not unit.transaction:
                    self._run_alone(conn, unit)
                    continue
                group = [unit]
                while len(group) < GROUP_MAX:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None or not more.transaction:
                        carry.append(more)
                        break
                    group.append(more)
                self._taken = [*group, *carry]
                self._run_group(conn, group)

    def _wait_until(self, conn: Connection, deadline: float) -> bool:
        """Set the busy timeout to what is left until ``deadline`` (at least MIN_LOCK_WAIT_S);
        only MIN_LOCK_WAIT_S while the lock is known to be stuck (see ``_run_group``). True
        in that case: the attempt is the units' last."""
        now = time.monotonic()
        stuck = now < self._stuck_until
        left = MIN_LOCK_WAIT_S if stuck else max(deadline - now, MIN_LOCK_WAIT_S)
        ms = min(BUSY_TIMEOUT_MS, int(left * 10) * 100)  # in steps of 100 ms: few changes
        # (PostgreSQL: a fixed lock_timeout, set when connecting; there is no file lock.)
        if ms != self._busy_ms and conn.dialect.name == "sqlite":
            _driver_pragma(conn, f"busy_timeout={ms}")
            self._busy_ms = ms
        return stuck

    def _error(self, exc: Exception) -> Exception:
        return storage_error(exc, self._path) or exc

    def _run_alone(self, conn: Connection, unit: _Unit) -> None:
        self._wait_until(conn, unit.deadline)
        try:
            outcome = (unit, True, unit.work(conn))
            self._stuck_until = 0.0
        except Exception as exc:  # noqa: BLE001 (handed to the caller)
            if is_locked(exc):
                self._stuck_until = time.monotonic() + self._lock_wait_s
            outcome = (unit, False, self._error(exc))
        finally:
            if conn.in_transaction():
                conn.rollback()
        _deliver([outcome])

    def _run_group(self, conn: Connection, group: list[_Unit]) -> None:
        outcomes: list[_Outcome] = []
        while group:
            last_try = self._wait_until(conn, min(u.deadline for u in group))
            done: list[_Outcome] = []
            try:
                with conn.begin():
                    for unit in group:
                        try:
                            done.append((unit, True, unit.work(conn)))
                        except Exception as exc:
                            raise _UnitFailed(unit, exc) from exc
            except _UnitFailed as failed:
                if not is_locked(failed.error):
                    # The whole transaction is undone; the others run again without that
                    # unit. (Cheaper than a savepoint around every unit: errors are rare.)
                    outcomes.append((failed.unit, False, self._error(failed.error)))
                    group = [u for u in group if u is not failed.unit]
                    continue
                error: Exception = failed.error
            except Exception as exc:  # noqa: BLE001 (begin or commit failed: to every caller)
                error = exc
            else:
                outcomes += done
                self._stuck_until = 0.0
                break
            described = self._error(error)
            if not is_locked(error):
                outcomes += [(u, False, _copy(described)) for u in group]
                break
            # Locked out. Whoever holds the lock has held it for the whole wait: until a write
            # goes through, units wait MIN_LOCK_WAIT_S only, instead of a full wait each.
            # Units past their deadline fail; the others try again for the time they have
            # left (the first deadline has passed, so each round fails someone).
            now = time.monotonic()
            self._stuck_until = now + self._lock_wait_s
            expired = group if last_try else [u for u in group if u.deadline <= now + 0.05]
            expired = expired or group[:1]
            outcomes += [(u, False, _copy(described)) for u in expired]
            group = [u for u in group if all(u is not e for e in expired)]
        _deliver(outcomes)


_Outcome = tuple[_Unit, bool, Any]


class _UnitFailed(Exception):
    def __init__(self, unit: _Unit, error: Exception) -> None:
        super().__init__(str(error))
        self.unit, self.error = unit, error


def _again(error: StorageError) -> StorageError:
    """A fresh copy of ``error`` to raise (raising one instance twice piles up tracebacks)."""
    return StorageError(str(error), kind=error.kind)


def _copy(error: Exception) -> Exception:
    return _again(error) if isinstance(error, StorageError) else error


def _driver_pragma(conn: Connection, pragma: str) -> None:
    raw = conn.connection.dbapi_connection
    assert raw is not None
    raw.execute(f"PRAGMA {pragma}").close()


def _deliver(outcomes: list[_Outcome]) -> None:
    """Hand results to their callers: one wake-up of each event loop for the whole group (each
    wake-up is a write to the loop's self-pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, some in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, some)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.debug("write_results_undelivered count=%d", len(some))


def _settle(outcomes: list[_Outcome]) -> None:
    for unit, ok, value in outcomes:
        if unit.future.done():  # the caller was cancelled; the write happened anyway
            continue
        if ok:
            unit.future.set_result(value)
        else:
            unit.future.set_exception(value)
