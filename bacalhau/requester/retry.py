"""Retry strategies: a chain where the first that decides wins. Each sees the job and its executions.

The requester asks the chain whenever an attempt failed; `None` from a strategy passes the question on.
A chain that nobody answers means: retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bacalhau.models import ExecutionState, Job


@dataclass(frozen=True)
class Decision:
    retry: bool
    reason: str = ""
    delay: float = 0.0


class RetryStrategy(Protocol):
    def decide(self, job: Job) -> Decision | None: ...


@dataclass(frozen=True)
class MaxAttempts:
    attempts: int

    def decide(self, job: Job) -> Decision | None:
        failed = [e for e in job.executions if e.state == ExecutionState.FAILED]
        if len(failed) >= self.attempts:
            return Decision(False, f"gave up after {len(failed)} failed attempt{'s' if len(failed) > 1 else ''}")
        return None


@dataclass(frozen=True)
class Backoff:
    base: float = 0.0
    factor: float = 2.0
    cap: float = 30.0

    def decide(self, job: Job) -> Decision | None:
        failed = sum(1 for e in job.executions if e.state == ExecutionState.FAILED)
        if not failed or not self.base:
            return None
        return Decision(True, "retrying with backoff", min(self.cap, self.base * self.factor ** (failed - 1)))


def chain_for(job: Job, default: list[RetryStrategy]) -> list[RetryStrategy]:
    """The node's configured chain, with the job's own retry spec applied: its max_attempts replaces the
    node's, and its backoff goes last (reached only when nothing before it said stop)."""
    chain = list(default)
    if job.spec.retry.max_attempts is not None:
        chain = [MaxAttempts(job.spec.retry.max_attempts), *(s for s in chain if not isinstance(s, MaxAttempts))]
    if job.spec.retry.backoff:
        chain.append(Backoff(base=job.spec.retry.backoff))
    return chain


def decide(chain: list[RetryStrategy], job: Job) -> Decision:
    for strategy in chain:
        decision = strategy.decide(job)
        if decision is not None:
            return decision
    return Decision(True)


def attempts_summary(job: Job) -> str:
    failed = [e for e in job.executions if e.state == ExecutionState.FAILED]
    return "; ".join(f"attempt {i} on {e.node_id[:12]}…: {e.reason}" for i, e in enumerate(failed, 1))
