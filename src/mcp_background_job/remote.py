"""``kill`` and ``interact`` on a job another host runs: through the database.

Its processes cannot be reached from here, so the caller writes a request row for the job's host
(``Store.ask_control``) and waits for the answer; the server that owns the job (on that host)
takes the request by a compare-and-set, applies it as it would a local call (``kill_here``: the
runner's kill; ``interact_here``: the interaction), and writes the answer into the row. On
PostgreSQL both sides are woken by NOTIFY (``Store.notice``); on SQLite (hosts on one machine,
in tests) the owner looks every ``_POLL_S`` while it has running jobs (only then can a request
for it exist), and the caller looks every ``_POLL_S`` while it waits.

Bounds: a request no server takes within ``control_take_s`` is withdrawn (a guarded delete: it
is applied or withdrawn, never both) and the call fails saying so; one taken but not answered
within the call's own time (the kill's grace, the interact's wait) plus ``_ANSWER_MARGIN_S``
fails saying it may still be applied. Import rule: an app part (below ``app``); it names the
runner and the interaction only in annotations (``App`` passes the callables).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .admission import Client
from .errors import (
    BackgroundJobError,
    InvalidRequest,
    JobNotFound,
    JobStateError,
    NoAnswer,
    PolicyRefused,
)
from .jobs import parse_signal
from .models import InteractResult
from .store import STORAGE_FAILURES
from .store.controls import ANSWER_CHANNEL, CONTROL_CHANNEL, Control

if TYPE_CHECKING:
    import signal

    from .config import Settings
    from .jobs import Job
    from .runner import Runner
    from .store import Store

log = logging.getLogger(__name__)

#: How often requests and answers are looked for without NOTIFY (SQLite).
_POLL_S = 0.2
#: How often they are looked for with NOTIFY anyway (a notice lost with its connection).
_LISTEN_POLL_S = 1.0
#: Past the call's own time (grace, wait): storing the output, the answer's round trip.
_ANSWER_MARGIN_S = 15.0

KillHere = Callable[[str, "signal.Signals", float], Awaitable["Job"]]
InteractHere = Callable[[str, dict[str, Any], Client | None], Awaitable[InteractResult]]

#: Errors an owner's answer can carry, re-raised here as they were raised there.
_ERRORS: dict[str, type[BackgroundJobError]] = {
    e.__name__: e for e in (InvalidRequest, JobStateError)
}


class Remote:
    """Both ends: ``kill``/``interact`` ask another host; ``start`` serves this server's jobs."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        runner: Runner,
        *,
        kill_here: KillHere,
        interact_here: InteractHere,
    ) -> None:
        self.settings, self.store, self.runner = settings, store, runner
        self._kill_here, self._interact_here = kill_here, interact_here
        self._task: asyncio.Task[None] | None = None
        self._applying: set[asyncio.Task[None]] = set()
        self._listening = False

    # --- the owner's end ------------------------------------------------------------------

    async def start(self) -> None:
        self._listening = await self.store.listen()
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="controls")

    async def close(self) -> None:
        """Stop taking requests; a request being applied is cancelled (its caller times out
        saying it may have been applied)."""
        tasks = [t for t in (self._task, *self._applying) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self) -> None:
        host, me = self.settings.host, self.runner.server_id
        while True:
            wake = self.store.notice(CONTROL_CHANNEL, host) if self._listening else None
            if wake is not None:
                wake.clear()
            # A request can only be for a running job this server owns: none, nothing to read.
            if self.runner.has_jobs():
                try:
                    for control in await self.store.pending_controls(host, me):
                        if await self.store.take_control(control.id, me):
                            self._apply_soon(control)
                except STORAGE_FAILURES:  # task boundary: look again at the next wake
                    log.exception("controls_read_failed")
            if wake is None:
                await asyncio.sleep(_POLL_S)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), _LISTEN_POLL_S)

    def _apply_soon(self, control: Control) -> None:
        # Concurrently: an interact waits for its program; a kill must not wait behind it.
        task = asyncio.get_running_loop().create_task(self._apply(control), name="control")
        self._applying.add(task)
        task.add_done_callback(self._applying.discard)

    async def _apply(self, control: Control) -> None:
        answer: str | None = None
        error: str | None = None
        try:
            request = json.loads(control.request)
            if control.kind == "kill":
                sig, grace = parse_signal(request["signal"]), float(request["grace_s"])
                job = await self._kill_here(control.job_id, sig, grace)
                answer = json.dumps({"status": job.status.value})
            else:
                who = request.pop("client", None)
                client = Client(**who) if who else None
                result = await self._interact_here(control.job_id, request, client)
                answer = result.model_dump_json()
        except PolicyRefused as exc:
            error = json.dumps({"type": "PolicyRefused", "message": str(exc), "rule": exc.rule,
                                "matched": exc.matched})  # fmt: skip
        except BackgroundJobError as exc:
            error = json.dumps({"type": type(exc).__name__, "message": str(exc)})
        except Exception as exc:  # task boundary: the caller gets an answer, not a timeout
            log.exception("control_failed id=%d job=%s", control.id, control.job_id)
            error = json.dumps({"type": "JobStateError", "message": f"the {control.kind} failed "
                                f"there: {type(exc).__name__}: {exc}"})  # fmt: skip
        log.info("control_applied id=%d job=%s kind=%s error=%s", control.id, control.job_id,
                 control.kind, error is not None)  # fmt: skip
        try:
            await self.store.answer_control(control.id, answer, error)
        except STORAGE_FAILURES:  # the caller times out saying so
            log.exception("control_answer_failed id=%d", control.id)

    # --- the caller's end -----------------------------------------------------------------

    async def kill(self, job: Job, sig: signal.Signals, grace_s: float) -> Job:
        """Ask the job's host to kill it; the job once that server has answered."""
        request = {"signal": sig.name, "grace_s": grace_s}
        await self._ask(job, "kill", request, grace_s + _ANSWER_MARGIN_S)
        return await self.store.get_job(job.id)

    async def interact(
        self, job: Job, request: dict[str, Any], client: Client | None
    ) -> InteractResult:
        """Ask the job's host to send input and wait as ``interact`` does; its result."""
        wait_s = float(request.get("wait_s", 0.0))
        request = {**request, "client": asdict(client) if client is not None else None}
        control = await self._ask(job, "interact", request, wait_s + _ANSWER_MARGIN_S)
        return InteractResult.model_validate_json(control.answer or "{}")

    async def _ask(self, job: Job, kind: str, request: dict[str, Any], answer_s: float) -> Control:
        host = job.host or ""
        control_id = await self.store.ask_control(job.id, host, kind, json.dumps(request))
        key = str(control_id)
        loop = asyncio.get_running_loop()
        take_by = loop.time() + self.settings.control_take_s
        answer_by: float | None = None
        try:
            while True:
                wake = self.store.notice(ANSWER_CHANNEL, key)
                if wake is not None:
                    wake.clear()
                control = await self.store.get_control(control_id)
                if control is None:
                    raise JobNotFound(job.id)  # deleted with its job (retention)
                if control.answered_at is not None:
                    _raise_error(control)
                    return control
                now = loop.time()
                if control.taken_by is None and now >= take_by:
                    if await self.store.withdraw_control(control_id):
                        raise NoAnswer(
                            f"No server on host {host!r} took the {kind} of job {job.id} within "
                            f"{self.settings.control_take_s:g} s (control_take_s), so nothing "
                            f"was done. Is a server running there (`mcp-background-job worker "
                            f"--host {host}`)? A host silent for host_dead_after_s is declared "
                            "dead and its running jobs failed."
                        )
                    continue  # taken just now: wait for its answer
                if control.taken_by is not None and answer_by is None:
                    answer_by = now + answer_s
                if answer_by is not None and now >= answer_by:
                    raise NoAnswer(
                        f"Host {host!r} (server {control.taken_by}) took the {kind} of job "
                        f"{job.id} but did not answer within {answer_s:g} s; it may still be "
                        "applied. Call status to see the job as it is."
                    )
                if wake is None:
                    await asyncio.sleep(_POLL_S)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), _LISTEN_POLL_S)
        finally:
            self.store.drop_notice(ANSWER_CHANNEL, key)
            with contextlib.suppress(*STORAGE_FAILURES):  # a leftover row is only a row
                await asyncio.shield(self.store.forget_control(control_id))


def _raise_error(control: Control) -> None:
    """Raise the error the owner answered with, as it was raised there."""
    if control.error is None:
        return
    error = json.loads(control.error)
    message = f"{error['message']} (answered by host {control.host!r})"
    if error["type"] == "PolicyRefused":
        raise PolicyRefused(message, rule=error["rule"], matched=error["matched"])
    raise _ERRORS.get(error["type"], JobStateError)(message)
