"""A last attacker's read of the session's requester changes (the node table's reckoning of what of a report
was ours)."""

from __future__ import annotations

import time

from bacalhau.models import Engine, NodeInfo, NodeType, Resources
from bacalhau.requester.nodes import NodeTable


def _info(name: str, *, published_at: float) -> NodeInfo:
    return NodeInfo(node_id=name, node_types=[NodeType.COMPUTE], engines=[Engine.NOOP],
                    capacity_total=Resources(cpu=2, memory=4 * 1024**3),
                    capacity_free=Resources(cpu=2, memory=4 * 1024**3), running=0, published_at=published_at)


def test_a_node_replaying_its_first_report_cannot_grow_the_requesters_memory_with_each_job() -> None:
    """A node may send its own first report again and again (it is signed by it, and an older report only
    says it is alive): its `since` never moves on, and each of our executions that ended on it was kept for a
    later report that never comes. Now kept no longer than a report stays current (the TTL; a tiny one here,
    so thousands of jobs span many of them)."""
    ttl = 1e-4
    table = NodeTable(ttl=ttl)
    first = time.time() - 1
    table.update(_info("replayer", published_at=first))
    jobs = 5000
    for i in range(jobs):
        table.placed("replayer", f"e{i}")
        table.answered("replayer", f"e{i}")          # it bid (or its pre-approved reply came)
        table.ended("replayer", f"e{i}")             # and it ended (ran, or failed at once)
        table.update(_info("replayer", published_at=first))   # the same old report again: alive
    kept = len(table._nodes["replayer"].ended)
    assert kept < jobs // 5, f"{kept} ended executions held for a report that never comes"
    assert table.load("replayer").extra == 0         # and its load is still reckoned right


def test_nodes_once_silent_and_gone_are_not_kept_for_ever() -> None:
    """Peer ids cost nothing: a peer can join as node after node, take one ask each, never answer, and go.
    Each was kept in SilentNodes for the requester's life (and walked at every placement). Now one past its
    time and not asked again for SILENT_FOR_MAX is let go (asked again and silent, it is marked again)."""
    import trio
    import trio.testing

    from bacalhau.requester.silent import SILENT_FOR_MAX, SilentNodes

    async def main() -> None:
        silent = SilentNodes()
        for i in range(2000):
            silent.asked(f"sybil{i}")
            silent.unanswered(f"sybil{i}")
        assert len(silent.left_out()) == 2000
        await trio.sleep(3 * SILENT_FOR_MAX)
        silent.unanswered("still-there")
        assert silent.left_out() == {"still-there"}
        assert len(silent._until) + len(silent._strikes) < 10, "nodes long gone still held"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
