"""CPU per noop job of one requester+compute node in this process, without the HTTP API: what the requester,
the compute node and their calls to each other cost (real libp2p host, real SQLite stores, real blockstore).

    .venv/bin/python benchmarks/compute_cost.py [--jobs 1500] [--in-flight 32] [--runs 3]

Prints jobs/s and the process's CPU (user + system, all threads) per job, for each run and their median. The
same-run baseline is another tree's code: PYTHONPATH=/path/to/tree, runs interleaved.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import trio

from bacalhau.config import NodeConfig
from bacalhau.models import Engine, JobSpec, NoopSpec
from bacalhau.node import Node


def cpu() -> tuple[float, float]:
    t = os.times()
    return t.user, t.system


async def one_run(jobs: int, in_flight: int) -> tuple[float, float, float]:
    repo = Path(tempfile.mkdtemp(prefix="bacalhau-compute-cost-"))
    cfg = NodeConfig(repo_dir=repo, swarm_key="5e" * 32, serve_api=False, swarm_host="127.0.0.1", swarm_port=0,
                     ipfs_swarm_port=0, engines=("noop",))
    try:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(cfg).run)
            requester = node.requester
            left = [jobs]

            async def worker() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    job = await requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="hi\n")))
                    while not (await requester.store.get_job(job.id, full=False)).state.terminal:
                        await requester.wait_for_change(job.id, 1)

            async with trio.open_nursery() as warm:      # the first jobs warm caches and threads up
                left[0] = 50
                for _ in range(in_flight):
                    warm.start_soon(worker)
            left[0] = jobs
            start_cpu, start = cpu(), time.monotonic()
            async with trio.open_nursery() as work:
                for _ in range(in_flight):
                    work.start_soon(worker)
            elapsed, end_cpu = time.monotonic() - start, cpu()
            nursery.cancel_scope.cancel()
        user, system = (end_cpu[0] - start_cpu[0]) / jobs * 1000, (end_cpu[1] - start_cpu[1]) / jobs * 1000
        return jobs / elapsed, user, system
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    cpus, rates = [], []
    for _ in range(args.runs):
        rate, user, system = trio.run(one_run, args.jobs, args.in_flight)
        rates.append(rate)
        cpus.append(user + system)
        print(f"{args.jobs} jobs: {rate:.1f} jobs/s, {user + system:.2f} ms CPU a job ({user:.2f} user, "
              f"{system:.2f} system)", flush=True)
    print(f"median of {args.runs}: {statistics.median(rates):.1f} jobs/s, {statistics.median(cpus):.2f} ms CPU a job "
          f"(least {min(cpus):.2f})")


if __name__ == "__main__":
    main()
