"""Paths and options as the policy rules see them: which paths are the system, a home or
scratch, what a path expands to (``_Paths``), what earlier commands of the line did to the
file system (``Effects``), and GNU-style option tables (``rm -rf``, ``--recu``)."""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .shellparse import (
    Word,
)

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
