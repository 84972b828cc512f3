"""Resident memory of a `bacalhau serve` holding --jobs finished jobs (target: < 300 MB with 100,000), against
the same serve with an empty store, in the same run.

    .venv/bin/python benchmarks/memory.py [--jobs 100000]

The store is filled through the requester's JobStore before the serve opens it (as benchmarks/client_commands.py
does). RSS (VmRSS, and VmHWM, the peak) is read from /proc after start-up, then after the API has listed and
described jobs and 200 noop jobs have run, so what a node keeps per job it touched shows too. (1,000 concurrent
log followers are not measured here yet.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import trio
from _serve import serve
from client_commands import fill
from job_cpu import batch, serve_pid


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def measure(jobs: int) -> None:
    repo = Path(tempfile.mkdtemp(prefix="bacalhau-bench-mem-"))
    ids: list[str] = []
    if jobs:
        start = time.perf_counter()
        ids = trio.run(fill, repo / "jobs.db", jobs)
        print(f"  store filled with {jobs} completed jobs in {time.perf_counter() - start:.1f}s")
    with serve(repo=repo, engine="noop") as served:
        pid = serve_pid(served.api_port)
        up, _ = rss_mb(pid)
        client = served.client
        client.list_jobs(100)
        for job_id in ids[:: max(1, len(ids) // 100)]:
            client.job(job_id)
        batch(client, 200)
        after, peak = rss_mb(pid)
    print(f"  {jobs:>7} jobs stored: RSS after start {up:6.1f} MB, after 100 describes and 200 noop jobs "
          f"{after:6.1f} MB (peak {peak:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    print("serve with an empty store (baseline):")
    measure(0)
    print(f"serve with {args.jobs} finished jobs (target < 300 MB):")
    measure(args.jobs)


if __name__ == "__main__":
    main()
