"""How the command line shows things to people, with ``rich``.

On a terminal: colors, aligned tables, local times relative to now, long commands cut to the
width. Piped: the same tables without colors or lines, full ids, UTC times in ISO 8601, nothing
cut, no trailing spaces. ``NO_COLOR`` and ``FORCE_COLOR`` are honoured (rich reads them).

Import rule: presentation only; at run time ``jobs`` and ``models`` alone from the package (the
store's records are only named in annotations); it never opens the database.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .dburl import describe
from .jobs import JobStatus, Stream
from .models import duration

if TYPE_CHECKING:
    from rich.console import RenderableType

    from .jobs import Chunk, Job
    from .models import JobView
    from .store import Stats

STATUS_STYLE = {
    JobStatus.QUEUED: "dim",
    JobStatus.RUNNING: "cyan",
    JobStatus.COMPLETED: "green",
    JobStatus.FAILED: "bold red",
    JobStatus.KILLED: "yellow",
    JobStatus.TIMED_OUT: "red",
}


class Report:
    """One output file (stdout) and the style that fits it."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self.console = Console(file=file, highlight=False)
        self.tty = self.console.is_terminal
        if not self.tty:
            self.console = Console(
                file=file, highlight=False, no_color=True, width=1_000_000, soft_wrap=True
            )

    def print(self, *items: RenderableType) -> None:
        if self.tty:
            self.console.print(*items)
            return
        with self.console.capture() as captured:
            self.console.print(*items)
        lines = captured.get().split("\n")
        self.file.write("\n".join(line.rstrip() for line in lines))
        self.file.flush()

    # --- pieces -------------------------------------------------------------------------------

    def when(self, at: datetime | None, now: datetime, *, relative_only: bool = False) -> str:
        if at is None:
            return "-"
        if not self.tty:
            return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        rel = relative(at, now)
        if relative_only:
            return rel
        return f"{at.astimezone():%Y-%m-%d %H:%M:%S} ({rel})"

    def status(self, status: JobStatus) -> Text:
        return Text(str(status), style=STATUS_STYLE[status] if self.tty else "")

    def job_id(self, job_id: str) -> str:
        return job_id[:8] if self.tty else job_id

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str | Text]]) -> Table:
        """Columns as wide as their widest cell; only the last one (a command, a reason) is cut
        with an ellipsis when the terminal is too narrow."""
        table = Table(
            box=box.SIMPLE_HEAD if self.tty else None,
            show_edge=False,
            pad_edge=False,
            padding=(0, 1),
            collapse_padding=True,
            header_style="bold" if self.tty else "",
        )
        widths = [
            max([len(name), *(cell_len(row[i]) for row in rows)]) for i, name in enumerate(columns)
        ]
        # The last column gets what is left of the line (rich would squeeze the others first).
        left = self.console.width - sum(widths[:-1]) - 2 * (len(columns) - 1)
        for i, name in enumerate(columns):
            last = i == len(columns) - 1
            table.add_column(
                name,
                no_wrap=True,
                overflow="ellipsis" if last else "ignore",
                min_width=None if last else widths[i],
                max_width=max(8, left) if last and self.tty else None,
            )
        for row in rows:
            table.add_row(*row)
        return table

    # --- views --------------------------------------------------------------------------------

    def jobs(self, jobs: Sequence[Job], now: datetime) -> None:
        if not jobs:
            self.file.write("No jobs match.\n" if self.tty else "")
            return
        rows = [
            (
                self.job_id(job.id),
                self.status(job.status),
                ended_how(job),
                self.when(job.started_at or job.created_at, now, relative_only=True),
                human_duration(duration(job, now)),
                one_line(job.command),
            )
            for job in jobs
        ]
        self.print(self.table(("ID", "STATUS", "EXIT", "STARTED", "DURATION", "COMMAND"), rows))

    def show(self, view: JobView, tail: Sequence[Chunk], lines: int, now: datetime) -> None:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold" if self.tty else "")
        grid.add_column()
        end = ended_how_view(view)
        head = Text.assemble(self.status(view.status), f"  {end}" if end != "-" else "")
        rows: list[tuple[str, str | Text]] = [
            ("job", view.id),
            ("status", head),
            ("command", view.command),
            ("cwd", view.cwd),
            ("labels", ", ".join(view.labels) or "-"),
            ("created", self.when(view.created_at, now)),
            ("started", self.when(view.started_at, now)),
            ("ended", self.when(view.ended_at, now)),
            ("duration", human_duration(view.duration_s)),
        ]
        if view.reason:
            rows.append(("reason", view.reason))
        if view.timeout_s is not None:
            rows.append(("timeout", human_duration(view.timeout_s)))
        rows.append(("pid", f"{view.pid or '-'}  (server {view.owner or '-'})"))
        for name, st in (("stdout", view.stdout), ("stderr", view.stderr)):
            extra = f", {human_bytes(st.dropped)} dropped by the output limit" if st.dropped else ""
            rows.append((name, f"{human_bytes(st.written)}{extra}"))
        if view.env_keys:
            rows.append(("env", ", ".join(view.env_keys) + "  (values not shown)"))
        for name, value in rows:
            grid.add_row(name, value)
        events = self.table(
            ("AT", "STATUS", "REASON"),
            [
                (self.when(t.at, now), self.status(t.status), t.reason or "")
                for t in view.transitions
            ],
        )
        title = Text(f"\nLast {lines} lines of output", style="bold" if self.tty else "")
        self.print(grid, Text(""), events, title)
        self.print(output_text(tail, self.tty))

    def stats(self, stats: Stats, db_path: Path | str, now: datetime) -> None:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold" if self.tty else "")
        grid.add_column(justify="right")
        grid.add_column()
        span = ""
        if stats.jobs:
            first, last = (self.when(t, now) for t in (stats.first_created, stats.last_created))
            span = f"first {first}, last {last}"
        grid.add_row("jobs", str(stats.jobs), span)
        for status, count in stats.by_status:
            grid.add_row(
                Text(f"  {status}", style=STATUS_STYLE[status] if self.tty else ""), str(count), ""
            )
        grid.add_row("output written", human_bytes(stats.written_bytes), "")
        grid.add_row("output stored", human_bytes(stats.stored_bytes), "")
        grid.add_row("output dropped", human_bytes(stats.dropped_bytes), "by the per-job limit")
        if isinstance(db_path, str):  # PostgreSQL: the size it reports (URL without password)
            on_disk = stats.page_count * stats.page_size
            where = describe(db_path)
        else:
            on_disk = sum(p.stat().st_size for p in db_files(db_path))
            where = f"{db_path} (with its -wal file)"
        grid.add_row("database", human_bytes(on_disk), where)
        free = stats.free_pages * stats.page_size
        grid.add_row(
            "free pages",
            human_bytes(free),
            "`db vacuum` gives them back to the disk" if free else "",
        )
        rows = [
            (
                self.job_id(job.id),
                self.status(job.status),
                human_duration(duration(job, now)),
                self.when(job.started_at, now, relative_only=True),
                one_line(job.command),
            )
            for job in stats.longest
        ]
        table = self.table(("ID", "STATUS", "DURATION", "STARTED", "COMMAND"), rows)
        longest = Text("\nLongest jobs", style="bold" if self.tty else "")
        self.print(grid, longest, table)


# --- pure helpers ------------------------------------------------------------------------------


def cell_len(cell: str | Text) -> int:
    return (cell if isinstance(cell, Text) else Text(cell)).cell_len


def db_files(db_path: Path) -> list[Path]:
    files = [db_path, db_path.with_name(db_path.name + "-wal")]
    return [p for p in files if p.exists()]


def output_text(chunks: Iterable[Chunk], styled: bool) -> Text:
    """Output as text for a terminal: UTF-8 (split characters joined), ANSI colors kept and
    other escape sequences dropped, stderr in red."""
    text = Text()
    decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in Stream}
    for ch in chunks:
        part = decoders[ch.stream].decode(ch.data)
        if styled:
            piece = Text.from_ansi(part)
            if ch.stream is Stream.STDERR:
                piece.stylize("red")
            text.append_text(piece)
        else:
            text.append(part)
    for dec in decoders.values():
        text.append(dec.decode(b"", final=True))
    text.rstrip()
    return text


def one_line(command: str) -> str:
    return " ".join(command.split())


def ended_how(job: Job) -> str:
    if job.exit_code is not None:
        return str(job.exit_code)
    return job.signal or "-"


def ended_how_view(view: JobView) -> str:
    if view.exit_code is not None:
        return f"exit {view.exit_code}"
    return view.signal or "-"


def relative(at: datetime, now: datetime) -> str:
    seconds = (now - at).total_seconds()
    if seconds < 0:
        return "now"
    if seconds < 5:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            if unit == "d" and seconds >= 7 * 86400:
                return f"{at.astimezone():%Y-%m-%d}"
            return f"{int(seconds // size)}{unit} ago"
    return "just now"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
