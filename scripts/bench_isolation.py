"""Per-job start cost of each isolation mode (README, "Cost per job start").

Spawns ``sh -c 'exit 0'`` N times through the argv the server builds for each mode, in a
temporary cwd, with the server's state outside the temp directories (so Landlock hides it as
by default); prints the median wall time and the CPU (user + system of the children) per start.
Modes this machine cannot provide are reported and skipped.

    scripts/bench-isolation [N] [MODE[:nocg] ...]      (default: 200, every mode)
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcp_background_job.config import Settings
from mcp_background_job.errors import IsolationError
from mcp_background_job.isolation import detect

MODES = ["none", "rlimits", "rlimits:nocg", "landlock", "landlock:nocg", "bwrap", "bwrap:nocg"]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    specs = sys.argv[2:] or MODES
    state = Path.home() / ".local" / "state" / f"mcp-bj-bench-{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory(prefix="mcp-bj-bench-") as work:
            for spec in specs:
                mode, _, flag = spec.partition(":")
                cgroup = "off" if flag == "nocg" else "auto"
                try:
                    iso = detect(
                        Settings(db=state / "jobs.db", isolation=mode, isolation_cgroup=cgroup)
                    )
                except IsolationError as exc:
                    print(f"{spec:14s} not available: {exc}")
                    continue
                walls = []
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                for i in range(n):
                    job = f"bench{os.getpid() % 100000:05d}{i:05d}"[:12]
                    start = time.perf_counter()
                    argv = iso.argv("/bin/sh", "exit 0", work, job)
                    subprocess.run(argv, cwd=work, check=True, stdin=subprocess.DEVNULL)
                    walls.append(time.perf_counter() - start)
                    if iso.cgroups is not None:
                        iso.cgroups.remove(job)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                cg = f"v{iso.cgroups.version}" if iso.cgroups else "no"
                print(
                    f"{spec:14s} -> {iso.mode:8s} cgroup={cg:3s} "
                    f"wall p50 {statistics.median(walls) * 1e3:6.2f} ms  "
                    f"cpu {cpu / n * 1e3:6.2f} ms/start"
                )
    finally:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
