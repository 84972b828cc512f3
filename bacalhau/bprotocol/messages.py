"""bprotocol messages: one versioned protocol id per RPC, one pydantic model per request.

Requester -> compute:  ask_for_bid, ask_for_bid_approved, bid_accepted, bid_rejected, result_accepted, result_rejected, cancel,
                       execution_status
Compute -> requester:  on_bid_complete, on_run_complete, on_publish_complete, on_run_published,
                       on_cancel_complete, on_compute_failure
Streams (compute):     get_result (a file or tar of an execution's result, as raw bytes after one frame)

A pre-approved ask (ask_for_bid_approved: the requester needs this one execution and asked only this node, as
Go Bacalhau's AskForBidRequest without WaitForApproval) is answered with the bid itself (a BidResult); a yes
starts at once, a run that ends well is published at once, and the node tells the requester once
(on_run_published: the RunResult and the result_ref). Three calls a job fewer than ask, on_bid_complete,
bid_accepted, on_run_complete, result_accepted, on_publish_complete. A node of before it does not speak the
protocol (UnsupportedProtocolError): the requester asks it the old way.

Every reply is an Envelope: either `result` or an `error` with a code, so the caller raises the right type.
Every id in a message is typed (bprotocol/ids.py): a malformed one is refused as a bad request at decoding.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator

from bacalhau.bprotocol.ids import ExecutionId, JobId, NodeId, ResultItem, ResultRef, parse_execution_id
from bacalhau.models import ExecutionState, Job, RunResult
from bacalhau.models.job import TAIL_BYTES

COMPUTE = "/bacalhau/compute"
CALLBACK = "/bacalhau/callback"

ASK_FOR_BID = f"{COMPUTE}/ask_for_bid/1.0.0"
ASK_FOR_BID_APPROVED = f"{COMPUTE}/ask_for_bid_approved/1.0.0"     # an AskForBidRequest; the reply a BidResult
BID_ACCEPTED = f"{COMPUTE}/bid_accepted/1.0.0"
BID_REJECTED = f"{COMPUTE}/bid_rejected/1.0.0"
RESULT_ACCEPTED = f"{COMPUTE}/result_accepted/1.0.0"
RESULT_REJECTED = f"{COMPUTE}/result_rejected/1.0.0"
CANCEL = f"{COMPUTE}/cancel/1.0.0"
EXECUTION_STATUS = f"{COMPUTE}/execution_status/1.0.0"
GET_RESULT = f"{COMPUTE}/get_result/1.0.0"

ON_BID_COMPLETE = f"{CALLBACK}/on_bid_complete/1.0.0"
ON_RUN_COMPLETE = f"{CALLBACK}/on_run_complete/1.0.0"
ON_PUBLISH_COMPLETE = f"{CALLBACK}/on_publish_complete/1.0.0"
ON_RUN_PUBLISHED = f"{CALLBACK}/on_run_published/1.0.0"         # a pre-approved execution ran and is published
ON_CANCEL_COMPLETE = f"{CALLBACK}/on_cancel_complete/1.0.0"
ON_COMPUTE_FAILURE = f"{CALLBACK}/on_compute_failure/1.0.0"


MAX_PEER_ERROR_CHARS = 4096   # a run's error as a peer reports it (stored, shown by describe and every wait)


def _bounded_tail(result: RunResult) -> RunResult:
    # stderr_tail is capped by its model; stdout_tail, older, is not there (a row an older requester stored
    # from a peer must still read): refused here, on the way in, as every executor keeps its last TAIL_BYTES
    if len(result.stdout_tail) > TAIL_BYTES:
        raise ValueError(f"stdout_tail over {TAIL_BYTES} characters (an executor keeps its last {TAIL_BYTES} bytes)")
    if len(result.error) > MAX_PEER_ERROR_CHARS:     # a run's own failure, in a peer's words: kept, cut short
        return result.model_copy(update={"error": result.error[:MAX_PEER_ERROR_CHARS] + " [cut]"})
    return result


PeerResult = Annotated[RunResult, AfterValidator(_bounded_tail)]   # a run's result as a peer reports it


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AskForBidRequest(_Msg):
    execution_id: ExecutionId
    requester_id: NodeId
    job: Job

    @field_validator("job")
    @classmethod
    def _job_id(cls, job: Job) -> Job:
        parse_execution_id(job.id)   # the same canonical UUID form (the job id labels containers)
        return job


class ExecutionRequest(_Msg):
    """bid_accepted, result_accepted: just which execution."""

    execution_id: ExecutionId


class ExecutionReasonRequest(_Msg):
    """bid_rejected, result_rejected, cancel."""

    execution_id: ExecutionId
    reason: str = ""


class BidResult(_Msg):
    execution_id: ExecutionId
    job_id: JobId
    node_id: NodeId
    accepted: bool
    reason: str = ""
    log_stream_addr: str = ""   # where this node serves the execution's logs (multiaddr; protocol in compute/logs)


class RunComplete(_Msg):
    execution_id: ExecutionId
    job_id: JobId
    node_id: NodeId
    result: PeerResult


class PublishComplete(_Msg):
    execution_id: ExecutionId
    job_id: JobId
    node_id: NodeId
    result_ref: ResultRef


class RunPublished(_Msg):
    """A pre-approved execution's outcome: on_run_complete and on_publish_complete in one."""

    execution_id: ExecutionId
    job_id: JobId
    node_id: NodeId
    result: PeerResult
    result_ref: ResultRef


class CancelComplete(_Msg):
    execution_id: ExecutionId
    job_id: JobId
    node_id: NodeId


class ComputeFailure(_Msg):
    execution_id: ExecutionId
    job_id: JobId
    node_id: NodeId
    reason: str
    # False: the job's own doing, decided by the node (it holds the spec); not retried on another node. On the
    # wire only when False (see CallbackProxy.on_compute_failure): a requester of before it reads the rest
    retry: bool = True


class ExecutionStatus(_Msg):
    """What a compute node knows of an execution: how a restarted requester catches up."""

    execution_id: ExecutionId
    state: ExecutionState
    reason: str = ""
    result: PeerResult | None = None
    result_ref: str = ""


class GetResultRequest(_Msg):
    execution_id: ExecutionId
    item: ResultItem


class Ack(_Msg):
    pass


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"          # malformed, oversize or unknown message
    NOT_FOUND = "not_found"              # no such execution on this node
    ILLEGAL_STATE = "illegal_state"      # the message does not fit the execution's state
    UNAVAILABLE = "unavailable"          # the node is shutting down
    INTERNAL = "internal"


class WireError(_Msg):
    code: ErrorCode
    message: str


class Envelope(_Msg):
    result: dict[str, Any] | None = None
    error: WireError | None = None
