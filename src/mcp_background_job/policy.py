"""What may run: allow and deny rules over every simple command of a command line.

Import rule: pure modules only, ``shellparse`` and this module's own parts (layer ``pure`` in
``tests/test_layers.py``); ``config`` must not import it.

A guardrail against mistakes and obvious abuse, not a sandbox: a program can do anything its
code says (``python -c``, a script file, a Makefile), and a deny list cannot see that. The real
boundary is ``isolation`` (see ``isolation.py``). What this module promises:

- every simple command the shell would run is checked, including those inside pipelines, lists,
  substitutions, literal ``bash -c``/``eval`` payloads, wrappers and scripts written earlier in
  the same line (see ``shellparse``);
- names are normalized (``/bin/rm``, ``\\rm`` and ``r''m`` are all ``rm``); a name computed at
  run time is refused as unverifiable;
- paths are judged by what they expand to (globs, ``..``, ``~`` in every spelling, variables,
  the cwd reached with ``cd``, ``/proc/self/root``, symlinks made earlier in the line), options
  by what GNU tools accept (``-rf``, ``--recu``);
- deny wins over allow; in allow-list mode whatever no allow rule matches is refused;
- what the parser cannot vouch for is refused in allow-list mode, and in deny-list mode refused
  or allowed with an audit record (``policy_unparseable``) -- never silently allowed; a command
  over the analysis limits is always refused.

Patterns (``policy_allow``/``policy_deny``) are globs over a simple command written as
``name arg1 arg2...`` (``git *``, ``rm -rf /*``), or ``re:`` + a regular expression that must
match that whole line.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from .shellparse import (
    MAX_COMMAND_CHARS,
    MAX_CPU_S,
    Analysis,
    Problem,
    Scope,
    SimpleCommand,
    Word,
    analyse,
    ansi_c,
    inline_code,
    interpreter,
    is_shell,
    printf_output,
)

Decision = Literal["allowed", "refused"]


class PatternError(ValueError):
    """A configured pattern cannot be compiled."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy's answer: ``rule`` names what decided, ``matched`` the part of the command."""

    decision: Decision
    rule: str
    matched: str
    message: str
    audit_note: str | None = None  # allowed, but something could not be verified

    @property
    def allowed(self) -> bool:
        return self.decision == "allowed"


@dataclass(frozen=True, slots=True)
class Pattern:
    source: str
    regex: re.Pattern[str]

    def matches(self, cmd: SimpleCommand) -> bool:
        return any(self.regex.fullmatch(line) for line in _lines(cmd))


def compile_pattern(source: str) -> Pattern:
    """Compile an allow/deny pattern; raise ``PatternError`` (a ``ValueError``) when malformed."""
    if not source.strip():
        raise PatternError("an empty pattern would match nothing useful")
    if source.startswith("re:"):
        try:
            return Pattern(source, re.compile(source[3:], re.S))
        except re.error as exc:
            raise PatternError(
                f"pattern {source!r} is not a valid regular expression: {exc}"
            ) from exc
    return Pattern(source, re.compile(fnmatch.translate(source.strip()), re.S))


def _lines(cmd: SimpleCommand) -> list[str]:
    """The command as the patterns see it: as written, and with each word's other values."""
    lines = [cmd.line]
    if any(a.vals for a in cmd.args):
        for k in range(1, 3):
            alt = " ".join([cmd.name, *(a.values[min(k, len(a.values)) - 1] if a.vals else a.text
                                        for a in cmd.args)])  # fmt: skip
            if alt not in lines:
                lines.append(alt)
    return lines


# --- paths -------------------------------------------------------------------------------------

#: Top-level directories whose content is the system: neither they, what is directly in them,
#: nor all of their content may be removed.
_SYSTEM = frozenset(
    {"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "sys",
     "usr", "var", "snap", "nix", "home", "root", "Users", "System", "Library", "Applications",
     "private", "Volumes"}
)  # fmt: skip
#: Scratch directories: emptying them is fine (``rm -rf /tmp/*``), removing them is not.
_SCRATCH = frozenset({("tmp",), ("var", "tmp"), ("dev", "shm"), ("var", "cache")})
_HOME_PARENTS = ("home", "Users")
_DEVICE = re.compile(
    r"^/dev/(sd[a-z]+\d*|hd[a-z]+\d*|vd[a-z]+\d*|xvd[a-z]+\d*|nvme\d+(n\d+(p\d+)?)?|"
    r"mmcblk\d+(p\d+|boot\d+|rpmb)?|md\d+|md/.+|dm-\d+|loop\d+(p\d+)?|mapper/.+|disk/.+|"
    r"block/.+|root|sr\d+|fd\d+|ram\d+|zram\d+|nbd\d+(p\d+)?|rbd\d+|bcache\d+|mtdblock\d+|"
    r"mtd\d+|ubi.*|mem|kmem|port|nvram|drbd\d+|zd\d+|[\w.-]+/[\w.-]+)$"
)
_DEVICE_SAMPLES = ("sda", "sda1", "nvme0n1", "vda", "xvda", "mmcblk0", "hda", "md0", "dm-0",
                   "loop0", "mem")  # fmt: skip


#: Stands for an unknown cwd when following files: never a protected place.
_UNKNOWN_CWD = "/\x00cwd"


def _broad(comp: str) -> bool:
    """A glob component that matches (nearly) every name: ``*``, ``.*``, ``[!.]*``, ``?*``."""
    if comp == "<found>":
        return True
    if "*" not in comp and "?" not in comp:
        return False
    rest = re.sub(r"\[[^\]]*\]", "", comp).lstrip(".")
    return bool(rest) and set(rest) <= {"*", "?"}


def _match(name: str, comp: str) -> bool:
    return name == comp or (any(c in comp for c in "*?[") and fnmatch.fnmatchcase(name, comp))


@dataclass(slots=True)
class Effects:
    """What earlier commands of the line did to the file system, as far as it matters here."""

    links: dict[str, str] = field(default_factory=dict)  # symlink or bind mount -> its target
    downloaded: dict[str, str] = field(default_factory=dict)  # path -> the program that wrote it
    downloaded_names: dict[str, str] = field(default_factory=dict)  # base names of those
    fifos: set[str] = field(default_factory=set)
    scripts: dict[str, str] = field(default_factory=dict)  # path -> the literal text written

    def copy(self) -> Effects:
        return Effects(dict(self.links), dict(self.downloaded), dict(self.downloaded_names),
                       set(self.fifos), dict(self.scripts))  # fmt: skip


class _Paths:
    """Judges paths: ``resolve`` a word's value to an absolute path (cwd, ``~``, ``/proc/self``,
    symlinks made earlier), ``danger`` says what protected place it is or reaches."""

    def __init__(self, homes: Iterable[str], effects: Effects) -> None:
        self.homes = [h for h in dict.fromkeys(_clean(h) for h in homes) if h not in ("", "/")]
        self.home = self.homes[0] if self.homes else "/root"
        self.effects = effects

    def resolve(self, value: str, cwd: str | None, *, symbolic: bool = False) -> str | None:
        """``value`` as an absolute path, or None when it cannot be known. ``symbolic``: a
        relative path in an unknown cwd still names one file (to follow files the line writes
        and then runs)."""
        v = value.strip()
        if cwd is None and symbolic:
            cwd = _UNKNOWN_CWD
        if not v or v.startswith("$") or v.startswith("<input>"):
            return None
        if v == "~" or v.startswith("~/"):
            v = self.home + v[1:]
        elif v.startswith("~"):
            user, _, rest = v[1:].partition("/")
            v = ("/root" if user == "root" else f"/home/{user}") + "/" + rest
        if not v.startswith("/"):
            if cwd is None:
                return None
            v = cwd.rstrip("/") + "/" + v
        return self._walk(v, cwd)

    def _walk(self, path: str, cwd: str | None) -> str:
        """Resolve ``path`` one component at a time as the kernel does: a symlink made earlier
        in the line, ``/proc/*/root`` and ``/proc/*/cwd`` are followed before a later ``..``
        (``/proc/self/cwd/..`` is the cwd's parent, ``link/..`` the target's parent)."""
        todo = [c for c in path.split("/") if c not in ("", ".")]
        out: list[str] = []
        hops = 0
        while todo:
            c = todo.pop(0)
            if c == "..":
                if out:
                    out.pop()
                continue
            out.append(c)
            target: str | None = None
            if len(out) == 3 and out[0] == "proc" and out[2] in ("root", "cwd"):
                if out[2] == "root":
                    target = "/"
                else:  # another process's cwd can be anything, even /
                    target = cwd if out[1] in ("self", "thread-self") and cwd else "/"
            elif self.effects.links:
                target = self.effects.links.get("/" + "/".join(out))
            if target is not None and hops < 16:
                hops += 1
                out = []
                todo = [x for x in target.split("/") if x not in ("", ".")] + todo
        return "/" + "/".join(out)

    def danger(self, path: str, *, whole: bool = True) -> str | None:
        """Why removing ``path`` (a normalized absolute path, maybe a glob) is destructive: it is
        or can match ``/``, a top-level or system directory, a home directory, or everything in
        one of them. ``whole=False``: only ``/`` and the top-level system directories count
        (a non-recursive ``chmod``)."""
        comps = [c for c in path.split("/") if c]
        if not comps:
            return "/"
        if not whole:
            system = any(_match(s, comps[0]) for s in _SYSTEM)
            if len(comps) == 1 and system:
                return "a system directory"
            if len(comps) == 2 and system and _broad(comps[1]):
                return "everything in a system directory"
            if len(comps) == 3 and comps[:2] in (["usr", "bin"], ["usr", "sbin"], ["usr", "lib"]) \
                    and _broad(comps[2]):  # fmt: skip
                return "everything in a system directory"
            return None
        for i in range(len(comps), -1, -1):
            prefix, rest = comps[:i], comps[i:]
            if rest and not all(_broad(c) for c in rest):
                continue
            why = self._protected(prefix, contents=bool(rest))
            if why is not None:
                return f"everything in {why}" if rest else why
        return None

    def _protected(self, prefix: list[str], *, contents: bool) -> str | None:
        if not prefix:
            return "/"
        for home in self.homes:
            hc = [c for c in home.split("/") if c]
            if len(prefix) <= len(hc) and all(map(_match, hc, prefix)):
                return "a home directory" if len(prefix) == len(hc) else "a home's parent"
        if len(prefix) == 1:
            if not contents:
                return "a top-level directory"
            if tuple(prefix) in _SCRATCH and not _broad(prefix[0]):
                return None
            if any(_match(s, prefix[0]) for s in _SYSTEM):
                return "a system directory"
            return None
        if len(prefix) == 2:
            if any(_match(p, prefix[0]) for p in _HOME_PARENTS) or (
                _match("root", prefix[0]) and contents is False and prefix[1] == "*"
            ):
                return "a home directory"
            if tuple(prefix) in _SCRATCH and contents:
                return None
            if any(_match(s, prefix[0]) for s in _SYSTEM - {"root"}):
                return "a system directory"
        return None

    def is_device(self, word: Word, cwd: str | None) -> bool:
        for v in word.values:
            if v.startswith("/dev/") and "$" in v:
                return True  # /dev/$DISK
            p = self.resolve(v, cwd)
            if p is None or not p.startswith("/dev/"):
                continue
            if _DEVICE.match(p) and not re.match(r"^/dev/(null|zero|full|u?random|tty\w*|pts/.*|"
                                                 r"std(in|out|err)|fd/.*|shm/.*|ptmx|console|"
                                                 r"kmsg|log|net/.*|fuse|mqueue/.*|hugepages/.*)$",
                                                 p):  # fmt: skip
                return True
            if any(c in p for c in "*?[") and any(
                fnmatch.fnmatchcase(f"/dev/{s}", p) for s in _DEVICE_SAMPLES
            ):
                return True
        return False


def _clean(path: str) -> str:
    if not path:
        return path
    out = posixpath.normpath(path)
    return "/" + out.lstrip("/") if out.startswith("/") else out


# --- options -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Opts:
    short: Mapping[str, str]  # letter -> option name
    long: tuple[str, ...]  # long option names
    values: frozenset[str] = frozenset()  # names of options that take a value
    modes: bool = False  # chmod: `-rwx` is a mode, not options


def _o(short: str, long: str, values: str = "", modes: bool = False) -> _Opts:
    pairs: dict[str, str] = {}
    for p in short.split():
        letter, _, name = p.partition("=")
        pairs[letter] = name or letter
    return _Opts(pairs, tuple(long.split()), frozenset(values.split()), modes)


_RM = _o("r=recursive R=recursive f=force i=interactive I=interactive d=dir v=verbose",
         "recursive force interactive one-file-system no-preserve-root preserve-root dir "
         "verbose help version")  # fmt: skip
_CHMOD = _o("R=recursive c=changes f=silent v=verbose",
            "recursive changes silent quiet verbose no-preserve-root preserve-root reference "
            "help version", modes=True)  # fmt: skip
_CHOWN = _o("R=recursive c=changes f=silent v=verbose h H L P",
            "recursive changes silent quiet verbose dereference no-dereference from "
            "no-preserve-root preserve-root reference help version", "from")  # fmt: skip
_SETFACL = _o(
    "R=recursive b k n d m x M X L P",
    "recursive modify remove remove-all remove-default set set-file modify-file "
    "remove-file restore test no-mask mask default logical physical",
    "m x M X",
)
_CHATTR = _o("R=recursive V f v p", "")
_MV = _o("f i n u v b T t=target-directory S=suffix Z",
         "force interactive no-clobber target-directory no-target-directory backup suffix "
         "update verbose strip-trailing-slashes context exchange help version",
         "target-directory suffix")  # fmt: skip
_CP = _o("a b d f H i l L n p P r=recursive R=recursive s u v x T t=target-directory S=suffix",
         "archive backup force interactive link dereference no-clobber no-dereference preserve "
         "recursive symbolic-link update verbose target-directory no-target-directory suffix "
         "reflink sparse parents one-file-system", "target-directory suffix")  # fmt: skip
_RSYNC = _o("a r v z e=rsh n P u l L c h", "delete delete-before delete-during delete-delay "
            "delete-after delete-excluded del remove-source-files rsh archive recursive "
            "exclude include", "rsh exclude include")  # fmt: skip
_LN = _o(
    "s=symbolic f=force n=no-dereference T r=relative b v i L P t=target-directory S",
    "symbolic force no-dereference no-target-directory relative backup verbose "
    "interactive logical physical target-directory suffix",
    "target-directory suffix",
)
_SHRED = _o("f n=iterations s=size u=remove v x z", "force iterations random-source size remove "
            "verbose exact zero", "iterations size random-source")  # fmt: skip


def _parse(args: Sequence[Word], spec: _Opts) -> tuple[set[str], list[Word], bool]:
    """Options (by name; GNU order: anywhere before ``--``, long ones by unique prefix), the
    operands, and whether an unknown word might be options (``rm $OPTS /``)."""
    opts: set[str] = set()
    operands: list[Word] = []
    unknown = False
    ended = False
    i = 0
    while i < len(args):
        a = args[i]
        t = a.text
        i += 1
        if ended or not t.startswith("-") or t == "-":
            if not ended and a.dynamic and t[:1] in "$`" and not a.substituted:
                unknown = True
            operands.append(a)
            continue
        if t == "--":
            ended = True
            continue
        if t.startswith("--"):
            key, eq, _val = t[2:].partition("=")
            names = [o for o in spec.long if o == key] or [
                o for o in spec.long if o.startswith(key) and key
            ]
            opts.update(names or [key])  # an ambiguous prefix is an error: counted as each
            if names and names[0] in spec.values and not eq:
                i += 1
            continue
        if spec.modes and re.fullmatch(r"-[rwxXstugoa=+,0-7-]*", t):
            operands.append(a)  # `chmod -w file`: a mode
            continue
        letters = t[1:]
        for k, ch in enumerate(letters):
            name = spec.short.get(ch, ch)
            opts.add(name)
            if name in spec.values:
                if k == len(letters) - 1:
                    i += 1
                break
    return opts, operands, unknown


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
    """Record what ``cmd`` does to the files later commands may run or reach."""
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


# --- the policy --------------------------------------------------------------------------------


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
_MAX_SCRIPT_DEPTH = 4


@dataclass(frozen=True, slots=True)
class Policy:
    mode: Literal["deny-list", "allow-list"] = "deny-list"
    allow: tuple[Pattern, ...] = ()
    deny: tuple[Pattern, ...] = ()
    builtin: bool = True
    unparseable: Literal["refuse", "allow-with-audit"] = "refuse"

    @classmethod
    def from_patterns(
        cls,
        *,
        mode: Literal["deny-list", "allow-list"] = "deny-list",
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        builtin: bool = True,
        unparseable: Literal["refuse", "allow-with-audit"] = "refuse",
    ) -> Policy:
        return cls(
            mode=mode,
            allow=tuple(compile_pattern(p) for p in allow),
            deny=tuple(compile_pattern(p) for p in deny),
            builtin=builtin,
            unparseable=unparseable,
        )

    def describe(self) -> dict[str, object]:
        """The policy as recorded in the audit log at start-up (no secrets in it)."""
        return {
            "mode": self.mode,
            "allow": [p.source for p in self.allow],
            "deny": [p.source for p in self.deny],
            "builtin_deny": self.builtin,
            "builtin_rules": [r.id for r in BUILTIN_RULES] if self.builtin else [],
            "unparseable": self.unparseable,
        }

    def digest(self) -> str:
        blob = json.dumps(self.describe(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def check(
        self,
        command: str,
        cwd: str | None = None,
        home: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Verdict:
        """Decide about a whole command line run in ``cwd``. Never raises for any input string.

        ``cwd`` and ``cd DIR`` earlier in the line resolve relative paths (``cd / && rm -rf *``);
        ``home`` is the home directory, protected like ``~``. ``env``: the job's environment
        (isolation's ``env_allow`` plus the caller's ``env``); with it, ``"$PYTHON" -m pytest``
        is judged as what ``$PYTHON`` holds, and a variable in neither the line nor ``env`` is
        empty, as it is for the job. Without it, such a variable is unknown.
        """
        verdict, _ = self.check_state(command, ShellState.initial(cwd=cwd, home=home, env=env))
        return verdict

    def check_state(self, command: str, state: ShellState) -> tuple[Verdict, ShellState]:
        """``check`` from a known shell state; also returns the state after the line."""
        return self._check(command, state.copy(), 0)

    def _check(self, command: str, state: ShellState, depth: int) -> tuple[Verdict, ShellState]:
        analysis = analyse(command, state.scope)
        state.scope = analysis.scope
        if not analysis.commands and not analysis.problems and not analysis.bombs:
            return Verdict("allowed", "empty", "", "nothing to run"), state
        limit = next((p for p in analysis.problems if p.is_limit), None)
        if limit is not None:
            return _limit_verdict(limit), state
        env = _Env(_Paths(state.homes, state.effects), state.effects)
        for cmd in analysis.commands:
            if analysis.over_time():
                what = f"more than {MAX_CPU_S} s of work to check"
                return _limit_verdict(Problem("too-complex", what, cmd.source[:200])), state
            for pattern in self.deny:
                if pattern.matches(cmd):
                    return _refuse(f"deny:{pattern.source}", cmd.line, cmd), state
            if self.builtin:
                for rule in BUILTIN_RULES:
                    hit = rule.check(cmd, env)
                    if hit is not None:
                        return _refuse(rule.id, hit, cmd, rule.description), state
                found = self._scripts_run(cmd, env, state, depth)
                if found is not None:
                    return found, state
            _apply_effects(cmd, env)
        if self.builtin:
            bomb = _fork_bomb(analysis)
            if bomb is not None:
                return _refuse("builtin:fork-bomb", bomb, None, "a process that keeps "
                               "starting copies of itself"), state  # fmt: skip
        if self.mode == "allow-list":
            return self._allow_list(analysis), state
        if analysis.problems:
            return self._unverifiable(analysis.problems[0]), state
        return Verdict("allowed", "default:deny-list", "", "no deny rule matches"), state

    def _scripts_run(
        self, cmd: SimpleCommand, env: _Env, state: ShellState, depth: int
    ) -> Verdict | None:
        """A script written earlier in the line (``echo ... > x.sh``, ``cat > x.sh <<EOF``)
        and then run (``sh x.sh``, ``./x.sh``, ``. x.sh``): its text is checked too."""
        for label, path in _programs_run(cmd, env):
            text = env.effects.scripts.get(path)
            if text is None:
                continue
            first = text.lstrip().split("\n", 1)[0]
            if first.startswith("#!") and not any(s in first for s in ("sh", "bash", "zsh",
                                                                       "ksh")):  # fmt: skip
                continue  # another language: code, not checked (like `python x.py`)
            if depth >= _MAX_SCRIPT_DEPTH:
                return _refuse("builtin:fork-bomb", f"{label} (a script that runs itself)", cmd,
                               "a process that keeps starting copies of itself")  # fmt: skip
            inner = ShellState(Scope.initial(cwd=cmd.cwd, home=state.scope.home),
                               env.effects, state.homes)  # fmt: skip
            inner.scope.env_known = state.scope.env_known
            if state.scope.env_known:
                inner.scope.vars = {k: v for k, v in state.scope.vars.items()}
                inner.scope.positional = ()
            verdict, _ = self._check(text, inner, depth + 1)
            if not verdict.allowed:
                return replace(
                    verdict,
                    message=verdict.message.replace(
                        "Refused by", f"Refused (in {path}, written earlier in the line) by", 1
                    ),
                )
        return None

    def _unverifiable(self, p: Problem) -> Verdict:
        rule_id = f"unverifiable:{p.kind}"
        if self.unparseable == "refuse":
            return Verdict(
                "refused", rule_id, p.part[:200],
                f"Refused by rule {rule_id}: the command cannot be fully verified "
                f"({p.detail}: {p.part[:200]!r}). Nothing was run."
                " Write it without that construct (a literal command instead of a variable or"
                " $(...) as the command, a script file instead of a dynamic payload).",
            )  # fmt: skip
        return Verdict("allowed", rule_id, p.part[:200], "allowed (recorded in the audit log)",
                       audit_note=f"{p.detail}: {p.part[:200]}")  # fmt: skip

    def _allow_list(self, analysis: Analysis) -> Verdict:
        if analysis.problems:
            p = analysis.problems[0]
            return Verdict(
                "refused", f"unverifiable:{p.kind}", p.part[:200],
                f"Refused by rule unverifiable:{p.kind} (allow-list mode): the command cannot be "
                f"fully verified ({p.detail}: {p.part[:200]!r}). Use plain commands that the "
                "allow rules cover.",
            )  # fmt: skip
        for cmd in analysis.commands:
            rule = next((p for p in self.allow if p.matches(cmd)), None)
            if rule is None:
                return Verdict(
                    "refused", "allow-list:no-match", cmd.line[:200],
                    f"Refused by rule allow-list:no-match: {cmd.line[:200]!r} matches no allow "
                    "rule (allow-list mode; "
                    f"allowed: {', '.join(p.source for p in self.allow)}).",
                )  # fmt: skip
            flag = inline_code(cmd)
            if flag is not None and not _names_flag(rule, flag):
                return Verdict(
                    "refused", "allow-list:inline-code", cmd.line[:200],
                    f"Refused by rule allow-list:inline-code: {cmd.name} {flag} runs inline code "
                    "that no rule can verify; the "
                    f"allow rule {rule.source!r} does not name {flag}. Put the code in a file, or "
                    f"add an allow rule such as '{cmd.name} {flag} *'.",
                )  # fmt: skip
        return Verdict("allowed", "allow-list:match", "", "every command matches an allow rule")


def _limit_verdict(p: Problem) -> Verdict:
    rule = f"limit:{p.kind}"
    return Verdict(
        "refused", rule, p.part[:200],
        f"Refused by rule {rule}: the command is too big or too complex to check ({p.detail}). "
        f"Nothing was run. Put long or generated command lines in a script file and run that "
        f"(the limit is {MAX_COMMAND_CHARS} characters, with bounded nesting and size).",
    )  # fmt: skip


def _fork_bomb(analysis: Analysis) -> str | None:
    """A function that reaches itself through a call that forks (a pipe, ``&``, a subshell,
    ``$(...)``, ``<(...)``), an endless loop that starts processes in the background, a
    payload that runs itself."""
    if analysis.bombs:
        return analysis.bombs[0]
    graph = analysis.functions
    checked = 0
    for name, calls in graph.items():
        for callee, forked in calls:
            if not forked or callee not in graph:
                continue
            checked += 1
            if checked > 200:
                return None
            seen = {callee}
            todo = [callee]
            while todo:
                cur = todo.pop()
                if cur == name:
                    return f"{name}() {{ ... {callee} ... }} (calls itself in a new process)"
                for nxt, _f in graph.get(cur, ()):
                    if nxt in graph and nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
    return None


def _names_flag(pattern: Pattern, flag: str) -> bool:
    src = pattern.source[3:] if pattern.source.startswith("re:") else pattern.source
    return flag in src.split() or (pattern.source.startswith("re:") and flag in src)


def _refuse(rule: str, hit: str, cmd: SimpleCommand | None, why: str = "") -> Verdict:
    """A refusal naming the rule, the simple command as written, and what in it matched."""
    where = f" (inside {' > '.join(cmd.via)})" if cmd is not None and cmd.via else ""
    matched = (cmd.source if cmd is not None else hit)[:200]
    what = f" ({why})" if why else ""
    detail = f" [{hit[:200]}]" if cmd is not None and hit and hit != matched else ""
    return Verdict(
        "refused",
        rule,
        matched,
        f"Refused by policy rule {rule}{what}: {matched!r}{detail}{where}. Nothing was run. "
        "If this is intended, run a narrower command (for example a relative path inside the "
        "project), or ask the user to change the server's policy settings.",
    )


# --- input typed into a shell ------------------------------------------------------------------

#: Unfinished input (an open quote, heredoc, ``if`` ... ) kept per job; more is refused.
_PENDING_MAX = 64 * 1024


def reads_commands_from_stdin(command: str, env: Mapping[str, str] | None = None) -> bool:
    """True when the job runs something that takes commands from its stdin (a shell by any name
    without a program: ``bash``, ``sh -i``, ``bash /dev/stdin``, ``sh /proc/self/fd/0``,
    ``script``, ``su``, ``sudo -s``, ``xargs sh -c``, ...): what is typed into it with
    ``interact`` is then a command line, checked like one. A command line the analysis cannot
    fully understand counts as one (fail closed)."""
    analysis = analyse(command, Scope.initial(env=dict(env) if env is not None else None))
    return bool(analysis.stdin_readers) or bool(analysis.problems)


def shell_input_for(
    policy: Policy,
    command: str,
    *,
    cwd: str | None,
    home: str | None,
    env: Mapping[str, str] | None,
    pty: bool,
) -> ShellInput | None:
    """The ``ShellInput`` that checks what is typed into a job running ``command``, or None
    when nothing in it reads commands from stdin. It starts in the cwd the shell starts in
    (``cd / && bash``)."""
    scope = Scope.initial(cwd=cwd, home=home, env=dict(env) if env is not None else None)
    analysis = analyse(command, scope)
    if not analysis.stdin_readers and not analysis.problems:
        return None
    return ShellInput(policy, cwd=analysis.reader_cwd or cwd, home=home, env=env, pty=pty)


#: On a terminal these edit or complete the line (tab included).
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
#: History expansion: `!!`, `!-1`, `!rm`, `!?x?`, `!#` (not `! cmd`, `!=`, `!(`, `$!`,
#: `${!x}`), and `^old^new` at the start of a line.
_HISTORY = re.compile(r"(?<![\\${])![^\s=(\"]|^\s*\^[^^\n]*\^", re.M)
#: `fc` (and ksh/zsh's `r`) re-run earlier input.
_FC = re.compile(r"(^|[;&|({]\s*|\b(then|do|else)\s+)(fc|r)(\s|;|$)", re.M)
_SINGLE_QUOTED = re.compile(r"'[^'\n]*'")


class ShellInput:
    """What has been typed into one shell job, and what the shell holds unfinished.

    The shell runs input when a line (or a multi-line construct) is complete. Each ``interact``
    input is checked with what came before as the shell will read it: the unfinished text plus
    the new complete lines (``rm -rf \\`` then ``/`` is ``rm -rf /``), checked at once when the
    result is complete and, while it is not, completed with the closers it lacks (a quote, a
    ``fi``, the heredoc's end) so what it will run once closed is checked now. It is also
    checked as if the shell were at a fresh prompt (new text alone, each line alone), in case
    the shell's state is not what it seems. Variables, ``cd`` and files written by earlier
    lines are kept (``x=/`` then ``rm -rf $x``).

    Fail closed: when what was typed cannot be understood as complete commands or as a
    recognized unfinished construct, history expansion (``!!``, ``^a^b``, ``fc``), editing keys
    on a terminal, or too much unfinished input, the input is refused and says so.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        cwd: str | None = None,
        home: str | None = None,
        env: Mapping[str, str] | None = None,
        pty: bool = False,
    ) -> None:
        self.policy = policy
        self.state = ShellState.initial(cwd=cwd, home=home, env=env)
        self.pty = pty
        self.pending = ""  # complete lines the shell holds as an unfinished construct
        self.partial = ""  # text after the last newline: not yet a line
        self._plan: tuple[str, bool, str, str, ShellState] | None = None

    def check(self, text: str, *, eof: bool, keys: Sequence[bytes] = ()) -> Verdict:
        self._plan = None
        typed, eof = self._typed(text, keys, eof)
        if isinstance(typed, Verdict):
            return typed
        stream = self.partial + typed
        if eof:
            complete, rest = stream, ""
        else:
            head, nl, rest = stream.rpartition("\n")
            complete = head + nl
        if len(rest) > _PENDING_MAX or len(self.pending) + len(complete) > _PENDING_MAX:
            return _shell_refusal("shell-input:too-long", rest[:80] or complete[:80],
                                  f"more than {_PENDING_MAX} characters of unfinished input; "
                                  "send complete commands")  # fmt: skip
        if not complete:
            self._plan = (text, eof, self.pending, rest, self.state)
            return Verdict("allowed", "shell-input:incomplete-line", "", "no complete line yet")
        unquoted = _SINGLE_QUOTED.sub("''", complete)
        if (m := _HISTORY.search(unquoted)) is not None or (m := _FC.search(unquoted)):
            return _shell_refusal("shell-input:history-expansion", m.group(0).strip(),
                                  "history expansion and fc re-run earlier input in forms "
                                  "that cannot be checked; type the command itself")  # fmt: skip
        buffer = self.pending + complete
        verdict, new_state, done = self._judge(buffer, eof, self.state, strict=True)
        if not verdict.allowed:
            return verdict
        if self.pending:
            # what if the shell is at a fresh prompt after all: the new text alone, each line
            for chunk in (complete, *complete.splitlines(keepends=True)):
                if chunk.strip():
                    alone, _, _ = self._judge(chunk, eof, self.state, strict=False)
                    if not alone.allowed:
                        return alone
        self._plan = (text, eof, "" if done else buffer, rest, new_state if done else self.state)
        return verdict

    def accept(self, text: str, *, eof: bool, keys: Sequence[bytes] = ()) -> None:
        """The input was written to the job: the shell's state moves on."""
        plan = self._plan
        if plan is None or plan[0] != text or plan[1] != eof:
            if self.check(text, eof=eof, keys=keys).allowed is False or self._plan is None:
                return
            plan = self._plan
        _t, _e, self.pending, self.partial, self.state = plan
        self._plan = None

    def _typed(self, text: str, keys: Sequence[bytes], eof: bool) -> tuple[str | Verdict, bool]:
        """The text the shell receives, with keys as the bytes they send."""
        out = text
        for key in keys:
            if key in (b"\r", b"\n"):
                out += "\n"
            elif key == b"\x04" and not self.pty:
                eof = True
            elif key in (b"\x03", b"\x1c", b"\x1a", b"\x04"):
                # signals (or ends the input of) the foreground program; at a prompt the shell
                # drops the unfinished line. Nothing runs: the state kept is the worst case.
                continue
            else:
                return _shell_refusal("shell-input:editing-keys", repr(key)[2:-1],
                                      "keys other than Enter change what the shell runs "
                                      "(history, completion, line editing)"), eof  # fmt: skip
        if self.pty:
            out = out.replace("\r\n", "\n").replace("\r", "\n")
            bad = _CONTROL.search(out)
            if bad is not None:
                return _shell_refusal("shell-input:editing-keys", repr(bad.group(0))[1:-1],
                                      "on a terminal, control characters and tabs edit the line "
                                      "or complete it; send plain text"), eof  # fmt: skip
        elif "\0" in out:
            return _shell_refusal("shell-input:editing-keys", "\\x00", "a NUL byte"), eof
        return out, eof

    def _judge(
        self, text: str, eof: bool, state: ShellState, *, strict: bool
    ) -> tuple[Verdict, ShellState, bool]:
        """(verdict, state after, complete?) of ``text`` typed into a shell in ``state``.

        ``strict``: this is what the shell holds (refuse what cannot be understood); else a
        what-if (the shell at a fresh prompt), where text bash would reject runs nothing."""
        verdict, after = self.policy.check_state(text, state)
        stack, wants_more = _open_constructs(text)
        unfinished = bool(stack) or wants_more
        if verdict.rule != "unverifiable:parse-error":
            if unfinished and strict and verdict.allowed:
                # tree-sitter sees complete commands where bash would wait for more: whatever
                # comes next, the two disagree about what it means
                return _unknown_state(text), state, False
            return verdict, after, True
        if not unfinished:  # a syntax error: the shell rejects the whole construct
            if strict:
                return verdict, state, True
            return Verdict("allowed", "shell-input:alone", "", "not valid alone"), state, True
        if not strict:  # at a fresh prompt, an unfinished construct runs nothing yet
            return Verdict("allowed", "shell-input:alone", "", "unfinished alone"), state, True
        for completed in _completions(text):
            v, _after = self.policy.check_state(completed, state)
            if v.rule == "unverifiable:parse-error":
                continue
            if not v.allowed:
                return v, state, False
            done = eof  # at the end of input the shell drops the unfinished construct
            return (Verdict("allowed", "shell-input:unfinished", text[-200:],
                            "allowed: an unfinished construct (checked as completed)",
                            audit_note=f"unfinished: {text[-200:]}"), state, done)  # fmt: skip
        if strict and not eof:
            return _unknown_state(text), state, False
        return Verdict("allowed", "shell-input:alone", "", "not valid alone"), state, True


def _unknown_state(text: str) -> Verdict:
    return _shell_refusal(
        "shell-input:unknown-state",
        text[-120:],
        "what was typed into this shell cannot be understood as complete commands or as an "
        "unfinished quote, heredoc or compound command, so what the shell runs next cannot be "
        "checked. Send whole commands in one input, or end this shell (eof or kill) and start "
        "a new one",
    )


def _shell_refusal(rule: str, matched: str, why: str) -> Verdict:
    return Verdict(
        "refused", rule, matched[:200],
        f"Refused by rule {rule}: {why}. Nothing was written.",
    )  # fmt: skip


_KEYWORD_OPEN = {"if": "if", "case": "case", "for": "loop", "while": "loop", "until": "loop",
                 "select": "loop", "{": "{", "[[": "[["}  # fmt: skip
_KEYWORD_CLOSE = {"fi": "if", "esac": "case", "done": "loop", "}": "{", "]]": "[["}
_CMD_START = frozenset({"then", "do", "else", "elif", "if", "while", "until", "!", "time", "{"})


def _open_constructs(text: str) -> tuple[list[str], bool]:
    """A small bash lexer: the constructs still open at the end of ``text`` (innermost last:
    quotes, ``$(``, ``(``, ``${``, ``if``/``case``/loops, ``{``, heredocs as ``<<DELIM``), and
    whether the input ends asking for more (a trailing backslash, ``|``, ``&&``, ``||``)."""
    stack: list[str] = []
    pending: list[str] = []  # heredoc delimiters that start at the next newline
    i, n = 0, len(text)
    cmd_pos = True
    last_op = ""
    while i < n:
        top = stack[-1] if stack else ""
        ch = text[i]
        if top.startswith("<<"):
            j = text.find("\n", i)
            line = text[i:] if j < 0 else text[i:j]
            delim = top[2:]
            if (line.lstrip("\t") if delim.startswith("-") else line) == delim.lstrip("-"):
                stack.pop()
            i = n if j < 0 else j + 1
            continue
        if top == "'":
            i = i + 1
            if ch == "'":
                stack.pop()
            continue
        if top in ('"', "$'"):
            if ch == "\\":
                i += 2
                continue
            if (top == "$'" and ch == "'") or (top == '"' and ch == '"'):
                stack.pop()
                i += 1
                continue
            if top == '"':
                if text.startswith("$(", i):
                    stack.append("$(")
                    i += 2
                    cmd_pos = True
                    continue
                if text.startswith("${", i):
                    stack.append("${")
                    i += 2
                    continue
                if ch == "`":
                    stack.append("`")
            i += 1
            continue
        if top == "${":
            if ch == "}":
                stack.pop()
            elif ch in "'\"":
                stack.append(ch)
            elif ch == "\\":
                i += 1
            i += 1
            continue
        # code
        if ch == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                last_op = "\\"
            i += 2
            continue
        if ch in " \t":
            i += 1
            continue
        if ch == "\n":
            if pending:
                stack.extend(f"<<{d}" for d in reversed(pending))
                pending = []
            cmd_pos = True
            if last_op not in ("|", "&&", "||", "\\", "|&"):
                last_op = ""
            i += 1
            continue
        if ch == "#" and (i == 0 or text[i - 1] in " \t\n;&|()"):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        last_op = ""
        if ch == "'":
            stack.append("'")
        elif text.startswith("$'", i):
            stack.append("$'")
            i += 1
        elif ch == '"':
            stack.append('"')
        elif ch == "`":
            if top == "`":
                stack.pop()
            else:
                stack.append("`")
        elif text.startswith("$((", i):
            stack.append("$((")
            i += 2
        elif text.startswith("$(", i):
            stack.append("$(")
            i += 1
            cmd_pos = True
        elif text.startswith("${", i):
            stack.append("${")
            i += 1
        elif text.startswith("))", i) and top == "$((":
            stack.pop()
            i += 1
        elif ch == "(":
            stack.append("(")
            cmd_pos = True
        elif ch == ")":
            if top in ("(", "$("):
                stack.pop()
        elif text.startswith("<<", i) and not text.startswith("<<<", i):
            m = re.match(r"<<(-?)\s*(['\"]?)([^\s'\";&|<>()]+)\2", text[i:])
            if m is not None:
                pending.append(("-" if m.group(1) else "") + m.group(3))
                i += m.end()
                continue
        elif ch in ";&|":
            op = text[i : i + 2] if text[i : i + 2] in ("&&", "||", ";;", "|&") else ch
            last_op = op if op in ("|", "&&", "||", "|&") else ""
            cmd_pos = True
            i += len(op)
            continue
        else:
            m = re.match(r"[^\s;&|()<>'\"`$\\]+", text[i:])
            if m is not None:
                word = m.group(0)
                if cmd_pos and word in _KEYWORD_OPEN:
                    stack.append(_KEYWORD_OPEN[word])
                elif (cmd_pos and _KEYWORD_CLOSE.get(word) == top) or (word, top) == ("]]", "[["):
                    stack.pop()
                cmd_pos = word in _CMD_START
                i += m.end()
                continue
        i += 1
    if pending:
        stack.extend(f"<<{d}" for d in reversed(pending))
    return stack, last_op in ("|", "&&", "||", "\\", "|&")


_CLOSERS = {
    "'": ["'"], '"': ['"'], "$'": ["'"], "`": ["`", ":`"], "(": [")", "\n:\n)"],
    "$(": [")", "\n:\n)"], "$((": ["))", "0))"], "${": ["}"], "{": ["\n}", "\n:\n}"],
    "[[": [" ]]", " x ]]"],
    "if": ["\nfi", "\n:\nfi", "\nthen :\nfi", "; then :; fi"],
    "loop": ["\ndone", "\n:\ndone", "\ndo :\ndone", "; do :; done"],
    "case": ["\nesac", "\n;;\nesac", " in *) :;; esac", "\n*) :;;\nesac"],
}  # fmt: skip


def _completions(text: str) -> list[str]:
    """``text`` completed with what the lexer says it lacks, in a few variants (the right
    ``fi`` depends on whether ``then`` came yet); tree-sitter decides which one parses."""
    stack, wants_more = _open_constructs(text)
    base = text
    if base.endswith("\\\n"):
        base = base[:-2] + "\n"
    if wants_more and not base.rstrip().endswith("\\"):
        base = base.rstrip("\n") + " :\n"
    if not stack:
        return [base] if base != text else []
    out: list[str] = []
    for variant in range(4):
        closing = ""
        for item in reversed(stack):
            if item.startswith("<<"):
                closing += ("" if (base + closing).endswith("\n") else "\n") + item[2:].lstrip(
                    "-") + "\n"  # fmt: skip
                continue
            options = _CLOSERS.get(item, [""])
            closing += options[min(variant, len(options) - 1)]
        candidate = base + closing + "\n"
        if candidate not in out:
            out.append(candidate)
    return out
