"""Command line: ``mcp-background-job [serve] [--db PATH] ...`` (serve is the default)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

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
    _add_security_commands(sub, common)
    return parser


# --- security: `policy check` and `audit` (self-contained, see cli_security below) ---------------


def _add_security_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    policy = sub.add_parser("policy", parents=[common], help="Inspect the command policy.")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    check = psub.add_parser(
        "check",
        parents=[common],
        help="Say whether a command would be allowed, and why, without running it. "
        "Exit status: 0 allowed, 1 refused, 2 usage error.",
        description="Pass the command line after --, preferably as one argument: "
        "mcp-background-job policy check -- 'make test && rm -rf build/'",
    )
    check.add_argument("--cwd", help="Working directory the job would run in (default: here).")
    check.add_argument("--json", action="store_true", help="Print the decision as JSON.")
    check.add_argument("words", nargs=argparse.REMAINDER, help="-- COMMAND LINE")
    audit = sub.add_parser("audit", parents=[common], help="Print the security audit log.")
    audit.add_argument("--limit", type=int, default=50, help="Newest N events (default 50).")
    audit.add_argument(
        "--kind", choices=["execute", "kill", "interact", "rate_limited", "policy_loaded"]
    )
    audit.add_argument("--since", help="ISO time or an age such as 30m, 2h, 7d.")
    audit.add_argument("--job", help="Only events about this job id.")
    audit.add_argument("--json", action="store_true", help="One JSON object per line.")


def _policy_check(args: argparse.Namespace, settings: Settings) -> int:
    from .app import policy_from

    words = list(args.words)
    if words and words[0] == "--":
        words = words[1:]
    if not words or not " ".join(words).strip():
        print("mcp-background-job policy check: no command given (usage: policy check -- CMD)",
              file=sys.stderr)  # fmt: skip
        return 2
    command = words[0] if len(words) == 1 else " ".join(words)
    cwd = str(Path(args.cwd or Path.cwd()).expanduser().absolute())
    verdict = policy_from(settings).check(command, cwd=cwd, home=str(Path.home()))
    roots = settings.allowed_cwd_roots
    if verdict.allowed and roots and not any(Path(cwd).is_relative_to(r) for r in roots):
        verdict = replace(
            verdict, decision="refused", rule="cwd-roots", matched=cwd,
            message=f"Refused: cwd {cwd!r} is outside the allowed roots.",
        )  # fmt: skip
    if args.json:
        print(json.dumps({"decision": verdict.decision, "rule": verdict.rule,
                          "matched": verdict.matched, "message": verdict.message,
                          "unverified": verdict.audit_note}))  # fmt: skip
    else:
        print(verdict.decision)
        print(f"rule: {verdict.rule}")
        if verdict.matched:
            print(f"matched: {verdict.matched}")
        print(verdict.message)
        if verdict.audit_note:
            print(f"note: would be recorded as not verified: {verdict.audit_note}")
    return 0 if verdict.allowed else 1


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from .app import parse_since
    from .errors import BackgroundJobError
    from .store import Store

    async def read() -> list[Any]:
        store = Store(settings.db)
        try:
            await store.open()
            return await store.list_audit(
                kind=args.kind,
                since=parse_since(args.since) if args.since else None,
                job_id=args.job,
                limit=args.limit,
            )
        finally:
            await store.close()

    try:
        events = asyncio.run(read())
    except BackgroundJobError as exc:
        print(f"mcp-background-job audit: {exc}", file=sys.stderr)
        return 2
    for e in reversed(events):
        if args.json:
            print(json.dumps({**asdict(e), "at": e.at.isoformat() if e.at else None},
                             default=str))  # fmt: skip
            continue
        who = f" client={e.client_name}" if e.client_name else ""
        what = " ".join(
            x for x in (e.decision, f"rule={e.rule}" if e.rule else None,
                        f"job={e.job_id}" if e.job_id else None) if x
        )  # fmt: skip
        cmd = f" {e.command!r}" if e.command else ""
        extra = "" if e.command else f" {json.dumps(e.detail, sort_keys=True)}"
        print(f"{e.at:%Y-%m-%d %H:%M:%S} #{e.id} {e.kind} {what}{who}{cmd}{extra}")
    return 0


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
    except SettingsError as exc:  # e.g. a list setting that is not valid JSON
        print(f"mcp-background-job: invalid settings: {exc} (list settings take JSON, such as "
              '["git *", "make *"])', file=sys.stderr)  # fmt: skip
        raise SystemExit(2) from None
    if args.command == "policy":
        raise SystemExit(_policy_check(args, settings))
    if args.command == "audit":
        raise SystemExit(_audit(args, settings))
    # stdout is the protocol stream in stdio mode: logs go to stderr only.
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from .errors import IsolationError
    from .isolation import detect
    from .server import create_server  # fastmcp is slow to import; keep --help fast

    try:
        isolation = detect(settings)  # before serving: an unusable mode stops the server here
    except IsolationError as exc:
        print(f"mcp-background-job: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.getLogger(__name__).info(
        "isolation_ready mode=%s network=%s limits=%s",
        isolation.mode,
        isolation.network,
        dict(isolation.rlimits),
    )
    create_server(settings, isolation).run(transport="stdio", show_banner=False)


if __name__ == "__main__":
    main()
