"""Unit tests of node ranking, bid strategies, capacity and retry strategies."""

from __future__ import annotations

import trio

from bacalhau.compute.bidding import BidContext, bid
from bacalhau.compute.capacity import Capacity
from bacalhau.models import (
    DockerSpec,
    Engine,
    Execution,
    ExecutionState,
    Job,
    JobSpec,
    NodeInfo,
    NodeType,
    Resources,
)
from bacalhau.requester.ranking import rank_nodes
from bacalhau.requester.retry import Backoff, MaxAttempts, decide

GB = 1024**3


def node(name: str, *, engines: tuple[Engine, ...] = (Engine.DOCKER,), cpu_free: float = 2, labels: dict | None = None,
         cpu_total: float = 2) -> NodeInfo:
    return NodeInfo(node_id=name, node_types=[NodeType.COMPUTE], engines=list(engines), labels=labels or {},
                    capacity_total=Resources(cpu=cpu_total, memory=4 * GB),
                    capacity_free=Resources(cpu=cpu_free, memory=4 * GB))


def job(**kw: object) -> Job:
    return Job(spec=JobSpec(docker=DockerSpec(image="x"), **kw))  # type: ignore[arg-type]


def test_ranking_prefers_free_capacity_and_filters_by_engine_labels_and_size() -> None:
    nodes = [node("busy", cpu_free=0.05), node("idle"), node("wasm-only", engines=(Engine.WASM,)),
             node("eu", labels={"zone": "eu"}, cpu_free=1)]
    ranked, why = rank_nodes(job(), nodes, exclude=set())
    assert [n.node_id for n in ranked] == ["idle", "eu", "busy"] and why == ""
    ranked, _ = rank_nodes(job(node_selector="zone=eu"), nodes, exclude=set())
    assert [n.node_id for n in ranked] == ["eu"]
    ranked, _ = rank_nodes(job(), nodes, exclude={"idle", "eu"})
    assert [n.node_id for n in ranked] == ["busy"]


def test_no_node_gives_a_reason_a_user_can_read() -> None:
    _, why = rank_nodes(job(), [node("w", engines=(Engine.WASM,))], exclude=set())
    assert why == "no node has the docker engine"
    _, why = rank_nodes(job(), [], exclude=set())
    assert why == "no compute node is known to this requester"
    _, why = rank_nodes(job(resources={"cpu": 8}), [node("a"), node("b", engines=(Engine.WASM,))], exclude=set())
    assert why == "no node can take the job (2 compute nodes: 1 too small for the job's resources, " \
                  "1 without the docker engine)"


def test_bid_strategies_chain_and_the_first_no_wins() -> None:
    ctx = BidContext(frozenset({Engine.DOCKER}), Resources(cpu=1, memory=GB), {"zone": "eu"})
    assert bid(job(), ctx) is None
    assert "wasm engine is not installed" in (bid(Job(spec=JobSpec(engine=Engine.WASM, wasm={"module": "m"})), ctx) or "")
    assert "more resources" in (bid(job(resources={"cpu": 2}), ctx) or "")
    assert "selector" in (bid(job(node_selector="zone=us"), ctx) or "")


async def test_capacity_queues_first_come_first_served() -> None:
    cap = Capacity(Resources(cpu=1, memory=GB))
    order: list[str] = []
    release = trio.Event()

    async def take(name: str, cpu: float) -> None:
        async with cap.reserve(Resources(cpu=cpu, memory=1)):
            order.append(name)
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "a", 0.6)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "b", 0.6)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "c", 0.3)   # fits now, but b came first: no overtaking
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a"] and cap.queued == 2
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        # a is gone: b (first in line) and then c both fit
        assert sorted(order) == ["a", "b", "c"] and cap.queued == 0
    assert cap.used == Resources()


def test_retry_chain_first_decision_wins() -> None:
    j = job()
    j.executions = [Execution(job_id=j.id, node_id="n1", state=ExecutionState.FAILED, reason="boom")]
    assert decide([MaxAttempts(3)], j).retry is True
    assert decide([MaxAttempts(1)], j).retry is False
    assert decide([Backoff(base=1.0), MaxAttempts(1)], j).delay == 1.0
    assert decide([MaxAttempts(1), Backoff(base=1.0)], j).retry is False


def test_a_jobs_retry_spec_replaces_the_nodes_limit_and_adds_backoff() -> None:
    from bacalhau.requester.retry import chain_for

    j = job(retry={"max_attempts": 1, "backoff": 2.0})
    j.executions = [Execution(job_id=j.id, node_id="n1", state=ExecutionState.FAILED, reason="boom")]
    assert decide(chain_for(j, [MaxAttempts(3)]), j).retry is False
    j2 = job(retry={"backoff": 2.0})
    j2.executions = list(j.executions)
    assert decide(chain_for(j2, [MaxAttempts(3)]), j2) .delay == 2.0
    j2.executions *= 3
    assert decide(chain_for(j2, [MaxAttempts(3)]), j2).retry is False
