"""A simulated cluster: one real requester against N light compute nodes over the in-memory transport
(bacalhau/testing/sim.py), for scale beyond this machine.

    python -m benchmarks.simulate                       # 10, 100 and 1,000 nodes at 500 jobs/s offered
    python -m benchmarks.simulate --nodes 1000 --rate 0 # a burst: every job submitted at once
    python -m benchmarks.simulate --latency 0.002 --loss 0.01 --crash 0.05
    python -m benchmarks.simulate --nodes 100 --loss 0.01 --callback-attempts 1   # lost callbacks not re-sent

Per size it prints: jobs scheduled per second (a job is scheduled when a node's bid is accepted) and completed
per second, submit-to-end latency p50/p99, the bid round p50/p99 (the job's first ask reaching a node to the
bid's acceptance reaching it), and NodeInfo gossip per node (messages and bytes per second). The requester's
SQLite file lives in --db-dir (default: a temporary directory under /dev/shm where there is one: this measures
scheduling, not the disk's fsync).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import trio

from bacalhau.compute.callbacks import DEFAULT_CALLBACK_ATTEMPTS, CallbackRetry
from bacalhau.models import Engine, JobSpec, JobState, NoopSpec
from bacalhau.testing.sim import Sim, SimConfig, percentile


async def one_size(args: argparse.Namespace, nodes: int, db_dir: Path) -> dict[str, float]:
    cfg = SimConfig(nodes=nodes, slots=args.slots, run_time=args.run_time, latency=args.latency, jitter=args.jitter,
                    loss=args.loss, gossip_interval=args.gossip_interval, seed=args.seed,
                    call_timeout=args.call_timeout, bid_timeout=args.call_timeout,
                    callback_retry=CallbackRetry(attempts=args.callback_attempts))
    async with Sim(cfg, db_dir) as sim:
        ids: list[str] = []
        submitted_at: dict[str, float] = {}
        t0 = trio.current_time()
        cpu0 = time.process_time()

        async def crash_some() -> None:
            """Every second, a share of the nodes crashes, and comes back a second later."""
            while args.crash:
                await trio.sleep(1.0)
                victims = sim.rng.sample(sim.nodes, max(1, int(args.crash * nodes)))
                for v in victims:
                    if v.up:
                        v.crash()
                await trio.sleep(1.0)
                for v in victims:
                    if not v.up:
                        await v.restart()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash_some)
            spec = JobSpec(engine=Engine.NOOP, noop=NoopSpec())
            for i in range(args.jobs):
                if args.rate:
                    await trio.sleep_until(t0 + i / args.rate)
                job = await sim.submit(spec)
                ids.append(job.id)
                submitted_at[job.id] = trio.current_time()
            submit_end = trio.current_time()
            if args.until == "scheduled":     # the runs are long: what is measured is placing the jobs
                sim.scheduled_target = len(ids)
                with trio.move_on_after(args.timeout):
                    if len(sim.stats.accepted_at) < len(ids):
                        await sim.all_scheduled.wait()
                done = {}
            else:
                done = await sim.wait_all(ids, args.timeout)
            end = trio.current_time()
            nursery.cancel_scope.cancel()
        cpu = time.process_time() - cpu0
        latencies = [(j.updated_at - j.created_at) for j in done.values() if j.state == JobState.COMPLETED]
        accepted = len(sim.stats.bid_round)
        completed = sum(1 for j in done.values() if j.state == JobState.COMPLETED)
        problems = sim.check(done, ids) if done else []
        msgs, nbytes = sim.gossip_per_node_per_second()
        span = end - t0
        return {
            "nodes": nodes, "jobs": args.jobs, "submit_s": submit_end - t0,
            "scheduled_per_s": accepted / max(1e-9, max(sim.stats.accepted_at, default=end) - t0),
            "completed_per_s": completed / span, "completed": completed,
            "latency_p50_ms": 1000 * percentile(latencies, 0.5), "latency_p99_ms": 1000 * percentile(latencies, 0.99),
            "latency_max_ms": 1000 * max(latencies, default=float("nan")),
            "bid_p50_ms": 1000 * percentile(sim.stats.bid_round, 0.5),
            "bid_p99_ms": 1000 * percentile(sim.stats.bid_round, 0.99),
            "gossip_msgs_node_s": msgs, "gossip_bytes_node_s": nbytes, "cpu_s": cpu,
            "cpu_ms_per_job": 1000 * cpu / args.jobs, "gossip_cpu_share": sim.stats.gossip_cpu / max(1e-9, cpu),
            "calls": sim.network.calls, "lost": sim.network.lost, "problems": len(problems),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, nargs="*", default=[10, 100, 1000])
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--rate", type=float, default=500.0, help="jobs/s offered (0: all at once)")
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--run-time", type=float, default=0.05)
    p.add_argument("--latency", type=float, default=0.0, help="one way, seconds")
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--crash", type=float, default=0.0, help="share of nodes crashing every other second")
    p.add_argument("--gossip-interval", type=float, default=1.0)
    p.add_argument("--call-timeout", type=float, default=2.0)
    p.add_argument("--callback-attempts", type=int, default=DEFAULT_CALLBACK_ATTEMPTS,
                   help="sends of a lost callback by a node (1: never sent again, as before)")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--until", choices=["ended", "scheduled"], default="ended",
                   help="wait for every job to end, or only to be placed (use with a long --run-time)")
    p.add_argument("--db-dir", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    base = args.db_dir or Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    for n in args.nodes:
        with tempfile.TemporaryDirectory(dir=base, prefix="bacalhau-sim-") as tmp:
            r = trio.run(one_size, args, n, Path(tmp))
        print(f"{r['nodes']:>5} nodes  {r['jobs']} jobs: scheduled {r['scheduled_per_s']:.0f}/s, completed "
              f"{r['completed_per_s']:.0f}/s ({r['completed']} completed), latency p50 {r['latency_p50_ms']:.0f} ms "
              f"p99 {r['latency_p99_ms']:.0f} ms max {r['latency_max_ms']:.0f} ms, bid round p50 {r['bid_p50_ms']:.1f} ms p99 {r['bid_p99_ms']:.1f} ms, "
              f"gossip {r['gossip_msgs_node_s']:.2f} msgs {r['gossip_bytes_node_s']:.0f} B per node/s, "
              f"CPU {r['cpu_s']:.1f} s ({r['cpu_ms_per_job']:.2f} ms a job, gossip intake {100 * r['gossip_cpu_share']:.1f}%), "
              f"calls {r['calls']} lost {r['lost']}, problems {r['problems']}", flush=True)


if __name__ == "__main__":
    main()
