"""``mcp-background-job worker``: a server with no MCP client, for its host.

It opens the database like ``serve`` (migrating it, registering itself, reconciling), then runs
the jobs queued for its host (``execute(host=...)`` from any machine sharing the database) until
SIGTERM or SIGINT, and stops like a server whose client went away. Meant for a systemd unit
(README, "Many machines"). Logs go to stderr; nothing is printed to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from .config import Settings
from .dburl import describe

log = logging.getLogger(__name__)


async def work(args: argparse.Namespace, settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (``args``: the command line's, already in ``settings``)."""
    from .app import App  # the job stack: only the commands that run jobs

    app = await App.open(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "worker_started host=%s server=%s db=%s",
        settings.host,
        app.runner.server_id,
        describe(settings.db),
    )
    try:
        await stop.wait()
    finally:
        log.info("worker_stopping host=%s", settings.host)
        await app.close()
    return 0
