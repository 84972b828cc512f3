"""The requester's table of compute nodes, fed by their gossiped NodeInfo; entries expire."""

from __future__ import annotations

import time

import trio

from bacalhau.models import NodeInfo


class NodeTable:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}
        self.pinned: set[str] = set()          # this node's own compute part: never expires
        self._seen: dict[str, trio.Event] = {}

    def update(self, info: NodeInfo) -> bool:
        """Record a NodeInfo; True when the node is new (or had expired)."""
        known = info.node_id in self._nodes
        self._nodes[info.node_id] = (info, time.monotonic() + self.ttl)
        if not known:
            self._seen.pop(info.node_id, trio.Event()).set()
        return not known

    async def wait_for(self, node_id: str) -> None:
        """Return once the node is in the table (at once if it is)."""
        if node_id not in self._nodes:
            await self._seen.setdefault(node_id, trio.Event()).wait()

    def remove(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    def expire(self) -> list[str]:
        now = time.monotonic()
        gone = [nid for nid, (_, exp) in self._nodes.items() if exp < now and nid not in self.pinned]
        for nid in gone:
            del self._nodes[nid]
        return gone

    def alive(self) -> list[NodeInfo]:
        now = time.monotonic()
        return [info for nid, (info, exp) in self._nodes.items() if exp >= now or nid in self.pinned]

    def get(self, node_id: str) -> NodeInfo | None:
        entry = self._nodes.get(node_id)
        return entry[0] if entry else None
