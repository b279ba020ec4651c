"""Checks of the arguments callers pass to the job operations: limits, and pure functions that
raise ``InvalidRequest`` with a message saying what was wrong and what to pass instead.

Import rule: only ``errors`` from the package (a leaf below ``app`` and its helper modules); no I/O
beyond looking at the working directory a caller names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import InvalidRequest

MAX_AFTER = 100
MAX_KEYS = 100
MAX_LABELS = 64
MAX_PRIORITY = 1000
#: Audit event ids are SQLite integers (64-bit).
MAX_EVENT_ID = 2**63 - 1
#: Linux's limit on one argument or environment string (MAX_ARG_STRLEN, with its NUL): the
#: command is one argument of the shell, and each variable one ``NAME=value`` string.
MAX_ARG_BYTES = 128 * 1024
#: ``wait`` returns before the 60 s request timeout of common clients.
MAX_WAIT_S = 50.0
_LABEL = re.compile(r"^[\w.:/@+-]{1,64}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_execute(
    command: str,
    cwd: str | None,
    env: Mapping[str, str],
    timeouts: Mapping[str, float | None],
    labels: Sequence[str],
    *,
    pty: bool,
    rows: int | None,
    cols: int | None,
    priority: int,
    after: Sequence[str],
) -> Path:
    """Everything ``execute`` can check without the database; returns the working directory.
    ``timeouts``: the argument name of each timeout and its value."""
    check_command(command)
    workdir = check_workdir(cwd)
    check_env(env)
    for arg, seconds in timeouts.items():
        if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
            raise InvalidRequest(
                f"{arg} must be greater than 0, a finite number of seconds (or omitted for "
                f"no {arg.removesuffix('_s').replace('_', ' ')}); got {seconds!r}."
            )
    check_labels(labels)
    check_terminal(pty, rows, cols)
    if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidRequest(f"priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}.")
    if len(after) > MAX_AFTER:
        raise InvalidRequest(f"after can name at most {MAX_AFTER} jobs.")
    return workdir


def check_command(command: str) -> None:
    if not command.strip():
        raise InvalidRequest(
            "command is empty: pass a shell command line, for example 'make test'."
        )
    if "\0" in command:
        raise InvalidRequest("command contains a NUL character, which no shell accepts.")
    size = utf8_size("command", command)
    if size >= MAX_ARG_BYTES:
        raise InvalidRequest(
            f"command is {size} bytes; Linux passes at most {MAX_ARG_BYTES - 1} bytes as one "
            "argument to the shell. Write it to a script file and run that file."
        )


def check_env(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not _ENV_KEY.match(key) or "\0" in value:
            raise InvalidRequest(
                f"env variable {shown(key)} is not valid: names are letters, digits and _ "
                "(not starting with a digit), and values cannot contain NUL."
            )
        if utf8_size(f"env variable {shown(key)}", f"{key}={value}") >= MAX_ARG_BYTES:
            raise InvalidRequest(
                f"env variable {shown(key)} is too long: Linux takes at most "
                f"{MAX_ARG_BYTES - 1} bytes for NAME=value. Pass big data in a file."
            )


def check_labels(labels: Sequence[str]) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(f"labels can hold at most {MAX_LABELS} labels.")
    for label in labels:
        if not _LABEL.match(label):
            raise InvalidRequest(
                f"labels: {shown(label)} is not a valid label: use 1-64 letters, digits or "
                ". _ : / @ + -"
            )


def check_terminal(pty: bool, rows: int | None, cols: int | None) -> None:
    if not pty and (rows is not None or cols is not None):
        raise InvalidRequest("rows and cols set a terminal's size: they need pty=true.")
    if rows is not None and not 2 <= rows <= 1000:
        raise InvalidRequest("rows must be between 2 and 1000.")
    if cols is not None and not 10 <= cols <= 1000:
        raise InvalidRequest("cols must be between 10 and 1000.")


def check_wait(timeout_s: float) -> None:
    if not (math.isfinite(timeout_s) and timeout_s >= 0):
        raise InvalidRequest(
            f"timeout_s must be a finite number of seconds, 0 or more (one call waits at most "
            f"{MAX_WAIT_S:.0f} s); got {timeout_s!r}."
        )


def check_workdir(cwd: str | None) -> Path:
    """The job's working directory: ``cwd`` (``~`` expanded, relative to the server's), or the
    server's own. It must be an existing directory."""
    here = Path.cwd()
    if not cwd:
        return here
    hint = f"pass an existing directory, or omit cwd to run in {str(here)!r}."
    if "\0" in cwd:
        raise InvalidRequest(f"cwd contains a NUL character, which no path can: {hint}")
    utf8("cwd", cwd)
    try:
        workdir = here / Path(cwd).expanduser()
        found = workdir.is_dir()
    except (RuntimeError, OSError) as exc:  # ~nosuchuser; a name too long
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidRequest(f"cwd {shown(cwd)} cannot be used ({reason}): {hint}") from None
    if not found:
        raise InvalidRequest(
            f"cwd {shown(str(workdir), 200)} does not exist or is not a directory: {hint}"
        )
    return workdir


def check_host(host: str | None, here: str, cwd: str | None, pty: bool) -> bool:
    """Whether ``execute(host=...)`` queues the job for another machine (False: it runs here).
    That machine's directories cannot be checked here: ``cwd`` must be given, absolute."""
    if host is None or host == here:
        return False
    if not host.strip() or len(host) > 255 or "\0" in host:
        raise InvalidRequest(
            f"host {shown(host)} is not a host name: give the `host` setting of a server "
            "(`status` shows each job's host)."
        )
    if not cwd or not cwd.startswith("/") or "\0" in cwd:
        raise InvalidRequest(
            f"cwd: a job for host {shown(host)} needs an absolute directory on that machine "
            "(it cannot be checked from here; the server there fails the job if it is missing)."
        )
    utf8("cwd", cwd)
    if pty:
        raise InvalidRequest(
            "pty: a terminal job runs where it is submitted; start it from a server on "
            f"host {shown(host)}, or without pty."
        )
    return True


def shown(value: str, limit: int = 60) -> str:
    """A value the caller passed, for an error message: quoted, escaped, and cut if long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} characters)"


def utf8(name: str, text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{name} contains {text[exc.start]!r} at character {exc.start}, a lone surrogate, "
            "which is not Unicode text: pass valid UTF-8."
        ) from None


def utf8_size(name: str, text: str) -> int:
    return len(text) if text.isascii() else len(utf8(name, text))
