"""What requesters gossip on DASHBOARD_TOPIC, and the checks every message from a peer passes first.

A message is `{"v": 1, "hello": Hello}` (a requester says it is one, now and then), `{"v": 1, "job": JobEvent}`
(a snapshot of one of its jobs) or `{"v": 2, "jobs": [JobEvent, ...]}` (the snapshots of the jobs that changed
within one publishing interval, up to MAX_BATCH_EVENTS and MAX_BATCH_BYTES: one pubsub message, so one
signature, one check and one forward per peer, for many). A requester sends a lone snapshot as version 1, so a
node of before version 2 hears a quiet network's jobs live, and refuses a batch by its version (and catches up
through TOTALS_PROTOCOL, as after any gap). Everything in a message is hostile until checked: its size before
parsing, each field's type and size (pydantic, extra fields refused), ids parsed, times sane, and the sender,
whose signature pubsub checked, must be the requester that the event names. In a batch each snapshot is
checked alone: a bad one is refused and the others are taken.

A late joiner asks each requester on TOTALS_PROTOCOL for the aggregates of its own jobs up to a mark and its
recent jobs in detail (check_aggregate: the figures must be ones a requester could have).

An event's identity is (job id, state, updated_at): the aggregation counts a job once, a terminal state once,
however often, late or out of order its snapshots arrive.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from bacalhau.models import Engine, ExecutionState, Job, JobState, NodeType

DASHBOARD_TOPIC = "bacalhau/dashboard/1.0.0"
SYNC_PROTOCOL = "/bacalhau/dashboard/jobs/1.0.0"
TOTALS_PROTOCOL = "/bacalhau/dashboard/totals/1.0.0"    # a requester's aggregates up to a mark + jobs after
MAX_EVENT_BYTES = 8 * 1024          # a job snapshot is a few hundred bytes; refused above this, unparsed
MAX_BATCH_EVENTS = 64               # snapshots in one version-2 message
MAX_BATCH_BYTES = 64 * 1024         # a version-2 message's size; refused above this, unparsed
MAX_LABELS = 16
MAX_EXECUTIONS = 16
MAX_SYNC_JOBS = 1000                # a late joiner gets at most this many recent jobs from each requester
MAX_SYNC_BYTES = 3 * 1024 * 1024    # ... and what fits in one bprotocol frame (4 MiB) with its envelope
EARLIEST = 1_500_000_000.0          # 2017: no job of this network is older
CLOCK_SKEW = 600.0                  # a requester's clock may run this far ahead of ours

NodeId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,100}$")]
Short = Annotated[str, StringConstraints(max_length=200)]
Key = Annotated[str, StringConstraints(max_length=63)]
Value = Annotated[str, StringConstraints(max_length=255)]
Cid = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{0,100}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ExecutionBrief(_Strict):
    node_id: NodeId
    state: ExecutionState


class JobEvent(_Strict):
    job_id: Annotated[str, StringConstraints(max_length=36)]
    requester: NodeId
    state: JobState
    engine: Engine
    image: Short = ""
    client: Annotated[str, StringConstraints(max_length=100)] = ""
    labels: dict[Key, Value] = Field(default_factory=dict, max_length=MAX_LABELS)
    created_at: float
    updated_at: float
    reason: Annotated[str, StringConstraints(max_length=300)] = ""
    result_cid: Cid = ""
    executions: list[ExecutionBrief] = Field(default_factory=list, max_length=MAX_EXECUTIONS)

    @property
    def event_id(self) -> str:
        return f"{self.job_id}/{self.state.value}/{self.updated_at!r}"


class Hello(_Strict):
    node_id: NodeId
    node_types: list[NodeType] = Field(default_factory=list, max_length=2)
    # where to call it for its jobs (a node may hear its gossip through others and not be connected to it)
    addrs: list[Annotated[str, StringConstraints(max_length=200)]] = Field(default_factory=list, max_length=8)


class Message(_Strict):
    v: int
    hello: Hello | None = None
    job: JobEvent | None = None
    # version 2: each item is checked on its own (batch_events), so one bad snapshot does not cost the others
    jobs: list[Any] | None = Field(default=None, max_length=MAX_BATCH_EVENTS)


class SyncRequest(_Strict):
    limit: int = Field(default=MAX_SYNC_JOBS, ge=0, le=MAX_SYNC_JOBS)
    since: float = 0.0              # jobs updated after this (the requester's clock), newest first


class SyncReply(_Strict):
    events: list[JobEvent] = Field(default_factory=list, max_length=MAX_SYNC_JOBS)
    now: float = 0.0                # the requester's clock when it answered: the next `since`, less a margin


MAX_AGG_KEYS = 200                  # keys of one dimension in an aggregate (the most counted first)
MAX_AGG_BUCKETS = 300               # the buckets the page shows (120 minutes, 72 hours, 90 days) fit
MAX_AGG_BINS = 400                  # duration bins, all engines
MAX_JOBS_PER_SECOND = 1000          # no requester finishes more jobs than this a second, over a mark's span
MAX_AGG_JOBS = 10_000_000           # ... nor more than this between two asks (a first ask spans its history)
MAX_DURATION_BIN = 256              # store.duration_bin of 2**64 ms: past any duration a job of ours can have
AggKey = Annotated[str, StringConstraints(max_length=320)]


class Aggregate(_Strict):
    """What a requester's own jobs that ended in (since, upto] (its clock) add to each figure: terminal jobs
    only, which never change again, so a joiner can take them as a block and forget them one by one."""
    since: float
    upto: float
    totals: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=8)
    buckets: list[tuple[str, int, int, int, int, int]] = Field(default_factory=list, max_length=MAX_AGG_BUCKETS)
    counts: dict[str, dict[AggKey, Annotated[int, Field(ge=0)]]] = Field(default_factory=dict, max_length=8)
    durations: list[tuple[Engine, int, int]] = Field(default_factory=list, max_length=MAX_AGG_BINS)


class TotalsRequest(_Strict):
    since: float = Field(default=0.0, ge=0.0)     # the mark of the previous answer (the requester's clock)
    limit: int = Field(default=MAX_SYNC_JOBS, ge=0, le=MAX_SYNC_JOBS)


class TotalsReply(_Strict):
    aggregate: Aggregate
    events: list[JobEvent] = Field(default_factory=list, max_length=2 * MAX_SYNC_JOBS)  # after the mark, and unfinished
    complete: bool = True           # every unfinished job is among the events
    now: float = 0.0


def check_aggregate(agg: Aggregate, since: float, now: float | None = None) -> None:
    """Refused unless the figures could be a requester's own: a mark that moves forward and not past its clock,
    counts that add up (each dimension at most the jobs, a state per job), at most MAX_JOBS_PER_SECOND over
    the span and MAX_AGG_JOBS an answer. What a lying requester can still do: invent up to that many jobs of its
    own (its jobs are its to report), each counted once; an honest one past MAX_AGG_JOBS jobs is refused."""
    now = time.time() if now is None else now
    if agg.since != since:
        raise Refused(f"an aggregate from {agg.since!r}, asked from {since!r}")
    if not (math.isfinite(agg.upto) and since <= agg.upto <= now + CLOCK_SKEW):
        raise Refused(f"a mark of {agg.upto!r} (not between the last one and now)")
    if set(agg.totals) - {"jobs", "completed", "failed", "cancelled"}:
        raise Refused("an aggregate with unknown totals")
    jobs = agg.totals.get("jobs", 0)
    ended = sum(agg.totals.get(s, 0) for s in ("completed", "failed", "cancelled"))
    if ended != jobs:
        raise Refused(f"{jobs} jobs but {ended} ended")
    span = agg.upto - max(since, EARLIEST)
    if jobs > min(MAX_AGG_JOBS, MAX_JOBS_PER_SECOND * max(span, 1.0)):
        raise Refused(f"{jobs} jobs over {span:.0f} s")
    if set(agg.counts) - {"engine", "image", "state", "node", "label", "reason", "client"}:
        raise Refused("an aggregate with unknown dimensions")
    for dim, keys in agg.counts.items():
        if len(keys) > MAX_AGG_KEYS:
            raise Refused(f"{len(keys)} keys of {dim}")
        if dim in ("engine", "image", "state", "client", "reason") and sum(keys.values()) > jobs:
            raise Refused(f"{dim} counts more than the jobs")
        if any(n > jobs for n in keys.values()):
            raise Refused(f"a {dim} counted more than the jobs")
    if agg.counts.get("state", {}) != {s: agg.totals[s] for s in ("completed", "failed", "cancelled")
                                        if agg.totals.get(s)}:
        raise Refused("states that are not the ended totals")
    seen, per_unit = set(), dict.fromkeys(("minute", "hour", "day"), 0)
    for unit, start, n, completed, failed, cancelled in agg.buckets:
        from bacalhau.dashboard.store import UNITS

        if (unit not in UNITS or start % UNITS[unit] or (unit, start) in seen or start > agg.upto + UNITS[unit]
                or start < EARLIEST - UNITS[unit]):
            raise Refused(f"a bucket {unit[:10]!r} at {start}")
        seen.add((unit, start))
        per_unit[unit] += n
        if min(n, completed, failed, cancelled) < 0 or max(n, completed, failed, cancelled) > jobs:
            raise Refused("a bucket counting more than the jobs")
    if max(per_unit.values()) > jobs:
        raise Refused("buckets counting more than the jobs")
    for _, b, n in agg.durations:
        if not 0 <= b <= MAX_DURATION_BIN:
            raise Refused(f"a duration bin {b} no job can have")   # and 2 ** (b / 4) past a float, or SQLite's int
        if not 0 <= n <= agg.totals.get("completed", 0):
            raise Refused("durations counting more than the completed jobs")


class Refused(ValueError):
    """A peer's message that is not taken; its text says why, for one log line."""


def _malformed(exc: ValidationError) -> Refused:
    first = exc.errors()[0]
    return Refused(f"malformed: {'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}")


def parse_message(data: bytes) -> Message:
    """A version-1 hello or job event, or a version-2 batch whose snapshots are still to be checked one by one
    (batch_events)."""
    if len(data) > MAX_BATCH_BYTES:
        raise Refused(f"a message of {len(data)} bytes (at most {MAX_BATCH_BYTES})")
    try:
        msg = Message.model_validate_json(data)
    except ValidationError as exc:
        raise _malformed(exc) from None
    if msg.v == 2 and msg.jobs is not None and msg.hello is None and msg.job is None:
        return msg
    if msg.v != 1 or (msg.hello is None) == (msg.job is None) or msg.jobs is not None:
        raise Refused(f"not a version-1 hello or job event, nor a version-2 batch (v={msg.v})")
    if len(data) > MAX_EVENT_BYTES:
        raise Refused(f"a message of {len(data)} bytes (at most {MAX_EVENT_BYTES})")
    return msg


def batch_events(msg: Message) -> list[JobEvent | Refused]:
    """A version-2 message's snapshots, each parsed alone: a JobEvent, or why that one is refused."""
    out: list[JobEvent | Refused] = []
    for item in msg.jobs or ():
        try:
            out.append(JobEvent.model_validate(item))
        except ValidationError as exc:
            out.append(_malformed(exc))
    return out


def check_hello(hello: Hello, sender: str) -> None:
    if hello.node_id != sender:
        raise Refused(f"a hello for node {hello.node_id[:60]!r}")
    from bacalhau.p2p.host import addr_of_peer

    for addr in hello.addrs:
        if f"/p2p/{sender}" not in addr or not addr_of_peer(addr, sender):
            raise Refused(f"address {addr[:100]!r} is not a multiaddr of {sender}")


def check_event(event: JobEvent, sender: str, now: float | None = None) -> None:
    """Refused unless `sender` is the requester the event names and its fields are sane."""
    if event.requester != sender:
        raise Refused(f"an event of requester {event.requester[:60]!r} sent by another node")
    try:
        if str(uuid.UUID(event.job_id)) != event.job_id:
            raise ValueError
    except ValueError:
        raise Refused(f"job id {event.job_id[:40]!r} is not a UUID") from None
    now = time.time() if now is None else now
    for t in (event.created_at, event.updated_at):
        if not (math.isfinite(t) and EARLIEST <= t <= now + CLOCK_SKEW):
            raise Refused(f"a time of {t!r} (not between 2017 and now)")
    if event.updated_at < event.created_at:
        raise Refused("updated before it was created")


def image_of(job: Job) -> str:
    spec = job.spec
    if spec.engine == Engine.DOCKER and spec.docker is not None:
        return spec.docker.image[:200]
    if spec.engine == Engine.WASM and spec.wasm is not None:
        import hashlib

        digest = hashlib.sha256(spec.wasm.module.encode()).hexdigest()[:12]
        return f"wasm:{digest}:{spec.wasm.entry_point}"[:200]
    return spec.engine.value


_CID = re.compile(r"^ipfs://([A-Za-z0-9]{1,100})$")


def event_of(job: Job, requester: str) -> JobEvent:
    """A job's snapshot as its requester gossips it (sizes cut to what peers accept)."""
    result_cid = ""
    for ex in job.executions:
        match = _CID.match(ex.result_ref or "")
        if ex.state == ExecutionState.COMPLETED and match:
            result_cid = match.group(1)
    shown = [e for e in job.executions if e.state not in (ExecutionState.NEW, ExecutionState.ASKED_FOR_BID)
             and not (e.state == ExecutionState.BID_REJECTED)]
    labels = dict(list(job.spec.labels.items())[:MAX_LABELS])
    return JobEvent(
        job_id=job.id, requester=requester, state=job.state, engine=job.spec.engine, image=image_of(job),
        client=job.client_id[:100], labels={k[:63]: v[:255] for k, v in labels.items()},
        created_at=job.created_at, updated_at=max(job.updated_at, job.created_at), reason=job.reason[:300],
        result_cid=result_cid,
        executions=[ExecutionBrief(node_id=e.node_id, state=e.state) for e in shown[-MAX_EXECUTIONS:]],
    )


def dump(event: JobEvent) -> bytes:
    return Message(v=1, job=event).model_dump_json(exclude_none=True).encode()


def dump_batches(events: list[JobEvent]) -> list[bytes]:
    """The messages that carry `events`: a lone one as version 1 (every version reads it), more as version-2
    batches within MAX_BATCH_EVENTS and MAX_BATCH_BYTES each."""
    if len(events) == 1:
        return [dump(events[0])]
    head, tail = b'{"v":2,"jobs":[', b"]}"
    out: list[bytes] = []
    parts: list[bytes] = []
    size = len(head) + len(tail)
    for event in events:
        part = event.model_dump_json().encode()
        if parts and (len(parts) >= MAX_BATCH_EVENTS or size + len(part) + 1 > MAX_BATCH_BYTES):
            out.append(head + b",".join(parts) + tail)
            parts, size = [], len(head) + len(tail)
        parts.append(part)
        size += len(part) + 1
    if parts:
        out.append(head + b",".join(parts) + tail)
    return out


def dump_hello(hello: Hello) -> bytes:
    return Message(v=1, hello=hello).model_dump_json(exclude_none=True).encode()


def as_dict(event: JobEvent) -> dict[str, Any]:
    return event.model_dump(mode="json")
