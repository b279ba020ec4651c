"""Wrappers and payloads: the command inside ``sudo``, ``env``, ``nice``, ``timeout``,
``xargs``, ``find -exec``, ``su``, ``ssh`` ... (the tables ``_WRAPPERS``/``_SUB_WRAPPERS``
and their handlers), and the code given to shells and interpreters (``bash -c``, ``eval``,
``python -c``, scripts fed on stdin). Each found command goes back to the walker."""

from __future__ import annotations

import contextlib
import itertools
import re
import shlex
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .shelltext import _loop_values, _product, _spaced, interpreter, is_shell, normalize_name
from .shelltree import _parser, _set_timeout, _yield_gil
from .shellwords import (
    _FD_PATHS,
    _STDIN_PATHS,
    INLINE_CODE_FLAGS,
    MAX_PARSE_MICROS,
    Analysis,
    Problem,
    SimpleCommand,
    Word,
    _Ctx,
    _Limit,
)

if TYPE_CHECKING:  # the walker calls into this module; at run time only its instances are
    # seen here (``type(w)`` makes a new one), so there is no import cycle
    from .shellwalk import _Walker


# --- wrappers and payloads ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Wrap:
    """How a wrapper finds the command it runs."""

    values: frozenset[str] = frozenset()  # options taking a separate value (short and long)
    positionals: int = 0  # operands before the command (timeout DURATION, chroot DIR)
    shell_flags: str = ""  # short flags meaning "through a shell" (sudo -s/-i)
    shell_long: tuple[str, ...] = ()
    code_flags: tuple[str, ...] = ()  # options whose value is a shell command line (su -c)
    bare_shell: bool = False  # with no command: an interactive shell on stdin (su, chroot)
    query_flags: str = ""  # flags that make it not run the command (command -v)


def _w(values: str = "", **kw: object) -> _Wrap:
    return _Wrap(values=frozenset(values.split()), **kw)  # type: ignore[arg-type]


_WRAPPERS: dict[str, _Wrap] = {
    "sudo": _w("-u -g -C -D -h -p -r -t -U -T -R --user --group --close-from --chdir --host "
               "--prompt --role --type --other-user --command-timeout --chroot",
               shell_flags="si", shell_long=("--shell", "--login")),
    "doas": _w("-u -C", shell_flags="s"),
    "su": _w("-s --shell -g --group -G --supp-group -w --whitelist-environment",
             code_flags=("-c", "--command", "--session-command"), bare_shell=True),
    "runuser": _w("-u --user -g --group -G --supp-group -s --shell -w --whitelist-environment",
                  code_flags=("-c", "--command", "--session-command")),
    "script": _w("-t -T -I -O -B -E -o -m --timing --log-timing --log-in --log-out --log-io "
                 "--echo --output-limit --logging-format",
                 code_flags=("-c", "--command"), bare_shell=True),
    "flock": _w("-w --timeout -E --conflict-exit-code", positionals=1,
                code_flags=("-c", "--command")),
    "sg": _w("", positionals=1, code_flags=("-c",)),
    "newgrp": _w("", bare_shell=True),
    "timeout": _w("-s --signal -k --kill-after", positionals=1),
    "nice": _w("-n --adjustment"),
    "ionice": _w("-c --class -n --classdata -t"),
    "nohup": _w(), "setsid": _w(), "caffeinate": _w("-t -w"), "unbuffer": _w(),
    "stdbuf": _w("-i -o -e --input --output --error"),
    "time": _w("-f -o --format --output"),
    "command": _w(query_flags="vV"), "builtin": _w(), "exec": _w("-a"),
    "coproc": _w(), "catchsegv": _w(), "torsocks": _w(), "tsocks": _w(),
    "proxychains": _w("-f"), "proxychains4": _w("-f"), "eatmydata": _w(), "nocache": _w(),
    "fakeroot": _w("-l -s -i --lib --faked"), "fakechroot": _w(), "dumb-init": _w(),
    "tini": _w("-s -e -p"), "dbus-run-session": _w("--config-file --dbus-daemon"),
    "dbus-launch": _w(), "xvfb-run": _w("-n -s -e -f -p --server-num --server-args "
                                        "--error-file --auth-file --xauth-protocol"),
    "rlwrap": _w("-a -b -C -D -e -f -F -g -h -H -l -m -M -N -O -p -P -q -r -s -S -t -w -z"),
    "firejail": _w(), "chroot": _w("--userspec --groups", positionals=1, bare_shell=True),
    "unshare": _w("--map-user --map-group --map-users --map-groups --setuid --setgid -S -G "
                  "--root -R --wd -w --propagation --setgroups --kill-child", bare_shell=True),
    "nsenter": _w("-t --target -S --setuid -G --setgid -r --root -w --wd --env", bare_shell=True),
    "setpriv": _w("--reuid --regid --ruid --rgid --euid --egid --groups --inh-caps "
                  "--ambient-caps --bounding-set --securebits --pdeathsig --selinux-label "
                  "--apparmor-profile --landlock-access --landlock-rule"),
    "pkexec": _w("--user"),
    "systemd-run": _w("-p --property -u --unit -E --setenv -M --machine --slice --description "
                      "--working-directory -d --uid --gid --nice --on-active --on-boot "
                      "--on-calendar -H --host", shell_flags="S", shell_long=("--shell",)),
    "taskset": _w("", positionals=1), "chrt": _w("-T -P -D", positionals=1),
    "numactl": _w("-C -N -m -p -i --physcpubind --cpunodebind --membind --preferred "
                  "--interleave"),
    "prlimit": _w("-p --pid"), "cgexec": _w("-g"),
    "strace": _w("-e -o -p -s -u -E -a -b -I -O -P -S -X -U"),
    "ltrace": _w("-e -o -p -s -u -a -n -A -D -F -l -x"),
    "valgrind": _w(), "perf": _w("-e -o -p -t -c -F -g -C --event --output --pid"),
    "sshpass": _w("-p -f -d -P"), "envdir": _w("", positionals=1),
    "setuidgid": _w("", positionals=1), "faketime": _w("-f", positionals=1),
    "chpst": _w("-u -U -e -/ -n -l -L -m -d -o -p -f -c -r -t"),
    "softlimit": _w("-m -a -d -s -l -f -c -o -p -t -r"),
    "daemonize": _w("-a -c -e -E -o -p -l -u"),
    "npx": _w("-p --package -c --call"), "bunx": _w("-p --package"),
    "mpirun": _w("-n -np -H --host --hostfile"), "srun": _w("-n -N -p -t -c -J"),
    "gtimeout": _w("-s --signal -k --kill-after", positionals=1),
}  # fmt: skip
#: ``TOOL SUBCOMMAND [options] CMD...``: tools that run a command in an environment.
_SUB_WRAPPERS: dict[tuple[str, str], _Wrap] = {
    ("uv", "run"): _w("--with --with-editable --with-requirements -p --python --project "
                      "--directory --env-file --group --extra --package --index --index-url "
                      "--extra-index-url --find-links -f"),
    ("uvx", ""): _w("--with --from -p --python"),
    ("poetry", "run"): _w("-C --directory -P --project"),
    ("pipenv", "run"): _w(), ("pdm", "run"): _w("-p --project"), ("hatch", "run"): _w(),
    ("rye", "run"): _w(), ("pixi", "run"): _w("-e --environment --manifest-path"),
    ("conda", "run"): _w("-n --name -p --prefix"), ("mamba", "run"): _w("-n --name -p --prefix"),
    ("micromamba", "run"): _w("-n --name -p --prefix"),
    ("bundle", "exec"): _w(), ("mise", "exec"): _w(), ("asdf", "exec"): _w(),
    ("direnv", "exec"): _w("", positionals=1), ("dotenv", "run"): _w(),
    ("op", "run"): _w("--env-file"), ("doppler", "run"): _w("-p --project -c --config"),
    ("pnpm", "exec"): _w(), ("pnpm", "dlx"): _w(), ("yarn", "exec"): _w(),
    ("nix", "shell"): _w(), ("nix-shell", ""): _w(),
}  # fmt: skip
_XARGS_VALUES = frozenset(
    {"-a", "-d", "-E", "-e", "-I", "-L", "-l", "-n", "-P", "-s", "--arg-file", "--delimiter",
     "--eof", "--max-lines", "--max-args", "--max-procs", "--max-chars", "--process-slot-var",
     "--replace"}
)  # fmt: skip
_SSH_VALUES = frozenset(
    {"-b", "-c", "-D", "-E", "-e", "-F", "-I", "-i", "-J", "-L", "-l", "-m", "-O", "-o", "-p",
     "-Q", "-R", "-S", "-W", "-w", "-B"}
)  # fmt: skip
_SHELL_VALUES = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})
#: Options of other tools whose value a local shell runs (exec hooks).
_EXEC_HOOKS = (
    ("tar", re.compile(r"^--(checkpoint-action=exec|to-command|use-compress-program|"
                       r"info-script|new-volume-script)=(.*)$", re.S)),
    ("tar", re.compile(r"^-(I)(.+)$", re.S)),
    ("rsync", re.compile(r"^--(rsh|rsync-path)=(.*)$", re.S)),
    ("ssh", re.compile(r"^-o(\s*|=)?(?:ProxyCommand|LocalCommand|KnownHostsCommand)[=\s]+(.*)$",
                       re.S | re.I)),
    ("git", re.compile(r"^(-c)?(?:alias\.[\w-]+=!|core\.(?:pager|editor|sshCommand|fsmonitor|"
                       r"hooksPath)=|diff\.external=|sequence\.editor=|credential\.helper=!)(.*)$",
                       re.S | re.I)),
)  # fmt: skip


def _strip_options(
    args: tuple[Word, ...], spec: _Wrap, *, stop_at_code: bool = False
) -> tuple[int, set[str], Word | None]:
    """Index of the first argument after a wrapper's options, the options seen, and the value
    of a code option (``su -c CODE``), if any."""
    seen: set[str] = set()
    i = 0
    while i < len(args):
        t = args[i].text
        if t == "--":
            return i + 1, seen, None
        if not t.startswith("-") or t == "-":
            return i, seen, None
        if t.startswith("--"):
            key, eq, val = t.partition("=")
            full = _long_match(key, (*spec.values, *spec.code_flags, *spec.shell_long))
            seen.add(full or key)
            if full in spec.code_flags:
                return i + 1, seen, (Word(val) if eq else args[i + 1] if i + 1 < len(args)
                                     else Word(""))  # fmt: skip
            i += 1 if eq or full not in spec.values else 2
            continue
        if t in spec.values:
            seen.add(t)
            i += 2
            continue
        # a cluster of short flags: `-sE`, `-lc CODE`, `-oL`
        letters = t[1:]
        for k, ch in enumerate(letters):
            seen.add("-" + ch)
            if "-" + ch in spec.code_flags:
                rest = letters[k + 1 :]
                return i + 1, seen, (Word(rest) if rest else args[i + 1] if i + 1 < len(args)
                                     else Word(""))  # fmt: skip
            if "-" + ch in spec.values:
                if k == len(letters) - 1:
                    i += 1  # the value is the next argument
                break
        i += 1
    return i, seen, None


def _long_match(key: str, options: tuple[str, ...] | frozenset[str]) -> str | None:
    """GNU getopt accepts any unambiguous prefix of a long option (``--recu``)."""
    longs = [o for o in options if o.startswith("--")]
    if key in longs:
        return key
    hits = [o for o in longs if o.startswith(key) and len(key) > 2]
    return hits[0] if len(hits) == 1 else None


def _unwrap(w: _Walker, cmd: SimpleCommand, ctx: _Ctx, fed: list[str] | None) -> None:
    """Record the command, then find the commands it runs: wrappers' inner commands and
    literal payloads. One dispatch over the wrapper tables (~100 lines), kept in one place so
    the order of the checks (wrapper, sub-wrapper, payload) stays visible."""
    w.a.commands.append(cmd)
    w.builtin_effects(cmd, ctx)
    name, args = cmd.name, cmd.args
    via = (*cmd.via, name)
    inner_ctx = ctx._replace(depth=ctx.depth + 1, via=via)
    spec = _WRAPPERS.get(name)
    sub_spec = None
    if args:
        sub_spec = _SUB_WRAPPERS.get((name, args[0].text))
    elif (name, "") in _SUB_WRAPPERS:
        sub_spec = _SUB_WRAPPERS[(name, "")]
    if sub_spec is None and (name, "") in _SUB_WRAPPERS:
        sub_spec = _SUB_WRAPPERS[(name, "")]
        args = (Word(""), *args)
    if sub_spec is not None:
        start, _seen, _code = _strip_options(args[1:], sub_spec)
        inner = args[1 + start + sub_spec.positionals :]
        if inner:
            w.emit(inner[0], tuple(inner[1:]), cmd.source, inner_ctx, cmd.writes, fed,
                   cmd.stdin_file)  # fmt: skip
        return
    if spec is not None:
        _run_wrapper(w, cmd, spec, inner_ctx, fed)
    elif name == "env":
        inner = _env_inner(w, cmd, inner_ctx)
        if inner:
            w.emit(inner[0], tuple(inner[1:]), cmd.source, inner_ctx, cmd.writes, fed,
                   cmd.stdin_file)  # fmt: skip
    elif name in ("busybox", "toybox") and args and not args[0].text.startswith("-"):
        w.emit(args[0], tuple(args[1:]), cmd.source, ctx._replace(via=via), cmd.writes, fed,
               cmd.stdin_file)  # fmt: skip
    elif name in ("xargs", "parallel"):
        _xargs(w, cmd, inner_ctx)
    elif name == "find":
        _find_exec(w, cmd, inner_ctx)
    elif name == "watch":
        i, _seen, _c = _strip_options(args, _w("-n --interval -q --equexit"))
        if i < len(args):
            w.payload(_product(_spaced(list(args[i:]))), ctx._replace(via=via), cmd.source,
                      child=True)  # fmt: skip
    elif name == "ssh":
        i, _seen, _c = _strip_options(args, _Wrap(values=_SSH_VALUES))
        for k, a in enumerate(args[:i]):
            _hooks(w, "ssh", a, inner_ctx)
            if a.text == "-o" and k + 1 < len(args):
                _hooks(w, "ssh", Word("-o" + args[k + 1].text, dynamic=args[k + 1].dynamic),
                       inner_ctx)  # fmt: skip
        rest = args[i + 1 :]  # after the host
        if rest:
            w.payload(_product(_spaced(list(rest))), ctx._replace(via=(*via, "remote")),
                      cmd.source, child=True)  # fmt: skip
    elif name == "alias":
        for a in args:  # `alias ll='rm -rf /'`: the value runs wherever the name is used
            if "=" in a.text:
                value = a.text.split("=", 1)[1]
                w.payload(Word(value, dynamic=a.dynamic), ctx._replace(via=via), cmd.source,
                          child=True)  # fmt: skip
    elif name == "trap" and args and not args[0].text.startswith("-"):
        w.payload(args[0], ctx._replace(via=via), cmd.source, child=True)
    elif name == "eval":
        if args and args[0].text == "--":
            args = args[1:]
        code = _product(_spaced(list(args))) if args else Word("")
        if code.dynamic and _trusted_generator(code.text):
            w._forget_variables()  # it may set anything
        elif code.dynamic:
            w.a.problems.append(
                Problem("dynamic", "eval of a value known only at run time", cmd.source[:200])
            )
            w._forget_variables()
        else:
            w.payload(code, ctx._replace(via=via), cmd.source)
    elif name in ("source", "."):
        if args:
            _program(w, cmd, args[0], ctx, fed, "source")
    elif is_shell(name):
        _shell(w, cmd, ctx, fed)
    elif interpreter(name) is not None:
        _interpreter(w, cmd, ctx, fed)
    elif name in ("at", "batch"):
        if any(a.text == "-f" for a in args):
            return
        _program(w, cmd, None, ctx, fed, name)
    elif name in ("awk", "gawk", "mawk", "nawk"):
        _inline_code_strings(w, cmd, ctx)
    else:
        if name == "rsync":
            for k, a in enumerate(args[:-1]):
                if a.text in ("-e", "--rsh") or (a.text.startswith("-") and not a.text.startswith(
                        "--") and a.text.endswith("e") and "e" in a.text[1:]):  # fmt: skip
                    w.payload(args[k + 1], inner_ctx._replace(via=(*via, "rsync -e")),
                              cmd.source, child=True)  # fmt: skip
        for tool, _rx in _EXEC_HOOKS:
            if tool == name:
                for a in args:
                    _hooks(w, name, a, inner_ctx)
                break


def _hooks(w: _Walker, tool: str, arg: Word, ctx: _Ctx) -> None:
    for name, rx in _EXEC_HOOKS:
        if name != tool:
            continue
        m = rx.match(arg.text)
        if m is not None:
            code = m.group(m.lastindex or 1)
            w.payload(Word(code, dynamic=arg.dynamic), ctx._replace(via=(*ctx.via, "exec hook")),
                      arg.text, child=True)  # fmt: skip


def _run_wrapper(w: _Walker, cmd: SimpleCommand, spec: _Wrap, ctx: _Ctx,
                 fed: list[str] | None) -> None:  # fmt: skip
    args = cmd.args
    if cmd.name == "nice" and args and re.fullmatch(r"-\d+", args[0].text):
        args = args[1:]
    if cmd.name in ("su", "sg", "newgrp") or (cmd.name == "runuser" and not any(
            a.text in ("-u", "--user") or a.text.startswith("--user=") for a in args)):  # fmt: skip
        _su(w, cmd, spec, args, ctx, fed)
        return
    i, seen, code = _strip_options(args, spec)
    if code is not None:
        w.payload(code, ctx, cmd.source, child=True)
        return
    if any(o.lstrip("-") and set(o.lstrip("-")) & set(spec.query_flags) for o in seen):
        return  # `command -v rm`: a question, nothing runs
    shell_mode = any(len(o) == 2 and o[1] in spec.shell_flags for o in seen) or any(
        o in spec.shell_long for o in seen
    )
    rest = args[i + spec.positionals :]
    if spec.code_flags and rest and rest[0].text.startswith("-"):
        j, _seen, code = _strip_options(rest, spec)  # `flock FILE -c CODE`
        if code is not None:
            w.payload(code, ctx, cmd.source, child=True)
            return
        rest = rest[j:]
    if shell_mode:
        # `sudo -s CMD` runs CMD through the user's shell; `sudo -s` alone reads its stdin
        if rest:
            w.emit(Word("sh"), (Word("-c"), _product(_spaced(list(rest)))), cmd.source, ctx,
                   cmd.writes, fed, cmd.stdin_file)  # fmt: skip
        else:
            w.emit(Word("sh"), (), cmd.source, ctx, cmd.writes, fed, cmd.stdin_file)
        return
    if cmd.name == "script":  # `script [FILE]`: an interactive $SHELL on its stdin
        w.emit(Word("sh"), (), cmd.source, ctx, cmd.writes, fed, cmd.stdin_file)
        return
    if not rest:
        if spec.bare_shell:
            w.emit(Word("sh"), (), cmd.source, ctx, cmd.writes, fed, cmd.stdin_file)
        return
    w.emit(rest[0], tuple(rest[1:]), cmd.source, ctx, cmd.writes, fed, cmd.stdin_file)


def _su(w: _Walker, cmd: SimpleCommand, spec: _Wrap, args: tuple[Word, ...], ctx: _Ctx,
        fed: list[str] | None) -> None:  # fmt: skip
    """``su [-] [USER] [-c CODE] [ARGS]``, ``sg GROUP [-c] CODE``, ``newgrp``: options may come
    before or after the user; without code, a shell reading its stdin (or ARGS: its script)."""
    rest = list(args)
    named = False
    while True:
        i, _seen, code = _strip_options(tuple(rest), spec)
        if code is not None:
            w.payload(code, ctx, cmd.source, child=True)
            return
        rest = rest[i:]
        if rest and rest[0].text == "-":
            rest = rest[1:]
            continue
        if rest and not named:
            named = True
            rest = rest[1:]  # the user or group
            if cmd.name == "sg" and rest and not rest[0].text.startswith("-"):
                w.payload(_product(_spaced(rest)), ctx, cmd.source, child=True)
                return
            continue
        break
    w.emit(Word("sh"), tuple(rest), cmd.source, ctx, cmd.writes, fed, cmd.stdin_file)


_ENV_LONG = ("--split-string", "--unset", "--chdir", "--ignore-environment", "--null", "--debug",
             "--ignore-signal", "--default-signal", "--block-signal", "--list-signal-handling",
             "--argv0")  # fmt: skip


def _env_inner(w: _Walker, cmd: SimpleCommand, ctx: _Ctx) -> tuple[Word, ...]:
    """The command ``env`` runs; ``env -S 'sh -c ...'`` splits a string into a command."""
    args = cmd.args
    i = 0
    while i < len(args):
        t = args[i].text
        if t == "--":
            return args[i + 1 :]
        if t.startswith("--"):
            key, eq, val = t.partition("=")
            full = _long_match(key, _ENV_LONG) or key
            if full == "--split-string":
                value = Word(val) if eq else (args[i + 1] if i + 1 < len(args) else Word(""))
                rest = list(args[i + 1 :] if eq else args[i + 2 :])
                return _split_string(w, value, rest)
            i += 1 if eq or full not in ("--unset", "--chdir", "--argv0") else 2
            continue
        if t.startswith("-") and t != "-":
            letters = t[1:]
            k = next((k for k, ch in enumerate(letters) if ch in "SuCPa"), None)
            if k is not None and letters[k] == "S":
                attached = letters[k + 1 :]
                value = Word(attached) if attached else (
                    args[i + 1] if i + 1 < len(args) else Word(""))  # fmt: skip
                rest = list(args[i + 1 :] if attached else args[i + 2 :])
                return _split_string(w, value, rest)
            i += 2 if k is not None and k == len(letters) - 1 else 1
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", t):
            var, _, val = t.partition("=")
            w._special_assignment(var, Word(val, dynamic=args[i].dynamic), ctx, cmd.source)
            i += 1
            continue
        break
    return args[i:]


def _split_string(w: _Walker, value: Word, rest: list[Word]) -> tuple[Word, ...]:
    """``env -S 'STRING' ARGS...``: STRING split into words as env does (quotes, escapes),
    then ARGS: the command env runs."""
    if value.dynamic:
        what = "env -S of a value known only at run time"
        w.a.problems.append(Problem("dynamic", what, value.text[:200]))
        return ()
    try:
        words = shlex.split(value.text, comments=False, posix=True)
    except ValueError:
        w.a.problems.append(Problem("dynamic", "env -S string env cannot split", value.text))
        return ()
    return (*(Word(x) for x in words), *rest)


def _xargs(w: _Walker, cmd: SimpleCommand, ctx: _Ctx) -> None:
    """``xargs CMD ARGS`` / ``parallel CMD ::: VALUES``: CMD with ARGS and what it is fed."""
    args = cmd.args
    spec = _Wrap(
        values=_XARGS_VALUES
        if cmd.name == "xargs"
        else frozenset(
            {"-j", "--jobs", "-S", "--sshlogin", "--joblog", "-d", "-a", "-I", "--results"}
        )
    )
    i, _seen, _c = _strip_options(args, spec)
    opts = [a.text for a in args[:i]]
    unbounded = any(re.fullmatch(r"-P0|--max-procs=0|-j0|--jobs=0", t) for t in opts) or any(
        t in ("-P", "--max-procs", "-j", "--jobs") and v == "0" for t, v in itertools.pairwise(opts)
    )
    if unbounded and "yes" in cmd.upstream:
        w.a.bombs.append(f"{cmd.source[:120]} (no limit on processes, endless input)")
    replace_str = None
    for k, a in enumerate(args[:i]):
        if a.text in ("-I", "--replace") and k + 1 < len(args):
            replace_str = args[k + 1].text
        elif a.text.startswith("-I") and len(a.text) > 2:
            replace_str = a.text[2:]
        elif a.text.startswith(("-i", "--replace")):
            replace_str = a.text.split("=", 1)[1] if "=" in a.text else (a.text[2:] or "{}")
    if cmd.name == "parallel" and replace_str is None:
        replace_str = "{}"
    rest = list(args[i:])
    source = ("xargs input",) if cmd.name == "xargs" else ("parallel input",)
    unknown = Word("<input>", ("<input>", ""), dynamic=True, substituted=(*source,
                   *cmd.upstream), tail="")  # fmt: skip
    fed: list[Word] = []
    if cmd.name == "parallel" and any(a.text in (":::", "::::", ":::+") for a in rest):
        k = next(k for k, a in enumerate(rest) if a.text in (":::", "::::", ":::+"))
        fed = [a for a in rest[k + 1 :] if a.text not in (":::", "::::", ":::+")]
        rest = rest[:k]
        if not rest:  # `parallel ::: 'cmd1' 'cmd2'`: the values are the command lines
            for value in fed:
                w.payload(value, ctx, cmd.source, child=True)
            return
    if not rest:
        if cmd.name == "parallel":  # each input line is a command line
            _program(w, cmd, None, ctx._replace(depth=ctx.depth - 1), None, "parallel")
        return  # `xargs` alone runs echo
    value = _loop_values("input", fed) if fed else unknown
    if replace_str is not None and any(replace_str in a.text for a in rest):
        out = []
        for a in rest:
            if replace_str in a.text:
                a = value if a.text == replace_str else Word(
                    a.text.replace(replace_str, value.text), dynamic=True,
                    substituted=value.substituted, tail="")  # fmt: skip
            out.append(a)
        rest = out
    else:
        rest = [*rest, value]
    if cmd.name == "parallel" and len(rest) > 1 and all(" " in a.text for a in rest[:1]):
        w.payload(_product(_spaced(rest)), ctx, cmd.source, child=True)
        return
    w.emit(rest[0], tuple(rest[1:]), cmd.source, ctx._replace(stdin="null"))


def _find_exec(w: _Walker, cmd: SimpleCommand, ctx: _Ctx) -> None:
    args = cmd.args
    k = 0
    while k < len(args) and (args[k].text in ("-H", "-L", "-P") or args[k].text.startswith(
            ("-D", "-O"))):  # fmt: skip
        k += 2 if args[k].text in ("-D",) else 1
    starts = []
    for a in args[k:]:
        if a.text.startswith(("-", "(", "!")):
            break
        starts.append(a)
    start = starts[0].text if len(starts) == 1 else "."
    if len(starts) > 1:
        start = "/" if any(s.text.startswith(("/", "~", "$")) for s in starts) else "."
    if starts and starts[0].dynamic and len(starts) == 1:
        start = next((v for v in starts[0].values if v), ".")
    i = 0
    while i < len(args):
        if args[i].text in ("-exec", "-execdir", "-ok", "-okdir"):
            j = i + 1
            while j < len(args) and args[j].text not in (";", "+"):
                j += 1
            found = Word(f"{start.rstrip('/')}/<found>", dynamic=True, substituted=("find",))
            inner = tuple(found if "{}" in a.text else a for a in args[i + 1 : j])
            if inner:
                w.emit(inner[0], inner[1:], cmd.source, ctx._replace(stdin="null"))
            i = j
        i += 1


def _shell_args(cmd: SimpleCommand) -> tuple[tuple[Word, ...], int | None, int, set[str]]:
    """A shell's arguments (after ``busybox sh``), the index of its ``-c`` payload if any, the
    index of its first operand (a script file, or the payload's ``$0``...), and its flags."""
    args = cmd.args[1:] if cmd.name in ("busybox", "toybox") else cmd.args
    payload: int | None = None
    flags: set[str] = set()
    i = 0
    while i < len(args):
        t = args[i].text
        if t == "--" or t == "-":
            i += 1
            break
        if t in _SHELL_VALUES:
            i += 2
            continue
        if t.startswith("--"):
            flags.add(t)
            if _long_match(t, ("--command",)):
                payload = -1
            i += 1
            continue
        if t[:1] in "-+" and len(t) > 1:
            flags.update(t[1:])
            if t[:1] == "-" and "c" in t[1:] and payload is None:
                payload = -1  # the next operand is the payload
            i += 1
            continue
        break
    if payload == -1:
        return args, (i if i < len(args) else None), i, flags
    return args, None, i, flags


def _shell(w: _Walker, cmd: SimpleCommand, ctx: _Ctx, fed: list[str] | None) -> None:
    """``bash -c 'PAYLOAD'``, ``bash FILE``, ``bash`` reading its program from stdin."""
    if cmd.name in ("busybox", "toybox") and not cmd.args:
        return
    args, payload, first, flags = _shell_args(cmd)
    if payload is not None:
        code = args[payload]
        # `sh -c CODE NAME ARGS...`: $0 is NAME, $1... the ARGS
        rest = args[payload + 1 :]
        saved = w.s
        w.s = saved.copy()
        w.s.positional = (
            tuple(a.text for a in rest[1:]) if all(not a.dynamic for a in rest) else None
        )
        try:
            w.payload(code, ctx._replace(via=(*cmd.via, f"{cmd.name} -c")), cmd.source)
        finally:
            w.s = saved
        return
    if first < len(args) and "s" not in flags:
        _program(w, cmd, args[first], ctx, fed, cmd.name)
    else:
        _program(w, cmd, None, ctx, fed, cmd.name)


def _interpreter(w: _Walker, cmd: SimpleCommand, ctx: _Ctx, fed: list[str] | None) -> None:
    flag = inline_code(cmd)
    if flag is not None:
        _inline_code_strings(w, cmd, ctx)
        return
    if any(a.text in ("-m",) or a.text.startswith("-m") for a in cmd.args[:3]):
        return  # `python -m module`: an installed module
    lang = interpreter(cmd.name) or ""
    value_opts = {"python": ("-W", "-X", "-Q"), "perl": ("-I", "-M", "-m"),
                  "node": ("-r", "--require", "--import", "--loader"),
                  "ruby": ("-I", "-r")}.get(lang, ())  # fmt: skip
    i = 0
    args = cmd.args
    while i < len(args) and args[i].text.startswith("-") and args[i].text not in ("-", "--"):
        i += 2 if args[i].text in value_opts else 1
    if i < len(args) and args[i].text == "--":
        i += 1
    _program(w, cmd, args[i] if i < len(args) else None, ctx, fed, cmd.name, code=lang != "")


def _program(w: _Walker, cmd: SimpleCommand, path: Word | None, ctx: _Ctx,
             fed: list[str] | None, what: str, *, code: bool = False) -> None:  # fmt: skip
    """Where a shell (or an interpreter, ``source``, ``at``) takes its program from: a file
    ``path``, or stdin when ``path`` is None or names stdin."""
    reads_stdin = path is None or (path.known is not None and bool(_STDIN_PATHS.match(path.known)))
    if path is not None and not reads_stdin:
        if path.procsub:
            literal = _procsub_output(w, path, ctx)
            if literal is None and what in ("source", ".") and _trusted_generator(path.text):
                w._forget_variables()
            elif literal is None:
                w.a.problems.append(Problem(
                    "dynamic", f"{what} runs a program read from a process substitution",
                    path.text[:200]))  # fmt: skip
            elif not code:
                for text in literal:
                    w.payload(Word(text), ctx._replace(via=(*cmd.via, f"{what} <(...)")),
                              cmd.source, child=what not in ("source", "."))  # fmt: skip
            return
        if any(_FD_PATHS.match(v) for v in path.values) or (
            path.known is None and any(_STDIN_PATHS.match(v) for v in path.values)
        ):
            w.a.problems.append(Problem(
                "dynamic", f"{what} runs a program read from a file descriptor",
                cmd.source[:200]))  # fmt: skip
            return
        _replace_last(w, cmd, program=path)
        return
    # the program comes from stdin
    if cmd.stdin == "file" and cmd.stdin_file is not None:
        if cmd.stdin_file.procsub or any(_FD_PATHS.match(v) for v in cmd.stdin_file.values):
            _program(w, replace(cmd, stdin="null"), cmd.stdin_file, ctx, None, what, code=code)
            return
        _replace_last(w, cmd, program=cmd.stdin_file)
        return
    if fed is not None:
        if not code:
            for text in fed:
                w.payload(Word(text), ctx._replace(via=(*cmd.via, f"{what} <<")), cmd.source,
                          child=what not in ("source", "."))  # fmt: skip
        return
    if cmd.stdin == "pipe":
        if not code:
            w.a.problems.append(Problem(
                "dynamic", f"{what} reads its program from a pipe", cmd.source[:200]))  # fmt: skip
        return
    if cmd.stdin == "job" and not code:
        if not w.a.stdin_readers:
            w.a.reader_cwd = w.s.cwd
        w.a.stdin_readers.append(what)


#: Tools whose output is shell code to set up an environment (``eval "$(ssh-agent -s)"``,
#: ``source <(kubectl completion bash)``): what they print is theirs, not the line's, so
#: running it is as trustworthy as running the tool. Only a single such command counts.
TRUSTED_GENERATORS = frozenset(
    {"ssh-agent", "gpg-agent", "keychain", "pyenv", "rbenv", "nodenv", "goenv", "jenv", "plenv",
     "direnv", "conda", "mamba", "micromamba", "brew", "starship", "zoxide", "fnm", "mise",
     "rtx", "opam", "luarocks", "kubectl", "helm", "gh", "npm", "pnpm", "pip", "pip3", "pipx",
     "poetry", "uv", "rustup", "minikube", "docker-machine", "dircolors", "fzf", "atuin",
     "register-python-argcomplete", "just", "task", "asdf", "nvm", "pdm", "hatch", "rye",
     "kind", "k3d", "stern", "terraform", "aws_completer", "gcloud", "az", "deno", "bun"}
)  # fmt: skip
_GENERATOR = re.compile(r"^(\$\(|<\(|`)\s*([\w./-]+)((\s+[\w./=:,@%+-]+)*)\s*(\)|`)$")


def _trusted_generator(text: str) -> bool:
    """``$(TOOL ARGS)`` / ``<(TOOL ARGS)`` with TOOL in ``TRUSTED_GENERATORS`` and plain
    arguments (no other command, no expansion)."""
    m = _GENERATOR.match(text.strip().strip('"'))
    return m is not None and normalize_name(m.group(2)) in TRUSTED_GENERATORS


def _replace_last(w: _Walker, cmd: SimpleCommand, **changes: object) -> None:
    for k in range(len(w.a.commands) - 1, -1, -1):
        if w.a.commands[k] is cmd:
            w.a.commands[k] = replace(cmd, **changes)  # type: ignore[arg-type]
            return


def _procsub_output(w: _Walker, path: Word, ctx: _Ctx) -> list[str] | None:
    """What ``<(echo ...)``/``<(printf ...)``/``<(cat <<EOF...)`` writes, when literal."""
    text = path.text
    if not (text.startswith("<(") and text.endswith(")")):
        return None
    inner = text[2:-1]
    probe = type(w)(Analysis(), w.s.copy())
    _yield_gil(len(inner))
    parser = _parser()
    _set_timeout(parser, MAX_PARSE_MICROS - w.a.parse_micros)
    began = time.perf_counter()
    try:
        tree = parser.parse(inner.encode())
    except ValueError:
        parser.reset()
        return None
    finally:
        w.a.parse_micros += int((time.perf_counter() - began) * 1e6)
    root = tree.root_node
    if root.has_error or root.named_child_count != 1:
        return None
    probe.src = inner.encode()
    try:
        return probe._literal_output(root.named_children[0], ctx)
    except _Limit:
        return None


def inline_code(cmd: SimpleCommand) -> str | None:
    """The inline-code flag of ``python -c``, ``perl -e``, ``node -e``... if the command has one
    (also in a cluster of short flags: ``python3 -Ic``, ``perl -ne``)."""
    base = interpreter(cmd.name)
    if base is None:
        return None
    flags = INLINE_CODE_FLAGS.get(base, ())
    for a in cmd.args:
        t = a.text
        if t in flags or any(t.startswith(f + "=") for f in flags if f.startswith("--")):
            return t.split("=", 1)[0]
        if re.fullmatch(r"-[A-Za-z]+", t) and any(len(f) == 2 and f[1] in t[1:] for f in flags):
            return t
        if not t.startswith("-"):
            return None  # a script file: what follows are its arguments
    return None


_STRING_LITERAL = re.compile(r"\"((?:[^\"\\]|\\.){2,2000})\"|'((?:[^'\\]|\\.){2,2000})'")
_CODE_BOMB = re.compile(
    r"fork\s*(\(\s*\))?\s*(while|until)\s*\(?\s*(fork|1|true|!\s*0)\b"
    r"|(while|until)\s*\(?\s*(1|true|True|:|!\s*0)\s*\)?\s*[:;{]?\s*(do\s+)?\s*"
    r"(os\.|Process\.|process\.)?fork\b"
    r"|loop\s*(do|\{)\s*(Process\.)?fork\b|for\s*\(\s*;\s*;\s*\)\s*\{?\s*(os\.)?fork\b",
    re.S,
)


def _inline_code_strings(w: _Walker, cmd: SimpleCommand, ctx: _Ctx) -> None:
    """``python -c 'os.system("rm -rf /")'``, ``awk 'BEGIN{system("...")}'``: string literals in
    inline code that parse as shell commands are checked too. A heuristic (code is not shell):
    literals that do not parse are ignored, and the code itself stays unverifiable."""
    for a in cmd.args:
        if _CODE_BOMB.search(a.text):
            w.a.bombs.append(f"{cmd.source[:120]} (forks in an endless loop)")
        for m in _STRING_LITERAL.finditer(a.text):
            literal = m.group(1) or m.group(2) or ""
            scratch = Analysis(nodes=w.a.nodes, parse_micros=w.a.parse_micros)
            sub = type(w)(scratch, w.s.copy())
            with contextlib.suppress(_Limit):
                sub.script(literal, ctx._replace(depth=ctx.depth + 1,
                                            via=(*cmd.via, f"{cmd.name} code")))  # fmt: skip
            w.a.nodes = max(w.a.nodes, scratch.nodes)
            w.a.parse_micros = max(w.a.parse_micros, scratch.parse_micros)
            w.a.commands.extend(scratch.commands)
            w.a.bombs.extend(scratch.bombs)


def reads_program_from_stdin(cmd: SimpleCommand) -> bool:
    """A shell with no script (or ``-c``) argument reads its program from stdin."""
    if not is_shell(cmd.name):
        return False
    args, payload, first, flags = _shell_args(cmd)
    if payload is not None:
        return False
    return first >= len(args) or "s" in flags or bool(_STDIN_PATHS.match(args[first].text))
