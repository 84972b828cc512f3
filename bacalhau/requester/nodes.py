"""The requester's table of compute nodes, fed by their gossiped NodeInfo; entries expire.

Besides each node's last report, the table keeps this requester's own executions on the node that have not
ended (asked, bid, running, publishing), counted from the ask to the end: a burst between two reports would
otherwise all go to the node that looked idlest, and a node that takes asks and never bids looks busier with
each one, not idle for ever. Ranking reads a node as `Load`: ours now, plus what the report holds beyond what
was ours when it was made (other requesters' work). Counting "placed since the report" instead made a node
whose reports came older get about half the jobs of the others (benchmarks/cluster_throughput.py: c0=260
c1=65 c2=275 of 600). What was ours when the report was made is reckoned from when each of our executions got
past its bid and when it ended, not from what is ours when the report comes: jobs that end within
milliseconds (a pre-approved noop) have often ended by then, and the report's count of them was taken for
other requesters' work, keeping the node looking busy until its next report (a burst of 300 on three equal
nodes spread 61/117/122).

The hot path does not walk the table: `sample` visits nodes from a random place in it and stops when the
caller has enough, so scheduling a job costs the same with 3 nodes or a thousand.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from bacalhau.models import NodeInfo


@dataclass
class _Entry:
    info: NodeInfo
    expires: float                                            # time.monotonic()
    since: float                                              # wall time the report stands for
    live: set[str] = field(default_factory=set)               # our executions on the node, not ended
    awaiting: dict[str, float] = field(default_factory=dict)  # execution id -> wall time asked, no bid yet
    past_bid: dict[str, float] = field(default_factory=dict)  # of `live`: execution id -> wall time of its bid
    ended: deque[tuple[float, float]] = field(default_factory=deque)  # (bid, end) of ours ended since `since`
    ours_in_report: int = 0                                   # ours past their bid, not ended, at `since`
    placed_at: int = 0                                        # when we last placed one there (a count, not a time)


def _let_go(entry: _Entry, upto: float) -> None:
    """Forget ours that ended up to `upto` (a report for a later moment, or a TTL ago, never counts them)."""
    while entry.ended and entry.ended[0][1] <= upto:
        entry.ended.popleft()


@dataclass(frozen=True)
class Load:
    """A node as the requester reckons it now: its report, and executions not in it."""

    info: NodeInfo
    extra: int = 0      # executions on the node now beyond the report's `running` (fewer when negative)
    placed_at: int = 0  # when this requester last placed an execution there (NodeTable's count; 0: never)


class NodeTable:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._nodes: dict[str, _Entry] = {}
        self._order: list[str] = []            # the same ids, for sampling from a random place
        self._index: dict[str, int] = {}
        self.pinned: set[str] = set()          # this node's own compute part: never expires
        self._seen: dict[str, trio.Event] = {}
        self._placements = 0                   # executions placed so far: orders nodes by their last one

    def update(self, info: NodeInfo) -> bool:
        """Record a NodeInfo; True when the node is new (or had expired)."""
        now = time.time()
        # a report stands for the moment it was made; a clock ahead of ours is taken as now
        since = min(info.published_at, now)
        entry = self._nodes.get(info.node_id)
        if entry is None:
            self._nodes[info.node_id] = _Entry(info, time.monotonic() + self.ttl, since)
            self._index[info.node_id] = len(self._order)
            self._order.append(info.node_id)
            self._seen.pop(info.node_id, trio.Event()).set()
            return True
        entry.expires = time.monotonic() + self.ttl
        if since > entry.since:        # gossip may come out of order: an older report only says it is alive
            entry.info, entry.since = info, since
            entry.ours_in_report = self._ours_at(entry, since)
        return False

    @staticmethod
    def _ours_at(entry: _Entry, since: float) -> int:
        """Our executions on the node past their bid and not yet ended at `since` (those ended before it are
        let go: a later report stands for a later moment)."""
        _let_go(entry, since)
        return (sum(1 for bid in entry.past_bid.values() if bid <= since)
                + sum(1 for bid, _ in entry.ended if bid <= since))

    async def wait_for(self, node_id: str) -> None:
        """Return once the node is in the table (at once if it is)."""
        if node_id not in self._nodes:
            await self._seen.setdefault(node_id, trio.Event()).wait()

    def remove(self, node_id: str) -> None:
        if self._nodes.pop(node_id, None) is None:
            return
        i = self._index.pop(node_id)
        last = self._order.pop()
        if last != node_id:
            self._order[i] = last
            self._index[last] = i

    def expire(self) -> list[str]:
        now = time.monotonic()
        gone = [nid for nid, entry in self._nodes.items() if entry.expires < now and nid not in self.pinned]
        for nid in gone:
            self.remove(nid)
        return gone

    def others(self) -> int:
        """Nodes in the table besides this node's own compute part."""
        return len(self._nodes) - sum(1 for nid in self.pinned if nid in self._nodes)

    def _alive(self, nid: str, entry: _Entry, now: float) -> bool:
        return entry.expires >= now or nid in self.pinned

    def alive(self) -> list[NodeInfo]:
        now = time.monotonic()
        return [entry.info for nid, entry in self._nodes.items() if self._alive(nid, entry, now)]

    def get(self, node_id: str) -> NodeInfo | None:
        entry = self._nodes.get(node_id)
        return entry.info if entry else None

    def __len__(self) -> int:
        return len(self._nodes)

    # -- what this requester placed -------------------------------------------------------------------------

    def placed(self, node_id: str, execution_id: str) -> None:
        """An execution was asked of the node (it counts as load until it ends)."""
        entry = self._nodes.get(node_id)
        if entry is not None:
            entry.live.add(execution_id)
            entry.awaiting[execution_id] = time.time()
            self._placements += 1
            entry.placed_at = self._placements

    def ended(self, node_id: str, execution_id: str) -> None:
        """The execution reached a terminal state (a refused or unneeded bid too): no longer load."""
        entry = self._nodes.get(node_id)
        if entry is not None:
            entry.live.discard(execution_id)
            entry.awaiting.pop(execution_id, None)
            bid = entry.past_bid.pop(execution_id, None)
            if bid is not None:
                now = time.time()
                entry.ended.append((bid, now))   # kept until a report stands for a later moment, or for a TTL:
                # a node resending an old report (only "alive") would have each kept for ever; a report made
                # over a TTL ago is stale and its count of ours matters little
                _let_go(entry, now - self.ttl)

    def answered(self, node_id: str, execution_id: str) -> None:
        """The node bid (or refused, or the ask failed or timed out): no longer an unanswered ask."""
        entry = self._nodes.get(node_id)
        if entry is not None:
            entry.awaiting.pop(execution_id, None)
            if execution_id in entry.live and execution_id not in entry.past_bid:
                entry.past_bid[execution_id] = time.time()

    def awaiting(self) -> int:
        """Asks of this requester still waiting for their bid, over all nodes."""
        return sum(len(entry.awaiting) for entry in self._nodes.values())

    def load(self, node_id: str) -> Load | None:
        entry = self._nodes.get(node_id)
        if entry is None:
            return None
        return self._load(entry)

    @staticmethod
    def _load(entry: _Entry) -> Load:
        reported = entry.info.running
        others = max(0, reported - entry.ours_in_report)    # other requesters' work, as the report showed it
        return Load(entry.info, others + len(entry.live) - reported, entry.placed_at)

    def sample(self) -> Iterator[Load]:
        """Every live node once, starting from a random one: a caller that stops early has a random sample."""
        order = self._order
        if not order:
            return
        now = time.monotonic()
        start = random.randrange(len(order))
        for k in range(len(order)):
            if k >= len(order):     # the table changed under a suspended caller
                return
            nid = order[(start + k) % len(order)]
            entry = self._nodes.get(nid)
            if entry is not None and self._alive(nid, entry, now):
                yield self._load(entry)
