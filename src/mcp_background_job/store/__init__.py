"""The storage gateway: the only code that writes SQL. It returns frozen records from ``jobs``.

- ``facade``: ``Store``, the async methods the rest of the server calls.
- ``connections``: the writer thread and the reader pool the facade runs its work on.
- ``writer``: the writer thread itself (one connection, group commit).
- ``lifecycle``: jobs and the queue (create, load, guarded status changes, owners, servers).
- ``listing``: the history list and the command search.
- ``output``: storing and reading output chunks.
- ``controls``: requests to another host's server (kill, interact) and hosts' heartbeats.
- ``upkeep``: status changes for subscribers, stats, pruning, vacuum, the audit log.
- ``records``: rows to records and back (one mapping per record type), and the typed values
  the store takes and returns.

The modules of plain functions take a ``Connection`` and run inside the transaction the facade
gives them: each can be read and tested alone.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from ..errors import StorageError
from .facade import JOB_ID_LENGTH, Store
from .listing import (
    SEARCH_LOOKUP_MAX,
    SEARCH_MAX_CANDIDATES,
    decode_list_cursor,
    encode_list_cursor,
    search_match,
)
from .records import (
    Drop,
    JobFilter,
    NewChunk,
    OutputBatch,
    PruneCandidate,
    PruneResult,
    QueueState,
    Stats,
    StatusChange,
    StreamCounters,
)
from .upkeep import FAILURES, PRUNE_BATCH_ROWS

#: What a database call raises when the database could not be used (locked, disk full, I/O):
#: worth trying again later, unlike a lost race (``TransitionConflict``) or a bug.
STORAGE_FAILURES: tuple[type[Exception], ...] = (StorageError, DBAPIError)

__all__ = [
    "FAILURES",
    "JOB_ID_LENGTH",
    "PRUNE_BATCH_ROWS",
    "SEARCH_LOOKUP_MAX",
    "SEARCH_MAX_CANDIDATES",
    "STORAGE_FAILURES",
    "Drop",
    "JobFilter",
    "NewChunk",
    "OutputBatch",
    "PruneCandidate",
    "PruneResult",
    "QueueState",
    "Stats",
    "StatusChange",
    "Store",
    "StreamCounters",
    "decode_list_cursor",
    "encode_list_cursor",
    "search_match",
]
