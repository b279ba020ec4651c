"""What a command does to the shell's picture of the file system (links, copies, downloads,
written scripts), kept between commands in ``ShellState``."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .policyfs import _LN, Effects, _parse
from .policyrules import _DECODERS, _DOWNLOADERS, _download_targets, _Env, _written
from .shellparse import (
    Scope,
    SimpleCommand,
    Word,
    ansi_c,
    printf_output,
)


def _literal_output(cmd: SimpleCommand) -> list[str] | None:
    """What ``echo``/``printf`` of known words, or ``cat`` of a heredoc, writes; else None."""
    if any(a.dynamic for a in cmd.args):
        return None
    texts = [a.text for a in cmd.args]
    if cmd.name == "echo":
        newline = "\n"
        while texts and re.fullmatch(r"-[neE]+", texts[0]):
            newline = "" if "n" in texts[0] else newline
            texts = texts[1:]
        plain = " ".join(texts) + newline
        return list(dict.fromkeys([plain, ansi_c(plain)]))
    if cmd.name == "printf" and texts:
        texts = texts[1:] if texts[0] == "--" else texts
        return [printf_output(texts[0], texts[1:])] if texts else None
    if cmd.name == "cat" and not texts and cmd.stdin_text is not None:
        return list(cmd.stdin_text)
    return None


def _apply_effects(cmd: SimpleCommand, env: _Env) -> None:
    """Record what ``cmd`` does to the files later commands may run or reach.

    Long (~100 lines) on purpose: one flat dispatch over the commands that change files
    (cd, cp, mv, ln, chmod, redirections...); each branch is a few lines and splitting them
    into functions would only move the table."""
    eff = env.effects
    paths = env.paths

    def resolve_all(w: Word) -> list[str]:
        return [p for v in w.values if (p := paths.resolve(v, cmd.cwd, symbolic=True)) is not None]

    upstream = list(cmd.upstream)
    fetched = next((u for u in [cmd.name, *upstream] if u in _DOWNLOADERS or (u in _DECODERS
                    and u not in ("sed", "awk", "dd", "tr", "jq", "python", "python3", "perl",
                                  "ruby", "node", "php", "od", "iconv"))), None)  # fmt: skip
    if cmd.name in _DOWNLOADERS or (fetched is not None and (cmd.name in ("tee", "cat", "dd")
                                                             or cmd.writes)):  # fmt: skip
        who = fetched or cmd.name
        if cmd.name in _DOWNLOADERS:
            outs = [*cmd.writes, *_download_targets(cmd)]
        else:
            outs = _written(cmd) if cmd.name in ("tee", "dd") else list(cmd.writes)
        for w in outs:
            for p in resolve_all(w):
                eff.downloaded[p] = who
                eff.downloaded_names[posixpath.basename(p)] = who
    elif cmd.name in _DECODERS and cmd.name in ("base64", "base32", "basenc", "xxd", "openssl",
                                                "uudecode", "gpg"):  # fmt: skip
        outs = list(cmd.writes)
        texts = [a.text for a in cmd.args]
        for k, t in enumerate(texts[:-1]):
            if t in ("-o", "--output", "-out"):
                outs.append(cmd.args[k + 1])
        for w in outs:
            for p in resolve_all(w):
                eff.downloaded[p] = cmd.name
                eff.downloaded_names[posixpath.basename(p)] = cmd.name
    elif cmd.writes:
        content = _literal_output(cmd)
        for w in cmd.writes:
            for p in resolve_all(w):
                if content is not None:
                    eff.scripts[p] = eff.scripts.get(p, "") + content[-1] if len(content) == 1 \
                        else "\n".join(content)  # fmt: skip
                else:
                    eff.scripts.pop(p, None)
    if cmd.name in ("cp", "mv", "install", "ln", "rsync") or (cmd.name == "cat" and cmd.writes):
        sources = [a for a in cmd.args if not a.text.startswith("-")]
        dests = _written(cmd) if cmd.name != "cat" else list(cmd.writes)
        srcs = sources[:-1] if cmd.name != "cat" else sources
        for s in srcs:
            for sp in resolve_all(s):
                for table in (eff.downloaded, eff.scripts):
                    if sp in table:
                        for d in dests:
                            for dp in resolve_all(d):
                                table[dp] = table[sp]
                                table[dp + "/" + posixpath.basename(sp)] = table[sp]
                                if table is eff.downloaded:
                                    name = posixpath.basename(dp)
                                    eff.downloaded_names[name] = eff.downloaded[sp]
                if sp in eff.fifos:
                    for d in dests:
                        eff.fifos.update(resolve_all(d))
    if cmd.name in ("mkfifo", "mknod"):
        ops = [a for a in cmd.args if not a.text.startswith("-")]
        if cmd.name == "mknod":
            ops = ops[:1] if len(ops) >= 2 and ops[1].text == "p" else []
        for a in ops:
            eff.fifos.update(resolve_all(a))
    if cmd.name == "ln":
        opts, operands, _ = _parse(cmd.args, _LN)
        if "symbolic" in opts and operands:
            target_dir = next((cmd.args[k + 1] for k, a in enumerate(cmd.args[:-1])
                               if a.text in ("-t", "--target-directory")), None)  # fmt: skip
            if target_dir is not None:
                pairs = [(t, Word(posixpath.join(target_dir.text, posixpath.basename(
                    t.text.rstrip("/")) or "x"))) for t in operands]  # fmt: skip
            elif len(operands) == 1:
                pairs = [(operands[0], Word(posixpath.basename(operands[0].text.rstrip("/"))
                                            or "root"))]  # fmt: skip
            else:
                last = operands[-1]
                pairs = [(t, last) for t in operands[:-1]]
                pairs += [(t, Word(posixpath.join(last.text, posixpath.basename(
                    t.text.rstrip("/")) or "root"))) for t in operands[:-1]]  # fmt: skip
            for target, link in pairs:
                for lp in resolve_all(link):
                    for tv in target.values:
                        base = posixpath.dirname(lp)
                        tp = paths.resolve(tv, base)
                        if tp is not None:
                            eff.links[lp] = tp
    if cmd.name in ("mount", "bindfs") and any(
        a.text in ("--bind", "--rbind", "-B", "-R") or "bind" in a.text for a in cmd.args
    ):
        ops = [a for a in cmd.args if not a.text.startswith("-") and "bind" not in a.text]
        if len(ops) >= 2:
            for lp in resolve_all(ops[-1]):
                for tp in resolve_all(ops[0]):
                    eff.links[lp] = tp


@dataclass(slots=True)
class ShellState:
    """What a shell knows between command lines: its variables and cwd (``Scope``) and what
    earlier lines did to the file system (``Effects``)."""

    scope: Scope
    effects: Effects = field(default_factory=Effects)
    homes: tuple[str, ...] = ()

    @classmethod
    def initial(
        cls,
        *,
        cwd: str | None = None,
        home: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ShellState:
        home = home or (env or {}).get("HOME") or "/root"
        scope = Scope.initial(cwd=cwd, home=home, env=dict(env) if env is not None else None)
        homes = tuple(h for h in (home, (env or {}).get("HOME"), "/root") if h)
        return cls(scope, Effects(), homes)

    def copy(self) -> ShellState:
        return ShellState(self.scope.copy(), self.effects.copy(), self.homes)


#: Scripts written in the line and then run are analysed too, this deep.
