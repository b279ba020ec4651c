"""Processes: spawning jobs, noticing their exit, stdin and keys, timeouts, killing trees, the
queue, reconciling jobs of dead servers, and an orderly shutdown.

The parts, each a module of this package:

- ``lifecycle``: ``Runner``, the facade ``App`` talks to: start and shutdown, kill and timeouts
  (the cause recorded before any signal), and every other call passed on to one of the parts;
- ``starting``: submitting, the queue and the scheduler, starting a job (policy check of a job
  this server did not accept, the intent, the running row); ``spawn``: the process itself, one
  ``ExitStack`` owning every descriptor of a start;
- ``ending``: exits, the last output and the final status (retried until written), waiting for
  ends;
- ``jobinput``: stdin and keys, and whether a job waits for input;
- ``upkeep``: reconciling what servers that are gone left, stray processes, retention;
- ``trees``: stopping a job's tree and its cgroups; ``table``: the state the parts share.

Who touches processes: this package, through ``proctree`` (finds trees in ``/proc``, sends
signals), ``cgroup`` (a job's group: its members, its kill) and ``ptyjob``. Signals go to jobs
from ``trees`` (kill, timeouts, shutdown, reconciliation, strays), from ``spawn`` and
``starting`` (a job whose start cannot be tracked or recorded is SIGKILLed at once) and from
``jobinput`` (Ctrl-C and friends as signals to a pipe job's group); and from the watchdog
process (``_watchdog``) when this server is gone.

Each job runs as ``SHELL -c COMMAND`` in a new session, stdin a pipe from this process, stdout and
stderr spool files (see ``capture``). A PTY job gets a pseudo-terminal instead (see ``ptyjob``):
the server reads its master into the stdout spool file. Its exit is seen through a pidfd,
independently of any pipe a background grandchild may hold open. Exit handling (store the last
output, then the final status) runs in tasks that shutdown awaits and never cancels, so a job
never stays ``running`` in the database because the task that would have finished it was
cancelled.

The queue lives in the database: a server starts its own queued jobs whose dependencies allow
it, highest priority first, then oldest (``Store.queue_state``); a queued job changes owner only
by a compare-and-set from a server that is gone (``Store.claim``). A job this server did not
accept itself (claimed, or written into the database by someone else) is checked against this
server's policy before it starts (``check_claimed``).

A job runs at most once, and its true end is recorded: the order of writes
--------------------------------------------------------------------------
A server may die (SIGKILL, power) between any two steps, and the database may refuse a write
(locked for longer than the busy timeout, disk full). Each step below leaves a state that the
next server on the database (``Upkeep.reconcile``, ``Upkeep._take_over``) settles correctly:

1. The job row is created ``queued``, with its audit row in the same transaction (``execute``).
   Died here: the job never ran; the next server claims it and runs it.
2. The intent to start is committed (``start_attempted_at``: with the row for a job started at
   once, else by a compare-and-set), before anything is spawned. From here on no server starts
   the job again: a queued job with an intent is never in the queue (``Store.queue_state``).
   Died here: a server that takes the job over looks for a live process carrying the job's
   marker (``MCP_BACKGROUND_JOB_ID``) on this boot. One alive is stopped, and the job failed as
   ``lost: server exited``; none alive and no end file (step 5): ``lost: no exit status
   recorded (it may have run)``.
3. The spool files are created (never truncated: one run, one output), the process spawned.
4. ``running`` is recorded with pid, start time and boot id. If that write fails, the process
   tree is killed at once and the job recorded failed (step 5 path); if nothing can be written,
   the intent stays and the next server fails the job: never a live, untracked process.
5. When the main process exits, its exit status goes to an end file in the spool directory
   (``capture``), before anything is written to the database. Then the rest of its output is
   stored, then the end is recorded; a failure is retried with backoff until it succeeds, and
   the job stays known (``kill``/``status`` say its output is being stored, or why its end
   cannot be recorded yet). Then the end file is removed. Died (or stopped) before: whoever
   takes the job over stores the output left in the spool files and records the TRUE end from
   the end file, for jobs of servers that died or stopped alike.

Why a job ended: a stop request (kill, timeout, shutdown) is recorded before any signal, and only
while the job's main process is alive, so a job that exited by itself as it came keeps its own
outcome (``Runner._request_end``, ``jobs.decide_outcome``).
"""

from .jobinput import STDIN_BUFFER_MAX
from .lifecycle import Runner
from .spawn import PTY_TERM
from .starting import ClaimCheck

__all__ = ["PTY_TERM", "STDIN_BUFFER_MAX", "ClaimCheck", "Runner"]
