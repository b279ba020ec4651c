"""``token create|list|revoke``: bearer tokens for ``serve --http`` (stored as hashes only).

Import rule: the cli layer; opens the database through the ``Store`` (migrating it, as a server
would: the tokens table comes with a migration).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING

from .tokens import ApiToken, check_name, check_scope, digest, expiry, new_secret

if TYPE_CHECKING:
    from .config import Settings


def add_token_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                       common: argparse.ArgumentParser) -> None:  # fmt: skip
    token = sub.add_parser(
        "token", parents=[common], help="Bearer tokens for serve --http (create, list, revoke)."
    )
    tsub = token.add_subparsers(dest="token_cmd", required=True)
    create = tsub.add_parser(
        "create", parents=[common],
        help="Make a token and print it once (only its SHA-256 is stored).",
    )  # fmt: skip
    create.add_argument("name", help="A name for the token (shown in the audit log).")
    create.add_argument(
        "--scope", choices=["read", "run"], required=True,
        help="read: read-only tools and the web page; run: every tool.",
    )  # fmt: skip
    create.add_argument("--expires", metavar="AGE", help="Lifetime, e.g. 30d, 12h (default: none).")
    ls = tsub.add_parser("list", parents=[common], help="Tokens: name, scope, times, state.")
    ls.add_argument("--json", action="store_true", help="One JSON object per line.")
    revoke = tsub.add_parser("revoke", parents=[common], help="Revoke a token now, by name.")
    revoke.add_argument("name")


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: ``add_token_commands`` is part of every command line's parser (``--help``
    # and ``--version`` import neither pydantic nor the database layer).
    from .config import parse_age
    from .db import utcnow
    from .store import Store

    store = Store(settings.db)
    await store.open()
    try:
        action = args.token_cmd
        if action == "create":
            now = utcnow()
            secret = new_secret()
            lifetime = parse_age(args.expires) if args.expires else None
            await store.create_token(
                ApiToken(
                    name=check_name(args.name),
                    scope=check_scope(args.scope),
                    sha256=digest(secret),
                    created_at=now,
                    expires_at=expiry(now, lifetime),
                )
            )
            print(secret)
            print(
                f"mcp-background-job: token {args.name!r} ({args.scope}) created; it is shown "
                "only now. Clients send it as 'Authorization: Bearer <token>'.",
                file=sys.stderr,
            )
            return 0
        if action == "list":
            now = utcnow()
            for t in await store.list_tokens():
                row = {
                    "name": t.name,
                    "scope": t.scope,
                    "state": t.state(now),
                    "created_at": t.created_at.isoformat(),
                    "expires_at": t.expires_at.isoformat() if t.expires_at else None,
                    "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
                }
                if args.json:
                    print(json.dumps(row))
                else:
                    ends = f"\texpires {t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else ""
                    made = f"created {t.created_at:%Y-%m-%d %H:%M}"
                    print(f"{t.name}\t{t.scope}\t{row['state']}\t{made}{ends}")
            return 0
        if not await store.revoke_token(args.name):
            print(f"mcp-background-job: no token named {args.name!r}: see token list.",
                  file=sys.stderr)  # fmt: skip
            return 2
        print(f"mcp-background-job: token {args.name!r} revoked.", file=sys.stderr)
        return 0
    finally:
        await store.close()
