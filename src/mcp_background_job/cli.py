"""Command line: ``mcp-background-job [COMMAND] [--db PATH] ...``; ``serve`` is the default.

Import rule: the top layer (``cli`` in ``tests/test_layers.py``): any module, lazily where it is
slow to import.

Parsing is argparse (stdlib, fast ``--help``); the commands live in ``commands`` and print with
``report`` (rich). Nothing here imports fastmcp except ``serve``, and nothing imports the
database layer before a command needs it: the modules of each command are imported inside it
(``policy check`` takes ``admission.policy_from``, not ``app``: no runner stack for a check).

Exit codes: 0 done; 1 it could not be done (storage, a job in the wrong state); 2 a usage error
(bad arguments, unknown or ambiguous job id); ``run`` exits with the job's own exit status;
``grep`` exits as grep(1) does (0 matched, 1 nothing matched, 2 any error).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .errors import BackgroundJobError, InvalidRequest, JobNotFound

if TYPE_CHECKING:
    from .config import Settings

# pydantic and pydantic-settings (``config``) are imported once arguments are parsed: ``--version``
# and ``--help`` answer without them (~0.3 s).

PROG = "mcp-background-job"
STATUSES = ("queued", "running", "completed", "failed", "killed", "timed_out")


def _age(text: str) -> timedelta:
    from .config import parse_age

    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    from .config import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    # Every parser takes the common options, so they work before or after a command's own
    # arguments; SUPPRESS keeps a subcommand from resetting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        default=argparse.SUPPRESS,  # a str: Settings refuses URLs before a Path mangles them
        help="SQLite database file, or a PostgreSQL URL such as postgresql://user@host/dbname "
        "(env MCP_BACKGROUND_JOB_DB).",
    )
    common.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=argparse.SUPPRESS
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="MCP server that runs shell commands as background jobs, on SQLite; and "
        "the history of those jobs for people. Without a command: serve.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    def command(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help, **kw)

    _add_read_commands(command)
    _add_job_commands(command)
    _add_db_commands(command, common)
    _add_security_commands(sub, common)
    return parser


Command = Callable[..., argparse.ArgumentParser]


def _add_read_commands(command: Command) -> None:
    """``serve`` and the commands that read the history: list, show, logs."""
    serve = command("serve", "Run the MCP server on stdio (the default), or over HTTP.")
    serve.add_argument(
        "--http", metavar="[HOST:]PORT",
        help="Serve MCP's streamable HTTP transport at /mcp and the web page at /, with "
        "bearer tokens (token create). HOST defaults to 127.0.0.1: put a TLS reverse proxy in "
        "front before binding anything else.",
    )  # fmt: skip
    serve.add_argument("--max-concurrent", type=int, help="Running jobs at once.")
    serve.add_argument("--shell", help="Shell used as SHELL -c COMMAND.")

    worker = command(
        "worker",
        "Run jobs queued for this host (execute with host=...) without an MCP client, until "
        "SIGTERM: for a machine that shares a PostgreSQL database.",
    )
    worker.add_argument("--host", help="This machine's name (default: the hostname).")
    worker.add_argument("--max-concurrent", type=int, help="Running jobs at once.")

    ls = command("list", "Recent jobs, newest first.", aliases=["history"])
    ls.add_argument("--status", action="append", choices=STATUSES, help="Repeat for several.")
    ls.add_argument("--label", help="Only jobs with this label.")
    ls.add_argument(
        "--command", dest="command_contains", metavar="TEXT", help="Text in the command."
    )
    ls.add_argument("--since", help="Created since: an age (30m, 2h, 7d) or an ISO 8601 time.")
    ls.add_argument("--host", dest="on_host", metavar="HOST", help="Only jobs of this machine.")
    ls.add_argument("--until", help="Created before: an age or an ISO 8601 time.")
    ls.add_argument("--exit-code", type=int, help="Only jobs that exited with this code.")
    ls.add_argument("-n", "--limit", type=int, default=20, help="Most jobs shown; 0: all.")
    ls.add_argument("--json", action="store_true", help="JSON for scripts.")

    show = command("show", "A job, its transitions and its last lines of output.")
    show.add_argument("id", help="Job id or a unique prefix of it.")
    show.add_argument("-n", "--lines", type=int, default=20, help="Lines of output (default 20).")
    show.add_argument("--json", action="store_true", help="JSON for scripts.")

    logs = command("logs", "A job's output, byte for byte.")
    logs.add_argument("id", help="Job id or a unique prefix of it.")
    logs.add_argument(
        "--stream",
        choices=["stdout", "stderr", "both"],
        default="both",
        help="both (default): stdout to stdout and stderr to stderr, in the order stored; "
        "stdout or stderr: that stream only, to stdout.",
    )
    logs.add_argument("-f", "--follow", action="store_true", help="Go on until the job ends.")
    logs.add_argument("-n", "--tail", type=int, metavar="N", help="Only the last N lines.")

    grep = command(
        "grep",
        "Lines of jobs' output matching an RE2 regex (secrets masked), as grep prints them: "
        "ID:LINE:text (ID/stderr for stderr). Exit status: 0 a line matched, 1 none, 2 error.",
    )
    grep.add_argument("pattern", help="RE2 regular expression (Python syntax, no lookarounds).")
    grep.add_argument("ids", nargs="*", metavar="ID", help="Jobs (ids or prefixes); none: all.")
    grep.add_argument("--label", help="Only jobs with this label.")
    grep.add_argument("--since", help="Created since: an age (30m, 2h, 7d) or an ISO 8601 time.")
    grep.add_argument("-C", "--context", type=int, metavar="N", help="Lines around each match.")
    grep.add_argument("-i", "--ignore-case", action="store_true", help="Match case-insensitively.")
    grep.add_argument("--json", action="store_true", help="One JSON object per match.")


def _add_job_commands(command: Command) -> None:
    """The commands that act on jobs (run, kill) and ``stats``."""
    run = command(
        "run",
        "Run a job here and wait for it: its output streams to this terminal, Ctrl-C stops it, "
        "and the exit status is the job's.",
        usage=f"{PROG} run [OPTIONS] -- COMMAND [ARG...]",
    )
    run.add_argument("--cwd", help="Working directory (default: the current one).")
    run.add_argument("--env", action="append", metavar="NAME=VALUE", help="Repeatable.")
    run.add_argument("--label", action="append", help="Repeatable.")
    run.add_argument("--timeout", type=float, metavar="SECONDS", help="Kill it after this long.")
    run.add_argument("-q", "--quiet", action="store_true", help="No start/end notes on stderr.")
    run.add_argument(
        "argv",
        nargs="+",
        metavar="COMMAND",
        help="One argument: a shell command line (pipes work). Several: a command and its "
        "arguments, quoted for the shell.",
    )

    start = command(
        "start",
        "Start a detached job and return at once, printing its id: it keeps running with no "
        "server, and the next server on the database adopts it (see `list`, `kill`).",
        usage=f"{PROG} start [OPTIONS] -- COMMAND [ARG...]",
    )
    start.add_argument("--cwd", help="Working directory (default: the current one).")
    start.add_argument("--env", action="append", metavar="NAME=VALUE", help="Repeatable.")
    start.add_argument("--label", action="append", help="Repeatable.")
    start.add_argument("--timeout", type=float, metavar="SECONDS", help="Kill it after this long.")
    start.add_argument("argv", nargs="+", metavar="COMMAND", help="As for run.")

    kill = command("kill", "Stop a job (of any server on this host) and its whole process tree.")
    kill.add_argument("id", nargs="?", help="Job id or a unique prefix of it.")
    kill.add_argument("--label", help="Instead of an id: every queued or running job with it.")
    kill.add_argument("-s", "--signal", default="TERM", help="TERM (default), INT, HUP, KILL, ...")
    kill.add_argument("--grace", type=float, help="Seconds before SIGKILL (default 5).")

    stats = command("stats", "Counts by status, stored output, database size, longest jobs.")
    stats.add_argument("--longest", type=int, default=5, help="Longest jobs listed (default 5).")
    stats.add_argument("--json", action="store_true", help="JSON for scripts.")


def _add_db_commands(command: Command, common: argparse.ArgumentParser) -> None:
    """``db``: schema migrations, pruning, vacuum."""
    dbp = command("db", "The database: schema migrations, pruning, vacuum.")
    dbsub = dbp.add_subparsers(dest="db_cmd", metavar="ACTION", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return dbsub.add_parser(name, parents=[common], help=help, description=help)

    up = action("upgrade", "Migrate the schema (a server does this itself at start).")
    up.add_argument("revision", nargs="?", default="head")
    down = action("downgrade", "Migrate the schema back, for an older mcp-background-job.")
    down.add_argument("revision", help="Target revision, e.g. 0001 (see `db history`).")
    action("current", "The database's schema revision.")
    action("history", "The schema revisions this version knows.")
    prune = action("prune", "Delete ended jobs with their output; never queued or running ones.")
    prune.add_argument("--older-than", type=_age, metavar="AGE", help="Ended before: 30d, 12h.")
    prune.add_argument(
        "--max-output", type=_size, metavar="SIZE", help="Oldest first until this much is left."
    )
    prune.add_argument("--keep-failed", action="store_true", help="Keep failed/timed-out jobs.")
    prune.add_argument("--dry-run", action="store_true", help="Only say what would be deleted.")
    action("vacuum", "Give the space of deleted rows back to the disk (rewrites the file).")


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
    check.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE",
        help="A variable the caller would pass in the job's env (repeatable). The job's "
        "environment is env_allow's variables from here plus these; others are empty.",
    )  # fmt: skip
    check.add_argument("--json", action="store_true", help="Print the decision as JSON.")
    check.add_argument("words", nargs=argparse.REMAINDER, help="-- COMMAND LINE")
    audit = sub.add_parser("audit", parents=[common], help="Print the security audit log.")
    audit.add_argument("--limit", type=int, default=50, help="Newest N events (default 50).")
    audit.add_argument(
        "--kind",
        choices=["execute", "kill", "interact", "rate_limited", "policy_loaded", "auth_failed",
                 "auth_refused"],
    )  # fmt: skip
    audit.add_argument("--since", help="ISO time or an age such as 30m, 2h, 7d.")
    audit.add_argument("--job", help="Only events about this job id.")
    audit.add_argument("--json", action="store_true", help="One JSON object per line.")
    from .tokencmd import add_token_commands

    add_token_commands(sub, common)


def _policy_check(args: argparse.Namespace, settings: Settings) -> int:
    from .admission import policy_from  # not app: the runner stack is not needed here

    words = list(args.words)
    if words and words[0] == "--":
        words = words[1:]
    if not words or not " ".join(words).strip():
        print("mcp-background-job policy check: no command given (usage: policy check -- CMD)",
              file=sys.stderr)  # fmt: skip
        return 2
    command = words[0] if len(words) == 1 else " ".join(words)
    cwd = str(Path(args.cwd or Path.cwd()).expanduser().absolute())
    env = {k: os.environ[k] for k in settings.env_allow if k in os.environ}
    for item in args.env:
        name, eq, value = item.partition("=")
        if not eq or not name:
            print(f"mcp-background-job policy check: --env {item!r} is not NAME=VALUE",
                  file=sys.stderr)  # fmt: skip
            return 2
        env[name] = value
    verdict = policy_from(settings).check(command, cwd=cwd, home=str(Path.home()), env=env)
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


def build_settings(args: argparse.Namespace) -> Settings:
    from .config import Settings

    overrides: dict[str, Any] = {}
    for name in ("db", "log_level", "max_concurrent", "shell", "host"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> None:
    code: int | str | None = 0
    try:
        _main(argv)
    except SystemExit as done:
        code = done.code
    except BrokenPipeError:
        pass  # the reader went away (`| head`): every command stops quietly, with status 0
    if _pipe_gone():
        # Keep Python's own flush at exit from printing a BrokenPipeError.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(code)


def _pipe_gone() -> bool:
    """Flush standard output; True if its reader has gone away."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        return True
    return False


def _main(argv: Sequence[str] | None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    if args.cmd == "db" and args.db_cmd == "prune" and not (args.older_than or args.max_output):
        parser.error("db prune needs --older-than AGE and/or --max-output SIZE")
    try:
        settings = build_settings(args)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'setting'}: {e['msg']}" for e in exc.errors()]
        _fail(
            "invalid settings (from flags or MCP_BACKGROUND_JOB_* variables):\n" + "\n".join(lines),
            2,
        )
    except SettingsError as exc:  # e.g. a list setting that is not valid JSON
        _fail(
            f'invalid settings: {exc} (list settings take JSON, such as ["git *", "make *"])',
            2,
        )
    if args.cmd == "policy":
        raise SystemExit(_policy_check(args, settings))
    if args.cmd == "token":
        from . import tokencmd

        try:
            raise SystemExit(tokencmd.run(args, settings))
        except (InvalidRequest, ValueError) as exc:
            _fail(str(exc), 2)
        except BackgroundJobError as exc:
            _fail(str(exc), 1)
    serving = args.cmd in (None, "serve")
    # Logs go to stderr only (stdout is the protocol stream, or the output a person reads).
    # Commands for people log warnings only, unless asked.
    level = (
        settings.log_level if serving or args.cmd == "worker" or "log_level" in args else "WARNING"
    )
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if serving:
        _serve(settings, getattr(args, "http", None))
        return
    # grep(1)'s exit statuses: 1 says "nothing matched", so every error is 2.
    failed = 2 if args.cmd == "grep" else 1
    existing = args.cmd in _ON_EXISTING or getattr(args, "db_cmd", None) in _ON_EXISTING
    if existing and isinstance(settings.db, Path):  # PostgreSQL: checked when opened
        _check_exists(settings.db, failed)
    from . import commands

    try:
        code = commands.dispatch(args, settings)
    except (InvalidRequest, JobNotFound) as exc:
        _fail(str(exc), 2)
    except BackgroundJobError as exc:
        _fail(str(exc), failed)
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


#: Commands (and ``db`` actions) that need a database already there.
_ON_EXISTING = frozenset(
    {"list", "history", "show", "logs", "grep", "stats", "audit", "kill", "downgrade", "current",
     "prune", "vacuum"}
)  # fmt: skip


def _check_exists(path: Path, failed: int = 1) -> None:
    """Refuse a path with no database, or with something that cannot be one, before the
    commands (about a second of imports) are loaded. The commands check again when opening."""
    from . import db
    from .errors import StorageError

    try:
        if not db.inspect_file(path):
            raise db.no_database(path)
    except StorageError as exc:
        _fail(str(exc), failed)


def _serve(settings: Settings, http: str | None = None) -> None:
    import anyio

    from . import db
    from .errors import IsolationError, StorageError
    from .isolation import detect

    try:
        # Before fastmcp is imported (over a second): a file that cannot be the database is
        # refused at once. Opening it (in the lifespan) catches the rest.
        if isinstance(settings.db, Path):
            db.check_for_writing(settings.db)
    except StorageError as exc:
        _fail(str(exc), 1)
    from .server import create_server, serve_stdio  # fastmcp is slow to import: --help is fast

    try:
        isolation = detect(settings)  # before serving: an unusable mode stops the server here
    except IsolationError as exc:
        _fail(f"cannot start: {exc}", 2)
    logging.getLogger(__name__).info(
        "isolation_ready mode=%s network=%s limits=%s",
        isolation.mode,
        isolation.network,
        dict(isolation.rlimits),
    )
    try:
        if http is None:
            anyio.run(serve_stdio, create_server(settings, isolation))
        else:
            _serve_http(settings, isolation, http)
    except* BackgroundJobError as group:
        # E.g. a database written by a newer version: refused before anything was changed.
        _fail("; ".join(str(e) for e in group.exceptions), 1)
    # Everything is stopped, stored and closed. Exit without the interpreter's teardown of all
    # that fastmcp and pydantic imported: it took 0.5-0.7 s here, and clients SIGTERM a server
    # 2 s after closing its stdin.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


def _serve_http(settings: Settings, isolation: Any, address: str) -> None:
    import anyio

    from .httpserve import parse_address, serve_http, setup
    from .server import create_server

    try:
        host, port = parse_address(address)
    except ValueError as exc:
        _fail(f"--http: {exc}", 2)
    apps: dict[str, Any] = {}
    mcp = create_server(settings, isolation, apps)
    auth = setup(mcp, apps)
    anyio.run(serve_http, mcp, auth, host, port)


def _fail(message: str, code: int) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
