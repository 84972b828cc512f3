"""Job and execution state machines: enums plus the table of legal transitions."""

from __future__ import annotations

from enum import StrEnum

from bacalhau.errors import IllegalTransitionError


class JobState(StrEnum):
    PENDING = "pending"          # accepted by the requester, no execution running yet
    IN_PROGRESS = "in_progress"  # at least one execution was accepted
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.IN_PROGRESS, JobState.FAILED, JobState.CANCELLED}),
    JobState.IN_PROGRESS: frozenset(
        {JobState.PENDING, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class ExecutionState(StrEnum):
    """One attempt of a job on one node, as the requester sees it (and the compute node, for its part)."""

    NEW = "new"
    ASKED_FOR_BID = "asked_for_bid"
    BID_ACCEPTED = "bid_accepted"      # compute said yes, requester accepted: it runs or waits for capacity
    BID_REJECTED = "bid_rejected"      # compute said no, or the requester did not need it
    RUNNING = "running"
    PUBLISHING = "publishing"          # ran; the requester accepted the result, the node publishes it
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (
            ExecutionState.BID_REJECTED,
            ExecutionState.COMPLETED,
            ExecutionState.FAILED,
            ExecutionState.CANCELLED,
        )

    @property
    def active(self) -> bool:
        """Holds (or is about to hold) resources on its node."""
        return self in (ExecutionState.BID_ACCEPTED, ExecutionState.RUNNING, ExecutionState.PUBLISHING)


_E = ExecutionState
EXECUTION_TRANSITIONS: dict[ExecutionState, frozenset[ExecutionState]] = {
    _E.NEW: frozenset({_E.ASKED_FOR_BID, _E.BID_ACCEPTED, _E.BID_REJECTED, _E.FAILED, _E.CANCELLED}),
    _E.ASKED_FOR_BID: frozenset({_E.BID_ACCEPTED, _E.BID_REJECTED, _E.FAILED, _E.CANCELLED}),
    _E.BID_ACCEPTED: frozenset({_E.RUNNING, _E.PUBLISHING, _E.COMPLETED, _E.FAILED, _E.CANCELLED}),
    _E.RUNNING: frozenset({_E.PUBLISHING, _E.COMPLETED, _E.FAILED, _E.CANCELLED}),
    _E.PUBLISHING: frozenset({_E.COMPLETED, _E.FAILED, _E.CANCELLED}),
    _E.BID_REJECTED: frozenset(),
    _E.COMPLETED: frozenset(),
    _E.FAILED: frozenset(),
    _E.CANCELLED: frozenset(),
}


def check_job_transition(job_id: str, current: JobState, target: JobState) -> None:
    if target not in JOB_TRANSITIONS[current]:
        raise IllegalTransitionError("job", job_id, current.value, target.value)


def check_execution_transition(execution_id: str, current: ExecutionState, target: ExecutionState) -> None:
    if target not in EXECUTION_TRANSITIONS[current]:
        raise IllegalTransitionError("execution", execution_id, current.value, target.value)
