"""Node ranking: filters that say why a node cannot take a job, then an order among the rest.

The order reads each node as the requester reckons it now (`Load`: this requester's executions on it that
have not ended, plus other requesters' work as its last report showed it), least loaded first, so equal
nodes share a burst evenly instead of by luck or by when their reports came. The walk may stop at a sample
of the nodes (`rank_loads(..., sample=)`): a job costs the same to place on three nodes or a thousand.

When no node is left, the reasons are summed up into the job's failure message: "no node has the docker
engine" when one reason holds for all, else "no node can take the job (3 compute nodes: 2 without the
docker engine, 1 not matching selector 'zone=eu')".
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from bacalhau.compute.capacity import effective
from bacalhau.models import Job, NodeInfo, NodeType, Resources
from bacalhau.models.selector import Requirement, matches, parse_selector
from bacalhau.requester.nodes import Load


class Why(NamedTuple):
    none_has: str        # completes "no node ..."
    without: str         # completes "N ..."


class NodeFilter(Protocol):
    def reject_reason(self, job: Job, node: NodeInfo) -> Why | None: ...


class HasEngine:
    def reject_reason(self, job: Job, node: NodeInfo) -> Why | None:
        if job.spec.engine in node.engines:
            return None
        engine = job.spec.engine.value
        return Why(f"has the {engine} engine", f"without the {engine} engine")


@functools.lru_cache(maxsize=256)
def _parsed(selector: str) -> list[Requirement]:
    return parse_selector(selector)     # once per selector, not once per node ranked


class MatchesLabels:
    def reject_reason(self, job: Job, node: NodeInfo) -> Why | None:
        selector = job.spec.node_selector
        if not selector or matches(_parsed(selector), node.labels):
            return None
        return Why(f"matches selector {selector!r}", f"not matching selector {selector!r}")


class HasCapacity:
    def __init__(self) -> None:
        self._last: tuple[Resources, Resources] | None = None    # (asked, its effective size): one per job

    def reject_reason(self, job: Job, node: NodeInfo) -> Why | None:
        asked = job.spec.resources
        if self._last is None or self._last[0] is not asked:      # the same job's, node after node
            self._last = (asked, effective(asked))
        if self._last[1].fits_in(node.capacity_total):
            return None
        return Why("has the resources the job asks for", "too small for the job's resources")


DEFAULT_FILTERS: list[NodeFilter] = [HasEngine(), MatchesLabels(), HasCapacity()]
NO_COMPUTE_NODE = "no compute node is known to this requester"
ALREADY_TRIED = Why("is left that was not already tried for this job", "already tried for this job")


SAMPLE = 16      # nodes ranked a job when more can take it: the best of a random few, as many nodes as there are


def projected_free(size: Resources, load: Load) -> tuple[float, int]:
    """CPU and memory the node had free at its report, less what is on it now beyond the report (each of
    `size`, the job's: the requester does not know their sizes, and the jobs of a burst are mostly alike),
    never more than the node has."""
    free, total = load.info.capacity_free, load.info.capacity_total
    return (min(total.cpu, free.cpu - size.cpu * load.extra),
            min(total.memory, free.memory - size.memory * load.extra))


def fits_now(job: Job, load: Load, size: Resources | None = None) -> bool:
    size = size or effective(job.spec.resources)
    cpu, memory = projected_free(size, load)
    return size.cpu <= cpu + 1e-9 and size.memory <= memory


def _score(size: Resources, load: Load) -> tuple[float, ...]:
    """Higher is better: room free now, then the larger share of CPU free, then fewer executions per core
    (running, queued and placed since the report), then fewer queued; between equals, the one this requester
    placed on least recently (jobs that end within milliseconds leave equal nodes equal at every ranking: a
    burst spread by the shuffle's luck alone, 79 to 111 of 300 on three nodes)."""
    node = load.info
    cores = node.capacity_total.cpu or 1.0
    cpu, memory = projected_free(size, load)
    fits = size.cpu <= cpu + 1e-9 and size.memory <= memory
    return (1.0 if fits else 0.0, max(0.0, cpu) / cores, -(node.running + load.extra) / cores, -float(node.queued),
            -float(load.placed_at))


def rank_nodes(
    job: Job, nodes: list[NodeInfo], exclude: set[str], filters: list[NodeFilter] = DEFAULT_FILTERS
) -> tuple[list[NodeInfo], str]:
    """Nodes able to take the job, best first (on their reports alone), and (when none is) a sentence saying why."""
    ranked, why = rank_loads(job, (Load(n) for n in nodes), exclude, filters)
    return [load.info for load in ranked], why


def rank_loads(
    job: Job, nodes: Iterable[Load], exclude: set[str], filters: list[NodeFilter] = DEFAULT_FILTERS,
    *, sample: int | None = None,
) -> tuple[list[Load], str]:
    """Nodes able to take the job, best first, and (when none is) a sentence saying why. With `sample`, the
    walk stops once that many can take the job (pass nodes in a random order, as NodeTable.sample does)."""
    ok: list[Load] = []
    compute = 0
    reasons: Counter[Why] = Counter()
    for load in nodes:
        node = load.info
        if NodeType.COMPUTE not in node.node_types:
            continue
        compute += 1
        why = ALREADY_TRIED if node.node_id in exclude else next(
            (w for f in filters if (w := f.reject_reason(job, node)) is not None), None
        )
        if why is None:
            ok.append(load)
            if sample is not None and len(ok) >= sample:
                break
        else:
            reasons[why] += 1
    random.shuffle(ok)  # equals stay equal: spread a burst of jobs instead of always asking the same nodes
    size = effective(job.spec.resources)
    ok.sort(key=lambda n: _score(size, n), reverse=True)
    if ok:
        return ok, ""
    if not compute:
        return [], NO_COMPUTE_NODE
    if len(reasons) == 1:
        return [], f"no node {next(iter(reasons)).none_has}"
    parts = ", ".join(f"{count} {why.without}" for why, count in reasons.most_common())
    return [], f"no node can take the job ({compute} compute nodes: {parts})"
