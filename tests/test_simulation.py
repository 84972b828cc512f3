"""The simulated cluster (bacalhau/testing/sim.py): one real requester against light compute nodes over an
in-memory network that delays and loses messages, with nodes that crash and come back. Whatever happens,
every job ends (completed, or failed with a reason), none is lost, and none ever runs on more nodes at once
than its concurrency. (No timing assertions: the figures are benchmarks/simulate.py's.)"""

from __future__ import annotations

from pathlib import Path

import trio

from bacalhau.models import Engine, JobSpec, JobState, NoopSpec
from bacalhau.testing.sim import Sim, SimConfig

FAST = dict(call_timeout=0.5, bid_timeout=0.5, node_ttl=1.0, gossip_interval=0.2, reconcile_interval=1.0)


async def test_every_job_ends_once_on_a_quiet_network(tmp_path: Path) -> None:
    async with Sim(SimConfig(nodes=20, seed=1, **FAST), tmp_path) as sim:
        ids = [(await sim.submit()).id for _ in range(100)]
        done = await sim.wait_all(ids, 30)
        assert sim.check(done, ids) == []
        assert all(j.state == JobState.COMPLETED for j in done.values())
        assert all(sim.stats.runs[j] == 1 for j in ids)      # nothing lost, so nothing ran twice


async def test_every_job_ends_under_loss_latency_and_crashes(tmp_path: Path) -> None:
    cfg = SimConfig(nodes=20, seed=2, latency=0.002, jitter=0.003, loss=0.03, max_attempts=5, **FAST)
    async with Sim(cfg, tmp_path) as sim:
        ids: list[str] = []
        for i in range(120):
            spec = JobSpec(engine=Engine.NOOP, concurrency=2 if i % 10 == 0 else 1, noop=NoopSpec())
            ids.append((await sim.submit(spec)).id)
            if i % 30 == 29:      # a few nodes crash mid-burst, and come back
                victims = sim.nodes[i // 30 * 3: i // 30 * 3 + 3]
                for node in victims:
                    node.crash()
                await trio.sleep(0.3)
                for node in victims:
                    await node.restart()
        done = await sim.wait_all(ids, 60)
        assert sim.network.lost > 0
        assert sim.check(done, ids) == []
        completed = sum(1 for j in done.values() if j.state == JobState.COMPLETED)
        assert completed > len(ids) // 2, [j.reason for j in done.values() if j.state != JobState.COMPLETED][:5]
