"""Command line: ``mcp-background-job [serve] [--db PATH] ...`` (serve is the default)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import __version__
from .config import Settings


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", type=Path, help="SQLite database file (env MCP_BACKGROUND_JOB_DB).")
    common.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser = argparse.ArgumentParser(
        prog="mcp-background-job",
        description="MCP server that runs shell commands as background jobs, on SQLite.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", parents=[common], help="Run the MCP server on stdio (default).")
    serve.add_argument("--max-concurrent", type=int, help="Running jobs at once.")
    serve.add_argument("--shell", help="Shell used as SHELL -c COMMAND.")
    return parser


def build_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("db", "log_level", "max_concurrent", "shell"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = build_settings(args)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'setting'}: {e['msg']}" for e in exc.errors()]
        print(
            "mcp-background-job: invalid settings (from flags or MCP_BACKGROUND_JOB_* variables):\n"
            + "\n".join(lines),
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    # stdout is the protocol stream in stdio mode: logs go to stderr only.
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from .server import create_server  # fastmcp is slow to import; keep --help fast

    create_server(settings).run(transport="stdio", show_banner=False)


if __name__ == "__main__":
    main()
