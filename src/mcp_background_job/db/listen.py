"""LISTEN on PostgreSQL: one dedicated psycopg connection per store, opened on first use, that
wakes whoever waits for a (channel, payload) notice (``Notices.event``).

A notice only says "look now": waiters always read the database after they register their
event (so a notice sent before that is not missed) and still look now and then without one (a
dropped connection only makes them slower, never stuck).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from psycopg import sql

from .target import engine_url

log = logging.getLogger(__name__)


def conninfo(url: str) -> str:
    """The libpq URL of a PostgreSQL ``--db`` value (any ``+driver`` dropped)."""
    return engine_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Notices:
    """Notices on ``channels`` of the database at ``url``, as asyncio events."""

    def __init__(self, url: str, channels: tuple[str, ...]) -> None:
        self.url, self.channels = url, channels
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self._conn: psycopg.AsyncConnection[object] | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect and LISTEN (once); a failure is logged, and waiters poll instead."""
        async with self._lock:
            if self._task is not None:
                return
            try:
                conn = await psycopg.AsyncConnection.connect(
                    conninfo(self.url), autocommit=True, application_name="mcp-background-job"
                )
                for channel in self.channels:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            except psycopg.Error as exc:
                log.warning("listen_failed reason=%s (polling instead)", exc)
                return
            self._conn = conn
            self._task = asyncio.get_running_loop().create_task(self._read(conn), name="listen")

    async def _read(self, conn: psycopg.AsyncConnection[object]) -> None:
        try:
            async for notice in conn.notifies():
                event = self._events.get((notice.channel, notice.payload))
                if event is not None:
                    event.set()
        except psycopg.Error as exc:  # the connection dropped: waiters poll from now on
            log.warning("listen_lost reason=%s (polling instead)", exc)

    @property
    def listening(self) -> bool:
        return self._task is not None and not self._task.done()

    def event(self, channel: str, payload: str) -> asyncio.Event:
        """The event set by the next notice on ``channel`` with ``payload`` (clear it, then look
        at the database, then wait on it)."""
        return self._events.setdefault((channel, payload), asyncio.Event())

    def drop(self, channel: str, payload: str) -> None:
        self._events.pop((channel, payload), None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
        self._task = self._conn = None
