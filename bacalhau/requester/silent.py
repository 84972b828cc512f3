"""Compute nodes whose asks go unanswered, kept out of placement for a while.

One node is asked per plain job: a node that takes asks and never answers cost each job placed on it the whole
call (or bid) timeout before another node was tried, and it kept being chosen (nothing it runs, it looks idle).
After an ask of it goes unanswered it is left out of ranking for SILENT_FOR seconds, twice as long at each
repeat (up to SILENT_FOR_MAX); once that time is up, one job at a time is placed on it until it answers, which
clears it. A node is left out only while others can take the job (the caller falls back to every node).
One not asked again for SILENT_FOR_MAX after its time was up is forgotten: peer ids cost nothing, and a peer
joining as node after node, each silent once, was held (and walked at each placement) for the requester's life.
"""

from __future__ import annotations

import trio

SILENT_FOR = 5.0
SILENT_FOR_MAX = 120.0


class SilentNodes:
    def __init__(self) -> None:
        self._until: dict[str, float] = {}     # node id -> when it may be asked again
        self._strikes: dict[str, int] = {}
        self._probing: set[str] = set()        # past its time, one ask out: left out until that one is answered

    def left_out(self) -> set[str]:
        if not self._until:
            return set()
        now = trio.current_time()
        out = set(self._probing)
        gone = []
        for n, until in self._until.items():
            if until > now:
                out.add(n)
            elif until < now - SILENT_FOR_MAX and n not in self._probing:
                gone.append(n)      # not asked again since its time was up: gone, or to be marked afresh
        for n in gone:
            del self._until[n]
            self._strikes.pop(n, None)
        return out

    def asked(self, node_id: str) -> bool:
        """An ask is going to the node: one of a node kept out before is its probe (True: this one is)."""
        if node_id in self._until and node_id not in self._probing:
            self._probing.add(node_id)
            return True
        return False

    def not_sent(self, node_id: str) -> None:
        """The probe `asked` marked is not going after all (its job was refused): another ask may be it."""
        self._probing.discard(node_id)

    def answered(self, node_id: str) -> None:
        if node_id in self._until:
            del self._until[node_id]
            self._strikes.pop(node_id, None)
            self._probing.discard(node_id)

    def unanswered(self, node_id: str) -> None:
        strikes = self._strikes[node_id] = self._strikes.get(node_id, 0) + 1
        self._until[node_id] = trio.current_time() + min(SILENT_FOR_MAX, SILENT_FOR * 2 ** (strikes - 1))
        self._probing.discard(node_id)
