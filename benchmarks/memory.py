"""Resident memory of a `bacalhau serve` holding --jobs finished jobs (target: < 300 MB with 100,000), against
the same serve with an empty store, in the same run.

    .venv/bin/python benchmarks/memory.py [--jobs 100000]

The store is filled through the requester's JobStore before the serve opens it (as benchmarks/client_commands.py
does). RSS (VmRSS, and VmHWM, the peak) is read from /proc after start-up, then after the API has listed and
described jobs and 200 noop jobs have run, so what a node keeps per job it touched shows too.

    .venv/bin/python benchmarks/memory.py --followers 1000 [--jobs 0]

--followers N: N websockets following the logs of one running Docker job (a line every 0.2 s) at once, RSS
before and with all of them receiving (target: < 200 MB more for 1,000). The API caps followers at 256 a node
and 32 a client address (api/logs.py); this serve runs with both raised to N, which only this benchmark does.
Measured (2 cores, load 5-6), two runs: 1,000 followers +54.8 and +54.7 MB (56 KB each: 110 MB before, 165
with them), every follower given a new line in each of 5 seconds; all 1,000 receiving 10-13 s after the first
connected (handshakes from this one process); 100 followers +5.0 MB.
"""

from __future__ import annotations

import argparse
import sys
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


UNCAPPED = ("import sys\nimport bacalhau.api.logs as logs\nlogs.MAX_FOLLOWERS = logs.MAX_FOLLOWERS_PER_CLIENT = "
            "int(sys.argv.pop(1))\nfrom bacalhau.cli.main import main\nsys.argv[0] = 'bacalhau'\nmain()")
LINES = "i=0; while [ $i -lt 1000 ]; do echo line-$i; i=$((i+1)); usleep 200000; done"


def measure_followers(n: int) -> None:
    from _serve import IMAGE, running_execution
    from trio_websocket import ConnectionClosed, open_websocket_url

    with serve(engine="docker", command=[sys.executable, "-c", UNCAPPED, str(n)]) as served:
        pid = serve_pid(served.api_port)
        client = served.client
        job_id = client.submit({"engine": "docker", "docker": {"image": IMAGE, "parameters": ["sh", "-c", LINES]},
                                "timeout": 600})
        running_execution(client, job_id)
        url = f"ws://127.0.0.1:{served.api_port}/api/v1/jobs/{job_id}/logs?follow=1"
        received = [0] * n
        receiving: list[int] = []
        all_receiving = trio.Event()

        async def follower(i: int) -> None:
            try:
                async with open_websocket_url(url, max_message_size=4 * 1024 * 1024) as ws:
                    while True:
                        await ws.get_message()
                        received[i] += 1
                        if received[i] == 2:     # the execution event and a line at least
                            receiving.append(i)
                            if len(receiving) == n:
                                all_receiving.set()
            except ConnectionClosed:
                pass

        async def run() -> None:
            await trio.sleep(2)
            before, _ = rss_mb(pid)
            async with trio.open_nursery() as nursery:
                start = time.perf_counter()
                for i in range(n):
                    nursery.start_soon(follower, i)
                with trio.fail_after(120):
                    await all_receiving.wait()
                up = time.perf_counter() - start
                marks = []
                for _ in range(5):
                    mark = list(received)
                    await trio.sleep(1)
                    marks.append(sum(1 for r, m in zip(received, mark, strict=True) if r > m))
                after, peak = rss_mb(pid)
                nursery.cancel_scope.cancel()
            print(f"  {n} log followers of one running job: all receiving {up:.1f}s after the first connected; RSS "
                  f"{before:6.1f} MB before, {after:6.1f} MB with them (+{after - before:.1f} MB, "
                  f"{(after - before) * 1024 / n:.0f} KB each; peak {peak:.1f}); followers that got a new line "
                  f"in each of 5 seconds: {min(marks)}-{max(marks)} of {n}   (target < 200 MB more for 1,000)")

        trio.run(run)
        job = client.job(job_id)
        if job["state"] != "in_progress":
            print(f"  (the job ended {job['state']} while followed: {job['reason']})")
        else:
            client.cancel(job_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--followers", type=int, default=0, help="Measure N log followers (and --jobs 0: "
                                                                   "no store measure).")
    args = parser.parse_args()
    if args.followers:
        print(f"serve with {args.followers} log followers of one Docker job:")
        measure_followers(args.followers)
        if not args.jobs:
            return
    print("serve with an empty store (baseline):")
    measure(0)
    print(f"serve with {args.jobs} finished jobs (target < 300 MB):")
    measure(args.jobs)


if __name__ == "__main__":
    main()
