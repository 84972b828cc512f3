"""Bid strategies: a chain where the first that says no decides; all say yes, the node bids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bacalhau.compute.capacity import effective
from bacalhau.config import JobLimits
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.models import Engine, Job, Network, Resources
from bacalhau.models.selector import matches, parse_selector
from bacalhau.storage.ipfs import holds


@dataclass(frozen=True)
class BidContext:
    engines: frozenset[Engine]
    capacity_total: Resources
    labels: dict[str, str]
    blockstore: Blockstore | None = None
    limits: JobLimits = JobLimits()


class BidStrategy(Protocol):
    def reject_reason(self, job: Job, ctx: BidContext) -> str | None: ...


class EngineInstalled:
    def reject_reason(self, job: Job, ctx: BidContext) -> str | None:
        if job.spec.engine not in ctx.engines:
            return f"the {job.spec.engine.value} engine is not installed on this node"
        return None


class FitsCapacity:
    def reject_reason(self, job: Job, ctx: BidContext) -> str | None:
        if not effective(job.spec.resources, ctx.limits, job.spec.engine).fits_in(ctx.capacity_total):
            return "the job asks for more resources than this node has in total"
        return None


class MatchesSelector:
    def reject_reason(self, job: Job, ctx: BidContext) -> str | None:
        if job.spec.node_selector and not matches(parse_selector(job.spec.node_selector), ctx.labels):
            return f"node labels do not match selector {job.spec.node_selector!r}"
        return None


class WithinMaxTimeout:
    def reject_reason(self, job: Job, ctx: BidContext) -> str | None:
        # written so that NaN is refused too
        if not job.spec.timeout <= ctx.limits.max_timeout:
            return (f"the job's timeout of {job.spec.timeout:g}s is over this node's maximum of "
                    f"{ctx.limits.max_timeout:g}s: ask for less (--timeout)")
        return None


class NetworkAllowed:
    def reject_reason(self, job: Job, ctx: BidContext) -> str | None:
        if job.spec.network == Network.HOST and not ctx.limits.allow_host_network:
            return ("the job asks for host networking, which this node does not allow (its operator can "
                    "allow it with `bacalhau serve --allow-host-network`)")
        return None


DEFAULT_BID_STRATEGIES: list[BidStrategy] = [
    EngineInstalled(), NetworkAllowed(), WithinMaxTimeout(), FitsCapacity(), MatchesSelector(),
]


def lacks_inputs(job: Job, ctx: BidContext) -> bool:
    """True when the job has ipfs:// inputs this node would have to fetch first."""
    return any(spec.source.startswith("ipfs://") and (ctx.blockstore is None or not holds(ctx.blockstore, spec.source))
               for spec in job.spec.inputs)


def bid(job: Job, ctx: BidContext, strategies: list[BidStrategy] = DEFAULT_BID_STRATEGIES) -> str | None:
    """None to bid, else the reason not to."""
    for strategy in strategies:
        reason = strategy.reject_reason(job, ctx)
        if reason is not None:
            return reason
    return None
