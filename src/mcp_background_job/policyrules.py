"""The built-in deny rules (``BUILTIN_RULES``): one function per rule over a simple command,
with its tables (destructive programs, partitioners, power verbs, downloaders...)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

from .policyfs import (
    _CHATTR,
    _CHMOD,
    _CHOWN,
    _CP,
    _MV,
    _RM,
    _RSYNC,
    _SETFACL,
    _SHRED,
    Effects,
    _parse,
    _Paths,
)
from .shellparse import (
    SimpleCommand,
    Word,
    inline_code,
    interpreter,
    is_shell,
)

# --- the rules ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Env:
    """What the rules know besides the command: the paths judge and what happened before."""

    paths: _Paths
    effects: Effects

    def danger_word(self, word: Word, cmd: SimpleCommand, *, whole: bool = True) -> str | None:
        for v in word.values:
            p = self.paths.resolve(v, cmd.cwd)
            if p is None:
                continue
            why = self.paths.danger(p, whole=whole)
            if why is not None:
                shown = word.text if word.text == p else f"{word.text} = {p}"
                return f"{shown}: {why}"
        return None


def _rule_rm_root(cmd: SimpleCommand, env: _Env) -> str | None:
    name = cmd.name
    if name in ("rm", "grm", "srm", "wipe"):
        opts, operands, unknown = _parse(cmd.args, _RM)
        if "no-preserve-root" in opts:
            return f"{name} --no-preserve-root"
        if not ({"recursive"} & opts or unknown):
            return None
        for w in operands:
            hit = env.danger_word(w, cmd)
            if hit is not None:
                return f"{name} -r {hit}"
    elif name == "mv":
        opts, operands, _ = _parse(cmd.args, _MV)
        sources = operands if "target-directory" in opts else operands[:-1]
        for w in sources:
            hit = env.danger_word(w, cmd)
            if hit is not None:
                return f"mv {hit}"
    elif name == "git" and "clean" in [a.text for a in cmd.args]:
        texts = [a.text for a in cmd.args]
        forced = any(re.fullmatch(r"-[a-zA-Z]*f[a-zA-Z]*", t) or t == "--force" for t in texts)
        where = next((texts[k + 1] for k, t in enumerate(texts[:-1]) if t == "-C"), ".")
        if forced:
            hit = env.danger_word(Word(where.rstrip("/") + "/*"), cmd)
            if hit is not None:
                return f"git clean -f in {hit}"
    elif name == "rsync":
        opts, operands, _ = _parse(cmd.args, _RSYNC)
        deleting = any(o.startswith("del") or o == "remove-source-files" for o in opts)
        if deleting and len(operands) >= 2:
            hit = env.danger_word(operands[-1], cmd)
            if hit is not None and ":" not in operands[-1].text:
                return f"rsync --delete ... {hit}"
    return None


def _rule_unknown_target(cmd: SimpleCommand, env: _Env) -> str | None:
    """Recursive removal/permission change of paths that only a command's output will name."""
    spec = {"rm": _RM, "chmod": _CHMOD, "chown": _CHOWN, "chgrp": _CHOWN, "shred": _SHRED}.get(
        cmd.name
    )
    if spec is None:
        return None
    opts, operands, _ = _parse(cmd.args, spec)
    if "recursive" not in opts:
        return None
    if cmd.name in ("chmod", "chown", "chgrp") and "reference" not in opts:
        operands = operands[1:]  # the mode or the owner
    for w in operands:
        if w.substituted and not w.text.endswith("/<found>"):
            return f"{cmd.name} -r {w.text[:80]}"
    return None


def _rule_chmod_root(cmd: SimpleCommand, env: _Env) -> str | None:
    spec = {"chmod": _CHMOD, "chown": _CHOWN, "chgrp": _CHOWN, "setfacl": _SETFACL,
            "chattr": _CHATTR}.get(cmd.name)  # fmt: skip
    if spec is None:
        return None
    opts, operands, unknown = _parse(cmd.args, spec)
    if "no-preserve-root" in opts:
        return f"{cmd.name} --no-preserve-root"
    if cmd.name in ("chmod", "chown", "chgrp", "chattr") and "reference" not in opts:
        operands = operands[1:]
    recursive = "recursive" in opts or unknown
    for w in operands:
        hit = env.danger_word(w, cmd, whole=recursive)
        if hit is not None:
            return f"{cmd.name} {'-R ' if recursive else ''}... {hit}"
    return None


#: What ``find -exec`` may run on everything it finds without destroying anything.
_DESTRUCTIVE = frozenset({"rm", "shred", "unlink", "rmdir", "srm", "wipe", "chmod", "chown",
                          "chgrp", "chattr", "setfacl", "truncate", "mv", "dd", "sed", "perl",
                          "tee", "cp", "install", "ln"})  # fmt: skip


def _rule_find_delete(cmd: SimpleCommand, env: _Env) -> str | None:
    if cmd.name != "find":
        return None
    args = list(cmd.args)
    k = 0
    while k < len(args) and (args[k].text in ("-H", "-L", "-P") or args[k].text.startswith(
            ("-D", "-O"))):  # fmt: skip
        k += 2 if args[k].text == "-D" else 1
    starts: list[Word] = []
    for a in args[k:]:
        if a.text.startswith(("-", "(", "!")):
            break
        starts.append(a)
    texts = [a.text for a in args]
    destructive = "-delete" in texts
    for i, t in enumerate(texts):
        if t in ("-exec", "-execdir", "-ok", "-okdir") and i + 1 < len(texts):
            inner = texts[i + 1].rsplit("/", 1)[-1]
            if inner in _DESTRUCTIVE or is_shell(inner) or interpreter(inner) is not None:
                destructive = True
    if not destructive:
        return None
    for w in starts or [Word(".")]:
        for v in w.values:
            p = env.paths.resolve(v, cmd.cwd)
            if p is None:
                continue
            why = env.paths.danger(p.rstrip("/") + "/*")
            if why is not None:
                return f"find {w.text} ... ({p}: {why})"
    return None


_MKFS = re.compile(r"^(mkfs(\..+)?|mke2fs|mkswap|mkdosfs|mkntfs|mkexfatfs|mkfs\..+|mkudffs|"
                   r"mkreiserfs|mkbtrfs|zerofree)$")  # fmt: skip
_PARTITIONERS = frozenset({"parted", "fdisk", "sfdisk", "gdisk", "sgdisk", "cfdisk", "cgdisk",
                           "wipefs", "blkdiscard", "sg_format", "badblocks", "flashrom",
                           "cryptsetup", "pvcreate", "vgcreate", "mdadm", "zpool", "hdparm",
                           "nvme", "debugfs", "tune2fs", "e2label"})  # fmt: skip
_READ_ONLY_FLAGS = {
    "fdisk": {"-l", "--list", "-x", "--list-details"},
    "sfdisk": {"-l", "--list", "-d", "--dump", "-s", "--show-size", "-V", "--verify", "-J",
               "--json", "-F", "--list-free", "-g", "--show-geometry"},
    "parted": {"-l", "--list"}, "gdisk": {"-l"}, "sgdisk": {"-p", "--print", "-i", "--info"},
    "wipefs": set(), "badblocks": set(), "tune2fs": {"-l"}, "cryptsetup": set(),
    "hdparm": set(),
}  # fmt: skip
_DESTRUCTIVE_VERBS = {
    "cryptsetup": {"luksformat", "erase", "luksErase", "reencrypt", "format"},
    "nvme": {"format", "sanitize", "write-zeroes", "write-uncor", "ns-delete", "delete-ns"},
    "zpool": {"create", "destroy", "labelclear", "add", "attach", "replace"},
    "mdadm": {"--create", "-C", "--zero-superblock", "--build", "-B", "--grow"},
}  # fmt: skip
_ALWAYS_DESTRUCTIVE = frozenset({"pvremove", "vgremove", "lvremove", "dmsetup"})


def _rule_mkfs(cmd: SimpleCommand, env: _Env) -> str | None:
    """Formatting, partitioning or wiping a block device (an image file is fine)."""
    name = cmd.name
    if name in _ALWAYS_DESTRUCTIVE:
        return name if name != "dmsetup" or any(a.text.startswith(("remove", "wipe"))
                                                for a in cmd.args) else None  # fmt: skip
    if not (_MKFS.match(name) or name in _PARTITIONERS or name == "shred"):
        return None
    texts = [a.text.lower() for a in cmd.args]
    if name in _READ_ONLY_FLAGS and set(texts) & _READ_ONLY_FLAGS[name]:
        return None
    if name == "parted" and texts and all(
        t in ("print", "unit", "s", "b", "mb", "gb", "-s", "--script", "-m", "--machine")
        or t.startswith("/dev/") or t.endswith(".img") for t in texts
    ) and "print" in texts:  # fmt: skip
        return None
    if name == "wipefs" and not any(
        re.fullmatch(r"-[a-z]*[aot][a-z]*", t) or t.startswith(("--all", "--offset", "--types"))
        for t in texts
    ):
        return None
    if name == "badblocks" and not any(t.startswith("-") and ("w" in t or "n" in t)
                                       for t in texts):  # fmt: skip
        return None
    if name == "hdparm" and not any(
        t.startswith(("--security-erase", "--trim-sector", "--write-sector", "--make-bad",
                      "--dco-restore", "--yes-i-know", "-z")) for t in texts
    ):  # fmt: skip
        return None
    if name in _DESTRUCTIVE_VERBS and not any(
        t in {v.lower() for v in _DESTRUCTIVE_VERBS[name]} for t in texts
    ):
        return None
    if name == "debugfs" and "-w" not in texts:
        return None
    for a in cmd.args:
        if a.text.startswith("-") and "=" not in a.text:
            continue
        value = Word(a.text.split("=", 1)[1]) if a.text.startswith("-") else a
        if env.paths.is_device(value, cmd.cwd):
            return f"{name} ... {a.text}"
        if value.dynamic and not value.substituted and name != "shred":
            return f"{name} ... {a.text} (cannot tell whether it is a block device)"
    return None


#: Programs that fetch data from elsewhere.
_DOWNLOADERS = frozenset(
    {"curl", "wget", "wget2", "fetch", "aria2c", "http", "https", "xh", "httpie", "lwp-request",
     "lwp-download", "GET", "nc", "ncat", "netcat", "socat", "tftp", "ftp", "scp", "sftp",
     "rsync", "telnet", "axel", "gsutil", "rclone"}
)  # fmt: skip
#: Programs that turn data into something else: piping their output into a shell runs code
#: nobody can read in the command line (``echo cm0gLXJmIC8= | base64 -d | sh``).
_DECODERS = frozenset(
    {"base64", "base32", "basenc", "xxd", "openssl", "uudecode", "gpg", "rev", "tr", "gunzip",
     "zcat", "xz", "unxz", "xzcat", "bzip2", "bunzip2", "bzcat", "zstd", "unzstd", "zstdcat",
     "lz4", "unzip", "7z", "python3", "python", "perl", "ruby", "node", "php", "awk", "sed",
     "jq", "iconv", "od", "dd"}
)  # fmt: skip


def _rule_download_exec(cmd: SimpleCommand, env: _Env) -> str | None:
    """``curl ... | sh``, ``base64 -d | bash``, ``bash <(curl ...)``, ``sh -c "$(wget ...)"``,
    ``curl -o x.sh URL && sh x.sh``, a shell reading a FIFO."""
    runs_code = (
        is_shell(cmd.name)
        or cmd.name in ("eval", "source", ".", "at", "batch", "parallel", "xargs")
        or interpreter(cmd.name) is not None
    )
    if runs_code:
        if cmd.stdin == "pipe" and not cmd.stdin_script and _program_from_stdin(cmd):
            for up in cmd.upstream:
                if up in _DOWNLOADERS or up in _DECODERS:
                    return f"{up} | {cmd.name}"
        for a in cmd.args:
            for sub in a.substituted:
                if sub in _DOWNLOADERS or sub in _DECODERS:
                    return f"{cmd.name} ... {a.text[:80]}"
    for label, path in _programs_run(cmd, env):
        if path in env.effects.downloaded:
            return f"{label} ({env.effects.downloaded[path]} wrote it earlier in the line)"
        if path in env.effects.fifos:
            return f"{label} (a FIFO: what is written into it runs)"
    if "/" not in cmd.raw_name and cmd.name in env.effects.downloaded_names:
        return f"{cmd.name} ({env.effects.downloaded_names[cmd.name]} wrote it earlier)"
    return None


def _program_from_stdin(cmd: SimpleCommand) -> bool:
    if is_shell(cmd.name):
        from .shellparse import reads_program_from_stdin

        return reads_program_from_stdin(cmd)
    if cmd.name in ("source", "."):
        return bool(cmd.args) and cmd.args[0].text in ("/dev/stdin", "/dev/fd/0",
                                                       "/proc/self/fd/0")  # fmt: skip
    if interpreter(cmd.name) is not None:
        if inline_code(cmd) is not None:
            return False
        positional = [a for a in cmd.args if not a.text.startswith("-")]
        return not positional or any(a.text in ("-", "/dev/stdin") for a in cmd.args)
    return cmd.name in ("at", "batch", "parallel") or (
        cmd.name == "xargs" and any(is_shell(a.text.rsplit("/", 1)[-1]) for a in cmd.args)
    )


def _programs_run(cmd: SimpleCommand, env: _Env) -> list[tuple[str, str]]:
    """(how it is shown, absolute path) of each file this command runs as a program."""
    out: list[tuple[str, str]] = []
    words: list[tuple[str, Word]] = []
    if "/" in cmd.raw_name:
        words.append((cmd.raw_name, Word(cmd.raw_name)))
    if cmd.program is not None:
        words.append((f"{cmd.name} {cmd.program.text}", cmd.program))
    for label, w in words:
        for v in w.values:
            p = env.paths.resolve(v, cmd.cwd, symbolic=True)
            if p is not None:
                out.append((label, p))
    return out


_SYSTEMCTL_VALUES = frozenset(
    {"-t", "--type", "-p", "--property", "-s", "--signal", "-H", "--host", "-M", "--machine",
     "--root", "-n", "--lines", "-o", "--output", "--kill-whom", "--kill-value", "--job-mode",
     "--what", "--timestamp", "--boot-loader-entry", "--reboot-argument", "--state",
     "--preset-mode", "--message", "--when", "--image", "--drop-in"}
)  # fmt: skip
_POWER = ("poweroff", "reboot", "halt", "kexec", "suspend", "hibernate", "hybrid-sleep",
          "suspend-then-hibernate", "sleep", "emergency", "rescue", "soft-reboot",
          "ctrl-alt-del", "shutdown", "exit", "final")  # fmt: skip
_POWER_UNIT = re.compile(r"^(systemd-)?(" + "|".join(map(re.escape, _POWER)) +
                         r"|runlevel[016])(\.target|\.service)?$")  # fmt: skip
_CRITICAL_UNIT = re.compile(
    r"^(-\.slice|init\.scope|user\.slice|system\.slice|user@.*|"
    r"session-.*\.scope|systemd-logind(\.service)?|dbus(\.service)?|"
    r"dbus-broker(\.service)?|getty\.target|multi-user\.target)$"
)
_START_VERBS = frozenset({"start", "restart", "reload-or-restart", "try-restart", "isolate",
                          "try-reload-or-restart", "force-reload", "condrestart", "enqueue",
                          "reload-or-try-restart", "enable", "reenable", "link"})  # fmt: skip
_STOP_VERBS = frozenset({"stop", "kill", "restart", "try-restart", "mask", "freeze", "clean"})
_DBUS_POWER = re.compile(
    r"(?i)(power_?off|reboot|\bhalt\b|kexec|suspend|hibernate|terminate_?(user|session|seat)|"
    r"kill_?(user|session)|soft_?reboot|\.halt|schedule_?shutdown)"
)
_SIGNAL_ARG = re.compile(r"^-(\d+|[A-Za-z][A-Za-z0-9+-]*)$")


def _rule_shutdown(cmd: SimpleCommand, env: _Env) -> str | None:
    name = cmd.name
    args = [a.text for a in cmd.args]
    if name in ("shutdown", "reboot", "halt", "poweroff", "kexec", "killall5", "uadmin"):
        return name
    if name == "openrc-shutdown" or (
        name in ("init", "telinit", "runit-init")
        and any(a in ("0", "6", "1", "s", "S", "single") for a in args)
    ):
        return f"{name} {' '.join(args)}"
    if name == "systemctl":
        operands: list[str] = []
        i = 0
        while i < len(args):
            t = args[i]
            i += 1
            if t in _SYSTEMCTL_VALUES:
                i += 1
            elif not t.startswith("-"):
                operands.append(t)
        if operands:
            verb, units = operands[0], operands[1:]
            if verb in _POWER or verb == "default":
                return f"systemctl {verb}"
            if verb in _START_VERBS and any(_POWER_UNIT.match(u) for u in units):
                return f"systemctl {verb} {' '.join(units)}"
            if verb in _STOP_VERBS and any(_CRITICAL_UNIT.match(u) for u in units):
                return f"systemctl {verb} {' '.join(units)}"
    if name == "loginctl" and args:
        verbs = [a for a in args if not a.startswith("-")]
        if verbs and (verbs[0] in _POWER or verbs[0].startswith(("terminate-", "kill-"))):
            return f"loginctl {verbs[0]}"
    if name in ("busctl", "dbus-send", "gdbus", "qdbus", "dbus-send2", "qdbus6") and any(
        _DBUS_POWER.search(a) for a in args
    ):
        return f"{name} ... {next(a for a in args if _DBUS_POWER.search(a))}"
    for w in _written(cmd):
        for v in w.values:
            p = env.paths.resolve(v, cmd.cwd)
            if p in ("/proc/sysrq-trigger", "/proc/sys/kernel/sysrq", "/proc/sys/kernel/panic"):
                return f"{cmd.name} > {w.text}"
    if name == "kill":
        return _kill(cmd)
    if name in ("pkill", "killall", "pgrep"):
        return _pkill(cmd)
    return None


def _kill(cmd: SimpleCommand) -> str | None:
    """``kill -9 -1`` in every spelling (``-01``, ``-- -1``, ``-s KILL -1``, ``-KILL -1``,
    ``-n 9 -1``); ``kill 1`` (init). ``kill 0`` signals the job's own process group: allowed."""
    sig: str | None = None
    pids: list[Word] = []
    args = cmd.args
    i = 0
    ended = False
    while i < len(args):
        t = args[i].text
        i += 1
        if ended:
            pids.append(args[i - 1])
        elif t == "--":
            ended = True
        elif t in ("-l", "-L", "--list", "--table"):
            return None
        elif t in ("-s", "-n", "--signal", "-q", "--queue", "--timeout"):
            if t in ("-s", "-n", "--signal") and i < len(args):
                sig = args[i].text
            i += 1 if t != "--timeout" else 2
        elif sig is None and _SIGNAL_ARG.match(t):
            sig = t[1:]
        elif t.startswith("--signal="):
            sig = t.split("=", 1)[1]
        else:
            pids.append(args[i - 1])
    if sig is not None and sig.lstrip("0") == "" and sig != "":
        return None  # signal 0: only asks whether the processes exist
    for w in pids:
        if w.substituted and set(w.substituted) <= {"ps"}:
            return f"kill {w.text[:80]} (every process ps lists)"
        if w.substituted == ("pgrep",):
            inner = re.sub(r"^(\$\(|`)|(\)|`)$", "", w.text.strip().strip('"'))
            if _pkill_words("pkill", inner.split()[1:]) is not None:
                return f"kill {w.text[:80]} (every process of a user, or all)"
        for v in w.values:
            try:
                n = int(v, 10)
            except ValueError:
                continue
            if n == -1:
                return f"kill {'-' + sig + ' ' if sig else ''}{w.text} (every process)"
            if n == 1:
                return "kill 1 (init)"
    return None


_MATCH_ALL = re.compile(r"^(\^?(\.\*?|\.\+|\.\?)?\$?|\^|\$|\.\*\.\*|\[\^\]|)$")


def _pkill(cmd: SimpleCommand) -> str | None:
    """``pkill -u USER`` (every process of a user), ``pkill -9 .``, ``killall -u USER``."""
    if cmd.name == "pgrep":
        return None
    return _pkill_words(cmd.name, [a.text for a in cmd.args])


def _pkill_words(name: str, texts: list[str]) -> str | None:
    selectors = {"-u", "-U", "-G", "-g", "-s", "-P", "-t", "--euid", "--uid", "--group",
                 "--pgroup", "--session", "--parent", "--terminal", "--user", "-r", "--regexp",
                 "--ns", "--nslist", "--older", "--younger", "-o", "-y"}  # fmt: skip
    patterns: list[str] = []
    has_selector = False
    i = 0
    while i < len(texts):
        t = texts[i]
        i += 1
        if t in selectors or t.split("=", 1)[0] in selectors:
            has_selector = has_selector or t not in ("-r", "--regexp", "-o", "-y")
            if t in ("-r", "--regexp") and i < len(texts):
                patterns.append(texts[i])
            if ("=" not in t and t not in ("-o", "-y")) or (name == "killall" and t in
                                                           ("-o", "-y")):  # fmt: skip
                i += 1
            continue
        if t.startswith("-"):
            continue
        patterns.append(t)
    if not patterns and has_selector:
        return f"{name} {' '.join(texts)} (every process of a user or group)"
    for p in patterns:
        if _MATCH_ALL.match(p):
            return f"{name} {p!r} (matches every process)"
    return None


def _written(cmd: SimpleCommand) -> list[Word]:
    """Files a command writes to: redirections, ``tee``, ``dd of=``, ``cp``/``mv`` targets..."""
    out = list(cmd.writes)
    name, args = cmd.name, cmd.args
    if name in ("tee", "sponge", "truncate", "fallocate", "shred", "sed", "badblocks"):
        out.extend(a for a in args if not a.text.startswith("-"))
    elif name in ("dd", "ddrescue", "dcfldd", "dc3dd"):
        out.extend(Word(v) for a in args for v in [a.text] if v.startswith("of="))
        out = [Word(w.text[3:]) if w.text.startswith("of=") else w for w in out]
        if name == "ddrescue":
            ops = [a for a in args if not a.text.startswith("-")]
            out.extend(ops[1:2])
    elif name in ("cp", "mv", "install", "rsync", "scp", "ln", "pv"):
        spec = _CP if name != "mv" else _MV
        _opts, operands, _ = _parse(args, spec)
        target = next((args[k + 1] for k, a in enumerate(args[:-1]) if a.text in ("-t",
                       "--target-directory")), None)  # fmt: skip
        if target is not None:
            out.append(target)
        elif operands:
            out.append(operands[-1])
    elif name in _DOWNLOADERS:
        out.extend(_download_targets(cmd))
    return out


def _rule_block_device(cmd: SimpleCommand, env: _Env) -> str | None:
    for w in _written(cmd):
        if env.paths.is_device(w, cmd.cwd):
            return f"{cmd.name} > {w.text}" if w in cmd.writes else f"{cmd.name} ... {w.text}"
    return None


def _rule_unicode_name(cmd: SimpleCommand, env: _Env) -> str | None:
    raw = cmd.raw_name or cmd.name
    if not raw.isascii() or not raw.isprintable():
        return raw
    return None


@dataclass(frozen=True, slots=True)
class BuiltinRule:
    id: str
    description: str
    check: Callable[[SimpleCommand, _Env], str | None]


BUILTIN_RULES: tuple[BuiltinRule, ...] = (
    BuiltinRule("builtin:rm-root", "recursive removal (or moving away) of /, a top-level or "
                "system directory, a home directory, or everything in one", _rule_rm_root),
    BuiltinRule("builtin:recursive-unknown-target", "recursive rm/chmod of paths produced at "
                "run time ($(...), xargs, read): they cannot be checked", _rule_unknown_target),
    BuiltinRule("builtin:chmod-root", "recursive chmod/chown of /, a system or home directory",
                _rule_chmod_root),
    BuiltinRule("builtin:find-delete-root", "find -delete (or -exec rm ...) from /, a system or "
                "home directory", _rule_find_delete),
    BuiltinRule("builtin:mkfs", "formatting, partitioning or wiping a block device",
                _rule_mkfs),
    BuiltinRule("builtin:block-device-write", "writing to a block device", _rule_block_device),
    BuiltinRule("builtin:download-exec", "running downloaded or decoded code, or code read "
                "from a FIFO", _rule_download_exec),
    BuiltinRule("builtin:shutdown", "shutting down, rebooting, crashing the kernel, or killing "
                "every process", _rule_shutdown),
    BuiltinRule("builtin:unicode-command-name", "a command name with non-ASCII or invisible "
                "characters (look-alike)", _rule_unicode_name),
)  # fmt: skip


# --- effects of a command on the file system ----------------------------------------------------


def _url_name(url: str) -> str | None:
    path = re.sub(r"[?#].*$", "", url)
    if "://" in path:
        path = path.split("://", 1)[1]
    if "/" not in path:
        return "index.html"
    base = path.rsplit("/", 1)[1]
    return base or "index.html"


def _download_targets(cmd: SimpleCommand) -> list[Word]:
    """The files a downloader writes (``curl -o F``, ``curl -O``, ``wget URL``, ``wget -O F``)."""
    args = cmd.args
    texts = [a.text for a in args]
    out: list[Word] = []
    name = cmd.name
    urls = [a for a in args if re.match(r"^[a-z][a-z0-9+.-]*://|^[\w.-]+\.[a-z]{2,}/", a.text)]
    value_flags = {"curl": ("-o", "--output"), "wget": ("-O", "--output-document"),
                   "wget2": ("-O", "--output-document"), "fetch": ("-o",),
                   "aria2c": ("-o", "--out"), "http": ("-o", "--output"),
                   "https": ("-o", "--output"), "xh": ("-o", "--output"),
                   "axel": ("-o", "--output")}.get(name, ())  # fmt: skip
    explicit = False
    for k, t in enumerate(texts):
        for f in value_flags:
            if len(f) == 2 and not t.startswith("--"):
                # a cluster of short flags ending in the letter (`curl -sSLo FILE`, `wget -qO
                # FILE`), or with the value attached (`-qOFILE`)
                m = re.fullmatch(rf"-[a-zA-Z]*?{f[1]}(.*)", t, re.S)
                if m is None:
                    continue
                if m.group(1):
                    out.append(Word(m.group(1)))
                elif k + 1 < len(texts):
                    out.append(args[k + 1])
                explicit = True
            elif t == f and k + 1 < len(texts):
                out.append(args[k + 1])
                explicit = True
            elif t.startswith(f + "="):
                out.append(Word(t.split("=", 1)[1]))
                explicit = True
        if name == "lwp-download" and len([a for a in texts if not a.startswith("-")]) > 1:
            out.append(Word([a for a in texts if not a.startswith("-")][-1]))
    remote_name = name == "curl" and any(
        t in ("-O", "--remote-name", "--remote-name-all") or re.fullmatch(r"-[a-zA-Z]*O", t)
        for t in texts
    )
    if (remote_name or (name in ("wget", "wget2", "axel", "aria2c") and not explicit)) and urls:
        prefix = next((texts[k + 1] for k, t in enumerate(texts[:-1]) if t in ("-P",
                       "--directory-prefix", "-d", "--dir")), "")  # fmt: skip
        for u in urls:
            base = _url_name(u.text)
            if base:
                out.append(Word(posixpath.join(prefix, base) if prefix else base))
    if name in ("scp", "rsync", "sftp"):
        ops = [a for a in args if not a.text.startswith("-")]
        if len(ops) >= 2 and ":" in ops[0].text:
            dest = ops[-1].text
            out.append(ops[-1])
            out.append(Word(posixpath.join(dest, posixpath.basename(ops[0].text.split(":", 1)[1]))))
    return [w for w in out if w.text not in ("-", "/dev/stdout", "/dev/null")]
