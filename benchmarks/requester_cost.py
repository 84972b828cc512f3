"""What a noop job costs the node without its API: one in-process node (requester and compute) on the in-memory
transport, --jobs noop jobs submitted straight to the requester with --in-flight at a time. Prints CPU per job
(this process, all threads: user + system, from /proc), worker-thread hand-offs per job (trio.to_thread calls and
trio.lowlevel.start_thread_soon, every database's), and transactions and database calls per job (db.py's groups and calls, each group one commit).
The same-run baseline is another tree's code: PYTHONPATH=/path/to/tree.

    .venv/bin/python benchmarks/requester_cost.py [--jobs 2000] [--in-flight 32] [--runs 3]

Measured on the shared 2-core machine (load 6-14 from others' work), interleaved with the branch point
(1054790), medians of 3 runs, 1500 jobs, 32 in flight:
  branch point: 108.5 jobs/s, CPU 7.23 ms a job, 6.0 hand-offs, 2.0 transactions, 28.9 database calls a job
  the store's in-memory view and combined transitions alone (97a410f; hand-offs then counted without
  start_thread_soon): CPU 6.39 -> 6.07 ms a job (within the noise), 2.0 -> 2.4 transactions (the reads had
  joined the writes' groups, so taking them away made fewer calls a group, not fewer groups)
  with db.py's waiters woken once per group instead of through a lock (9761267): 160.7 jobs/s, CPU 5.47 ms a
  job, 6.2 hand-offs, 2.2 transactions, 14.6 database calls a job
A plain job's first execution written with the job at submit (not by an evaluation task after the job's own
commit), 1500 jobs, 32 in flight, 2 runs interleaved with 6b97f58 (load ~7 from others' work): 1.4 -> 1.2/1.3
hand-offs, 1.1 -> 0.9/1.0 transactions, 7.4 -> 6.3/6.4 database calls a job; CPU 2.15/2.98 -> 2.16/2.96 ms a job
(no change beyond the noise). What it saves is a durable write in series: a job's first ask no longer waits for
a commit of its own (10-17 ms p50 from the submit's answer to the ask's record under 32 in flight, one node).
With the compute node's pre-approved execution written accepted and started in one write when it has room (its
"running" no longer a write of its own before the run), 2 runs interleaved with 6b97f58: 217.8/260.8 ->
268.2/358.8 jobs/s, CPU 2.27/2.55 -> 2.17/2.01 ms a job, 1.4 -> 1.1 hand-offs, 1.1 -> 0.8 transactions, 7.4 -> 5.4
database calls a job.
A pre-approved ask's yes written with the run's end that follows it at once (one update, not the bid's and then
the end's: 08ed610), 2000 jobs, 32 in flight, 2 runs interleaved with d40f05f (load ~1): 459.4/478.7 ->
441.5/558.3 jobs/s, CPU 2.38/2.30 -> 2.42/1.95 ms a job, 0.8 -> 0.7 transactions, 5.3/5.4 -> 4.3/4.4 database
calls a job, 1.1 -> 1.0 hand-offs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import trio

from bacalhau import db
from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.config import NodeConfig
from bacalhau.executors.noop import NoopExecutor
from bacalhau.models import Engine, JobSpec, NoopSpec
from bacalhau.node import Node, NodeDeps

counts = {"handoffs": 0, "groups": 0, "calls": 0}


def _count() -> None:
    run_sync = trio.to_thread.run_sync
    start_soon = trio.lowlevel.start_thread_soon     # what db.py uses since this script was written
    in_group = db.Database._in_group

    async def counted(*args: object, **kw: object) -> object:
        counts["handoffs"] += 1
        return await run_sync(*args, **kw)  # type: ignore[arg-type]

    def counted_soon(*args: object, **kw: object) -> None:
        counts["handoffs"] += 1
        start_soon(*args, **kw)  # type: ignore[arg-type]

    def grouped(self: db.Database, calls: list[object]) -> None:
        counts["groups"] += 1
        counts["calls"] += len(calls)
        in_group(self, calls)  # type: ignore[arg-type]

    trio.to_thread.run_sync = counted  # type: ignore[assignment]
    trio.lowlevel.start_thread_soon = counted_soon  # type: ignore[assignment]
    db.Database._in_group = grouped  # type: ignore[method-assign]


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def one_run(jobs: int, in_flight: int) -> dict[str, float]:
    repo = Path(tempfile.mkdtemp(prefix="bacalhau-bench-req-"))
    cfg = NodeConfig(repo_dir=repo, serve_api=False, engines=("noop",))
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg, NodeDeps(network=InMemoryNetwork(),
                                                      executors={Engine.NOOP: NoopExecutor()})).run)
        requester = node.requester
        left = [jobs]
        spec = JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="hi\n"))

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                job = await requester.submit(spec)
                while not (await requester.store.get_job(job.id, full=False)).state.terminal:
                    await requester.wait_for_change(job.id, 1)

        before = dict(counts)
        cpu, wall = _cpu(), time.perf_counter()
        async with trio.open_nursery() as workers:
            for _ in range(in_flight):
                workers.start_soon(worker)
        cpu, wall = _cpu() - cpu, time.perf_counter() - wall
        nursery.cancel_scope.cancel()
    per = {k: (counts[k] - before[k]) / jobs for k in counts}
    return {"rate": jobs / wall, "cpu_ms": cpu * 1000 / jobs, **per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    _count()
    results = []
    for _ in range(args.runs):
        r = trio.run(one_run, args.jobs, args.in_flight)
        results.append(r)
        print(f"{args.jobs} jobs: {r['rate']:.1f} jobs/s, CPU {r['cpu_ms']:.2f} ms a job, {r['handoffs']:.1f} "
              f"thread hand-offs, {r['groups']:.1f} transactions, {r['calls']:.1f} database calls a job", flush=True)
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"median: {med['rate']:.1f} jobs/s, CPU {med['cpu_ms']:.2f} ms a job, {med['handoffs']:.1f} hand-offs, "
          f"{med['groups']:.1f} transactions, {med['calls']:.1f} database calls a job")


if __name__ == "__main__":
    main()
