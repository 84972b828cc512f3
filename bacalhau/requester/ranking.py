"""Node ranking: filters that say why a node cannot take a job, then an order among the rest.

When no node is left, the reasons are summed up into the job's failure message: "no node has the docker
engine" when one reason holds for all, else "no node can take the job (3 compute nodes: 2 without the
docker engine, 1 not matching selector 'zone=eu')".
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from bacalhau.compute.capacity import effective
from bacalhau.models import Job, NodeInfo, NodeType, Resources
from bacalhau.models.selector import matches, parse_selector
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


class MatchesLabels:
    def reject_reason(self, job: Job, node: NodeInfo) -> Why | None:
        selector = job.spec.node_selector
        if not selector or matches(parse_selector(selector), node.labels):
            return None
        return Why(f"matches selector {selector!r}", f"not matching selector {selector!r}")


class HasCapacity:
    def reject_reason(self, job: Job, node: NodeInfo) -> Why | None:
        if effective(job.spec.resources).fits_in(node.capacity_total):
            return None
        return Why("has the resources the job asks for", "too small for the job's resources")


DEFAULT_FILTERS: list[NodeFilter] = [HasEngine(), MatchesLabels(), HasCapacity()]
NO_COMPUTE_NODE = "no compute node is known to this requester"
ALREADY_TRIED = Why("is left that was not already tried for this job", "already tried for this job")


SAMPLE = 16      # nodes ranked a job when more can take it: the best of a random few, as many nodes as there are


def projected_free(job: Job, load: Load) -> Resources:
    """What the node had free at its report, less what was placed on it since (each the job's size: the
    requester does not know their sizes, and most jobs of a burst are alike)."""
    size = effective(job.spec.resources)
    return load.info.capacity_free - Resources.model_construct(cpu=size.cpu * load.extra,
                                                               memory=size.memory * load.extra)


def fits_now(job: Job, load: Load) -> bool:
    return effective(job.spec.resources).fits_in(projected_free(job, load))


def _score(job: Job, load: Load) -> tuple[float, ...]:
    """Higher is better: room free now, then the larger share of CPU free, then fewer executions per core
    (running, queued and placed since the report), then fewer queued."""
    node = load.info
    cores = node.capacity_total.cpu or 1.0
    share_free = projected_free(job, load).cpu / cores
    return (1.0 if fits_now(job, load) else 0.0, share_free, -(node.running + load.extra) / cores,
            -float(node.queued))


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
    ok.sort(key=lambda n: _score(job, n), reverse=True)
    if ok:
        return ok, ""
    if not compute:
        return [], NO_COMPUTE_NODE
    if len(reasons) == 1:
        return [], f"no node {next(iter(reasons)).none_has}"
    parts = ", ".join(f"{count} {why.without}" for why, count in reasons.most_common())
    return [], f"no node can take the job ({compute} compute nodes: {parts})"
