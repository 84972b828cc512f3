"""Attacks on a late joiner's catch-up (issue 13): a requester answering with aggregates it could not have,
marks that go back or past its clock, other requesters' jobs, answers replayed. Each is refused whole (one log
line) and the joiner's figures and mark do not move; the node goes on.

The hostile requester is a stand-in transport that returns the crafted answer's bytes: what a peer's stream
delivers, byte for byte, without a second libp2p host per case (tests/test_dashboard.py runs the real path)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from bacalhau.dashboard import events as ev
from bacalhau.dashboard.service import Dashboard
from bacalhau.dashboard.store import DashboardStore
from bacalhau.models import Engine, JobState

REQ = "12D3KooWRequester"
OTHER = "12D3KooWOther"


class Peer:
    """The hostile requester: answers the totals protocol with whatever `answer` holds."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[dict[str, Any]] = []

    def register(self, protocol: str, handler: Any) -> None:
        pass

    async def call(self, peer: str, protocol: str, payload: bytes, *, timeout: float) -> bytes:
        assert protocol == ev.TOTALS_PROTOCOL
        self.asked.append(json.loads(payload))
        body = self.answer(self.asked[-1]) if callable(self.answer) else self.answer
        return json.dumps({"result": body}).encode()


def job(requester: str = REQ, state: JobState = JobState.COMPLETED, at: float | None = None) -> ev.JobEvent:
    at = time.time() - 100 if at is None else at
    return ev.JobEvent(job_id=str(uuid.uuid4()), requester=requester, state=state, engine=Engine.NOOP,
                       image="noop", created_at=at - 1, updated_at=at)


def answer(since: float = 0.0, upto: float | None = None, jobs: int = 1, **agg: Any) -> dict[str, Any]:
    upto = time.time() - 60 if upto is None else upto
    body: dict[str, Any] = {"since": since, "upto": upto, "totals": {"jobs": jobs, "completed": jobs},
                            "counts": {"state": {"completed": jobs}, "engine": {"noop": jobs}}, "buckets": [],
                            "durations": []}
    body.update(agg)
    return {"aggregate": body, "events": [], "complete": True, "now": time.time()}


async def joiner(tmp_path: Path, peer: Peer) -> Dashboard:
    store = DashboardStore(tmp_path / "dashboard.db")
    await store.ingest([job(OTHER), job(REQ)])        # what it heard before: one job of each
    return Dashboard(node_id="12D3KooWSelf", store=store, node_info_ttl=5, hello_interval=1, transport=peer)


async def refused(tmp_path: Path, body: Any) -> Dashboard:
    peer = Peer(body)
    d = await joiner(tmp_path, peer)
    before = await d.store.snapshot(time.time())
    await d._sync_from(REQ)
    assert len(peer.asked) == 1 and peer.asked[0]["since"] == 0.0
    assert await d.store.snapshot(time.time()) == before       # nothing moved
    assert await d.store.mark_of(REQ) == 0.0
    return d


async def test_an_honest_answer_is_taken(tmp_path: Path) -> None:
    # the control: the same stand-in with a sane answer moves the figures (so the refusals below are real)
    d = await joiner(tmp_path, Peer(answer(jobs=5, upto=time.time() - 60)))
    await d._sync_from(REQ)
    s = await d.store.summary()
    assert (s["jobs"], s["completed"]) == (1 + 5, 1 + 5)       # its own job it had counted is now in the 5
    assert await d.store.mark_of(REQ) > 0 and d.refused == 0
    d.store.close()


async def test_counts_a_requester_could_not_have_are_refused(tmp_path: Path) -> None:
    now = time.time()
    cases = {
        "more jobs than a second of its span allows": answer(jobs=10**12),
        "more jobs than one answer may hold": answer(jobs=ev.MAX_AGG_JOBS + 1, since=0.0),
        "jobs that did not end": answer(totals={"jobs": 5, "completed": 2}),
        "a key counted more than the jobs": answer(counts={"state": {"completed": 1}, "image": {"x": 9}}),
        "a dimension summing past the jobs": answer(jobs=2, counts={"state": {"completed": 2},
                                                                     "image": {"a": 2, "b": 2}}),
        "states that are not the totals": answer(counts={"state": {"failed": 1}}),
        "an unknown dimension": answer(counts={"state": {"completed": 1}, "secret": {"a": 1}}),
        "too many keys": answer(jobs=1000, counts={"state": {"completed": 1000},
                                                    "label": {f"k={i}": 1 for i in range(ev.MAX_AGG_KEYS + 1)}}),
        "a bucket off the grid": answer(buckets=[["minute", 61, 1, 1, 0, 0]]),
        "a bucket of an unknown unit": answer(buckets=[["year", 0, 1, 1, 0, 0]]),
        "buckets past the jobs": answer(buckets=[["minute", 60, 1, 1, 0, 0], ["minute", 120, 1, 1, 0, 0]]),
        "a negative bucket": answer(buckets=[["minute", 60, -5, 0, 0, 0]]),
        "durations past the completed": answer(durations=[["noop", 3, 2]]),
        # these three were taken, and then crashed the node (past SQLite's integers) or every later read of
        # its durations (2 ** (bin / 4) past a float), for good
        "a duration bin past SQLite's integers": answer(durations=[["noop", 2**70, 1]]),
        "a duration bin no job can have": answer(durations=[["noop", 100000, 1]]),
        "a bucket before any job, past SQLite's integers": answer(buckets=[["minute", -60 * 2**64, 1, 1, 0, 0]]),
        "a negative total": answer(totals={"jobs": -3, "completed": -3}),
        "a mark past its clock": answer(upto=now + 10 * ev.CLOCK_SKEW),
        "a mark that is not a number": {**answer(), "aggregate": {**answer()["aggregate"], "upto": "NaN"}},
        "from another mark than asked": answer(since=5.0),
        "another requester's job": {**answer(), "events": [json.loads(job(OTHER).model_dump_json())]},
        "a job from the future": {**answer(), "events": [json.loads(job(at=now + 10 * ev.CLOCK_SKEW)
                                                                    .model_dump_json())]},
        "an extra field": {**answer(), "debug": 1},
    }
    for i, (why, body) in enumerate(cases.items()):
        try:
            d = await refused(tmp_path / str(i), body)
        except AssertionError as exc:
            raise AssertionError(f"{why}: taken") from exc
        d.store.close()


async def test_a_mark_cannot_go_back_and_an_old_answer_is_not_taken_twice(tmp_path: Path) -> None:
    first = time.time() - 600
    d = await joiner(tmp_path, Peer(answer(jobs=3, upto=first)))
    await d._sync_from(REQ)
    once = await d.store.summary()
    assert once["jobs"] == 2 + 3      # its heard job ended after the mark: counted apart
    for body in (answer(since=0.0, jobs=3, upto=first),            # the same answer replayed
                 answer(since=first, jobs=1, upto=first - 100)):   # a mark going back
        d._transport = Peer(body)
        await d._sync_from(REQ)
        assert await d.store.summary() == once and await d.store.mark_of(REQ) == first
    d.store.close()


async def test_a_requester_cannot_uncount_another_requesters_jobs(tmp_path: Path) -> None:
    d = await joiner(tmp_path, Peer(answer(jobs=0, totals={"jobs": 0}, counts={})))
    await d.store.ingest([job(OTHER, JobState.IN_PROGRESS)])
    await d._sync_from(REQ)          # "complete, nothing unfinished": says nothing of the other's jobs
    s = await d.store.summary()
    assert (s["jobs"], s["running"]) == (2, 1)    # REQ's own heard job is its to answer for (now 0), OTHER's stay
    b = await d.store.breakdowns()
    assert {r["key"]: r["count"] for r in b["state"]} == {"completed": 1, "in_progress": 1}
    d.store.close()


def test_what_a_lying_requester_can_still_do_is_capped_by_its_span() -> None:
    now = time.time()
    agg = ev.Aggregate.model_validate(answer(since=now - 200, upto=now - 100,
                                             jobs=ev.MAX_JOBS_PER_SECOND * 100)["aggregate"])
    ev.check_aggregate(agg, now - 200, now)           # its own jobs are its to report: up to the cap, taken
    agg = ev.Aggregate.model_validate(answer(since=now - 200, upto=now - 100,
                                             jobs=ev.MAX_JOBS_PER_SECOND * 100 + 1)["aggregate"])
    try:
        ev.check_aggregate(agg, now - 200, now)
    except ev.Refused as exc:
        assert "jobs over 100 s" in str(exc)
    else:
        raise AssertionError("one job past the cap was taken")


async def test_an_asker_that_asks_again_and_again_is_answered_once_a_second(tmp_path: Path) -> None:
    # each answer reads the requester's ended jobs since the asker's mark (all of them from 0): a peer asking in
    # a loop would keep its database busy; it gets one answer, then a reason, and others are still answered
    from bacalhau.bprotocol.framing import parse_reply
    from bacalhau.errors import RemoteError

    store = DashboardStore(tmp_path / "dashboard.db")
    await store.ingest([job(REQ) for _ in range(50)])
    d = Dashboard(node_id=REQ, store=store, node_info_ttl=5, hello_interval=1)
    ask = ev.TotalsRequest().model_dump_json().encode()
    assert parse_reply(await d._answer_totals("12D3KooWGreedy", ask), ev.TotalsReply).aggregate.since == 0.0
    for _ in range(20):
        try:
            parse_reply(await d._answer_totals("12D3KooWGreedy", ask), ev.TotalsReply)
        except RemoteError as exc:
            assert "asked again within 1 s" in str(exc)
        else:
            raise AssertionError("answered again at once")
    reply = parse_reply(await d._answer_totals("12D3KooWPolite", ask), ev.TotalsReply)
    assert len(reply.events) == 50
    store.close()
