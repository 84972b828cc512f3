"""What scheduling costs as the store and the cluster grow, without a cluster: the requester's parts alone.

  1. A jobs.db holding --stored finished jobs (and one execution each): the time to find the pending jobs (every
     node join asks) and a lost node's unfinished executions, with the layout-2 indexes and without them
     (dropped: the layout before).
  2. Ranking a job over a node table of 3, 100 and 1000 nodes: the sampled walk the requester uses, and the
     walk over every node it used before.

    .venv/bin/python benchmarks/scheduling_costs.py [--stored 100000]

Measured on a shared 2-core machine (noisy: single runs, the spread of two sessions):
  ranking a job over 1000 nodes: main (every node) 8.1-22.6 ms, this (a sample of 16) 68-176 us; over 3 nodes
  23-25 us -> 11-14 us.
  100,000 stored jobs: the pending jobs (every node join) 18.5-22.8 ms -> 0.6-5.1 ms (an index on jobs(state)); a
  lost node's unfinished executions 14.0-15.5 ms -> 0.45-0.7 ms, where main read every unfinished job and then
  each one's executions.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import trio

from bacalhau.models import Engine, Job, JobSpec, JobState, NodeInfo, NodeType, Resources
from bacalhau.requester.nodes import NodeTable
from bacalhau.requester.ranking import rank_nodes
from bacalhau.requester.store import JobStore

try:
    from bacalhau.requester.ranking import SAMPLE, rank_loads
except ImportError:     # a tree from before the sampled ranking: its walk over every node alone is timed
    rank_loads = None   # type: ignore[assignment]


def median_ms(fn, repeat: int = 7) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def fill(path: Path, stored: int) -> None:
    JobStore(path).close()           # the current layout
    spec = JobSpec(engine=Engine.NOOP).model_dump_json()
    with sqlite3.connect(path) as conn:
        for i in range(0, stored, 10_000):
            jobs, executions = [], []
            for _ in range(min(10_000, stored - i)):
                job_id = str(uuid.uuid4())
                jobs.append((job_id, spec, "completed", "", "c", 1.0, 2.0))
                executions.append((str(uuid.uuid4()), job_id, f"node-{i % 7}", "completed", "", None, "", 1.0, 2.0))
            conn.executemany("INSERT INTO jobs VALUES (?,?,?,?,?,?,?)", jobs)
            conn.executemany("INSERT INTO executions(id, job_id, node_id, state, reason, result, result_ref,"
                             " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)", executions)


def store_costs(stored: int) -> None:
    path = Path(tempfile.mkdtemp(prefix="bacalhau-bench-store-")) / "jobs.db"
    fill(path, stored)
    for label, drop in (("layout 2 (indexes)", False), ("layout 1 (no indexes)", True)):
        if drop:
            with sqlite3.connect(path) as conn:
                conn.execute("DROP INDEX IF EXISTS jobs_state")
                conn.execute("DROP INDEX IF EXISTS executions_node_state")
        store = JobStore(path)
        try:
            if hasattr(store, "job_ids_in_states"):
                pending = median_ms(lambda store=store: trio.run(store.job_ids_in_states, [JobState.PENDING]))
                lost = median_ms(lambda store=store: trio.run(store.live_executions_on, {"node-3"}))
                print(f"{stored} stored jobs, {label}: pending jobs {pending:.2f} ms, a lost node's executions "
                      f"{lost:.2f} ms")
            # what the requester asked before: every unfinished job, then each one's executions
            old = median_ms(lambda store=store: trio.run(store.jobs_in_states, [JobState.PENDING, JobState.IN_PROGRESS]))
            print(f"{stored} stored jobs, {label}: unfinished jobs (jobs_in_states) {old:.2f} ms")
        finally:
            store.close()


def ranking_costs() -> None:
    job = Job(spec=JobSpec(engine=Engine.NOOP))
    for n in (3, 100, 1000):
        table = NodeTable(ttl=3600)
        for i in range(n):
            table.update(NodeInfo(node_id=f"n{i}", node_types=[NodeType.COMPUTE], engines=[Engine.NOOP],
                                  capacity_total=Resources(cpu=2, memory=2**32),
                                  capacity_free=Resources(cpu=2, memory=2**32)))
        every = median_ms(lambda t=table: [rank_nodes(job, t.alive(), set()) for _ in range(100)])
        line = f"ranking a job over {n:4} nodes: every node {every * 10:.0f} us"
        if rank_loads is not None:
            sampled = median_ms(lambda t=table: [rank_loads(job, t.sample(), set(), sample=SAMPLE)
                                                 for _ in range(100)])
            line += f", a sample of {SAMPLE} {sampled * 10:.0f} us"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stored", type=int, default=100_000)
    args = parser.parse_args()
    ranking_costs()
    store_costs(args.stored)


if __name__ == "__main__":
    main()
