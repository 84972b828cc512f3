"""The compute side's shortcuts keep the checks of the long way: a node's calls to itself skip JSON but are
refused and answered as a remote caller's are (bprotocol/transport.py `call_self`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.framing import encode, parse_reply
from bacalhau.bprotocol.ids import is_peer_id, parse_execution_id
from bacalhau.bprotocol.transport import LocalTransport, typed_handler
from bacalhau.errors import ProtocolError, RemoteError
from bacalhau.executors.types import ExecutionDir
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.unixfs import add_path, cid_to_bytes
from bacalhau.models import Job, JobSpec, NodeType, NoopSpec, new_id
from bacalhau.node import Node
from tests.conftest import node_config

Way = Callable[[LocalTransport, str, BaseModel, type[BaseModel]], Awaitable[BaseModel]]


async def by_object(t: LocalTransport, proto: str, msg: BaseModel, reply: type[BaseModel]) -> BaseModel:
    return await t.call_self(proto, msg, reply, timeout=5)


async def by_bytes(t: LocalTransport, proto: str, msg: BaseModel, reply: type[BaseModel]) -> BaseModel:
    return parse_reply(await t.call(t.self_id, proto, encode(msg), timeout=5), reply)


async def script(t: LocalTransport, call: Way) -> list[object]:
    """Every compute-node message, good and bad, one way; outcomes with the execution ids taken out."""
    ex, other, third = new_id(), new_id(), new_id()
    job = Job(spec=JobSpec(engine="noop", noop=NoopSpec(stdout="x")))
    me = t.self_id
    msgs: list[tuple[str, BaseModel, type[BaseModel]]] = [
        (m.ASK_FOR_BID, m.AskForBidRequest(execution_id=ex, requester_id=me, job=job), m.Ack),
        (m.ASK_FOR_BID, m.AskForBidRequest(execution_id=ex, requester_id=me, job=job), m.Ack),   # taken
        (m.ASK_FOR_BID, m.AskForBidRequest(execution_id=other, requester_id="mem-0123456789ab", job=job), m.Ack),
        (m.EXECUTION_STATUS, m.ExecutionRequest(execution_id=ex), m.ExecutionStatus),
        (m.BID_REJECTED, m.ExecutionReasonRequest(execution_id=ex, reason="no"), m.Ack),
        (m.EXECUTION_STATUS, m.ExecutionRequest(execution_id=ex), m.ExecutionStatus),
        (m.BID_ACCEPTED, m.ExecutionRequest(execution_id=ex), m.Ack),                       # not NEW any more
        (m.RESULT_ACCEPTED, m.ExecutionRequest(execution_id=other), m.Ack),                 # no such execution
        (m.CANCEL, m.ExecutionReasonRequest(execution_id=ex, reason="late"), m.Ack),        # terminal: a no-op
        # built past validation: a path for an id, an unknown field, a job id that is no UUID
        (m.BID_ACCEPTED, m.ExecutionRequest.model_construct(execution_id="../../etc"), m.Ack),
        (m.CANCEL, m.ExecutionReasonRequest.model_construct(execution_id=ex, reason=5), m.Ack),
        (m.ASK_FOR_BID, m.AskForBidRequest.model_construct(
            execution_id=new_id(), requester_id=me, job=Job.model_construct(id="../x", spec=job.spec)), m.Ack),
        # the reply is not what the caller expects
        (m.ASK_FOR_BID, m.AskForBidRequest(execution_id=third, requester_id=me, job=job), m.Ack),
        (m.BID_REJECTED, m.ExecutionReasonRequest(execution_id=third), m.ExecutionStatus),
    ]
    outcomes: list[object] = []
    for proto, msg, reply in msgs:
        try:
            got: object = (await call(t, proto, msg, reply)).model_dump(mode="json")
        except RemoteError as exc:
            got = ("remote", exc.code, str(exc))
        except ProtocolError as exc:
            got = ("protocol", type(exc).__name__)
        outcomes.append(str(got).replace(ex, "EX").replace(other, "OTHER").replace(third, "THIRD"))
    return outcomes


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")   # the model_construct'ed reason=5, as JSON
async def test_a_self_call_and_a_call_as_bytes_give_the_same_answers_and_errors(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "n", node_types=(NodeType.COMPUTE,),
                                                    serve_api=False, engines=("noop",))).run)
        t = node.transport
        assert isinstance(t, LocalTransport)
        fast, slow = await script(t, by_object), await script(t, by_bytes)
        assert fast == slow
        # and the script met what it meant to: refusals of each kind, not a row of Acks
        assert sum("bad_request" in o for o in fast) >= 4, fast
        assert any("illegal_state" in o for o in fast) and any("not_found" in o for o in fast), fast
        assert any("bid_rejected" in o for o in fast), fast
        assert fast[-1] == "('protocol', 'ProtocolError')", fast
        nursery.cancel_scope.cancel()


async def test_a_message_of_another_type_is_refused_as_a_bad_request() -> None:
    seen: list[object] = []

    async def handler(peer: str, req: m.ExecutionRequest) -> m.Ack:
        seen.append(req)
        return m.Ack()

    t = LocalTransport("mem-0123456789ab")
    t.register(m.BID_ACCEPTED, typed_handler(m.ExecutionRequest, handler))
    for way in (by_object, by_bytes):
        with pytest.raises(RemoteError) as info:
            await way(t, m.BID_ACCEPTED, m.Ack(), m.Ack)
        assert info.value.code == "bad_request"
    assert seen == []
    # a good one reaches the handler as a copy: what the handler does to it is not seen by the caller
    msg = m.ExecutionRequest(execution_id=new_id())
    await by_object(t, m.BID_ACCEPTED, msg, m.Ack)
    assert seen == [msg] and seen[0] is not msg


def _uuid_before(value: str) -> bool:
    """bprotocol/ids.py's check before the regex: the UUID round trip."""
    import uuid

    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(lambda u: "urn:uuid:" + str(u)),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: str(u) + "\n"),
    st.uuids().map(lambda u: str(u).replace("a", "\u0661")),
    st.text(alphabet="0123456789abcdefABCDEF-{}:\n\u0661", min_size=30, max_size=46),
))
def test_the_faster_uuid_check_takes_exactly_what_the_uuid_round_trip_took(value: str) -> None:
    try:
        taken = parse_execution_id(value) == value
    except ValueError:
        taken = False
    assert taken == _uuid_before(value)


def test_a_peer_id_is_checked_the_same_the_second_time() -> None:
    good = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    for _ in range(2):
        assert is_peer_id(good)
        assert not is_peer_id(good[:-1] + "0")        # 0 is not base58
        assert not is_peer_id(good + "z")              # a digest of another length


def _three_pins(tmp_path: Path) -> tuple[Blockstore, list[bytes]]:
    store = Blockstore(tmp_path / "s")
    cids = []
    for i in range(3):
        (tmp_path / f"f{i}").write_bytes(f"result {i}".encode())
        cids.append(cid_to_bytes(add_path(tmp_path / f"f{i}", put=store.put)[-1][0]))
    return store, cids


def test_pins_written_by_the_whole_file_layout_open_and_new_pins_are_appended_after_them(tmp_path: Path) -> None:
    store, cids = _three_pins(tmp_path)
    store.close()
    (tmp_path / "s" / "pins").write_text(cids[0].hex() + "\n" + cids[1].hex() + "\n")   # as pin() wrote it before
    store = Blockstore(tmp_path / "s")
    assert store.pins() == cids[:2]
    store.pin(cids[2])
    store.pin(cids[0])                                    # pinned already: no second line
    store.close()
    assert (tmp_path / "s" / "pins").read_text().split() == [c.hex() for c in cids]
    store = Blockstore(tmp_path / "s")
    assert store.pins() == cids
    store.unpin(cids[1])
    store.close()
    store = Blockstore(tmp_path / "s")
    assert store.pins() == [cids[0], cids[2]]
    store.close()


def test_a_pin_appended_after_a_line_cut_short_by_a_crash_is_kept(tmp_path: Path) -> None:
    """A power cut mid-append can leave the last line without its newline (or half of it): the next pin
    must not be glued to it and lost at the next open."""
    store, cids = _three_pins(tmp_path)
    store.pin(cids[0])
    store.close()
    pins = tmp_path / "s" / "pins"
    pins.write_text(pins.read_text() + cids[1].hex())            # the whole CID, not its newline
    store = Blockstore(tmp_path / "s")
    store.pin(cids[2])
    store.close()
    store = Blockstore(tmp_path / "s")
    assert store.pins() == cids
    store.close()
    pins.write_text(pins.read_text() + cids[0].hex()[:20])       # half a line
    store = Blockstore(tmp_path / "s")
    assert store.pins() == cids
    store.close()
    assert (tmp_path / "s" / "pins").read_text().endswith("\n")


def _results(tmp_path: Path, count: int, big: int | None = None) -> list[Path]:
    roots = []
    for i in range(count):
        d = ExecutionDir(tmp_path / f"r{i}")
        d.create()
        d.stdout.write_bytes(f"result {i}\n".encode() * (20000 if i == big else 1))
        d.exit_code.write_text("0")
        (d.outputs / "sub").mkdir()
        (d.outputs / "sub" / "f").write_bytes(bytes([i]) * 300_000)   # two blocks and a file node
        roots.append(d.root)
    return roots


async def test_results_published_in_one_group_are_those_published_alone_and_one_too_large_fails_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bacalhau.compute.publishing as publishing
    from bacalhau.ipfs.publish import ResultTooLarge, publish_result

    roots = _results(tmp_path / "res", 12, big=5)
    limit = 400_000
    alone = Blockstore(tmp_path / "alone")
    expected: list[object] = []
    for root in roots:
        try:
            expected.append(publish_result(root, alone, limit))
        except ResultTooLarge:
            expected.append(ResultTooLarge)
    assert expected[5] is ResultTooLarge and all(isinstance(c, str) for i, c in enumerate(expected) if i != 5)

    calls: list[int] = []
    real = publishing.publish_results

    def counted(items, store, max_size):  # type: ignore[no-untyped-def]
        calls.append(len(items))
        return real(items, store, max_size)

    monkeypatch.setattr(publishing, "publish_results", counted)   # a spy: the real function does the work
    grouped = Blockstore(tmp_path / "grouped")
    publisher = publishing.GroupedPublisher(grouped, limit)
    got: list[object] = [None] * len(roots)

    async def one(i: int) -> None:
        try:
            got[i] = await publisher.publish(lambda: roots[i])
        except ResultTooLarge:
            got[i] = ResultTooLarge

    async with trio.open_nursery() as nursery:
        for i in range(len(roots)):
            nursery.start_soon(one, i)
    assert got == expected
    assert sum(calls) == len(roots) and len(calls) < len(roots), calls     # grouped, each result once
    assert sorted(grouped.pins()) == sorted(cid_to_bytes(c) for c in expected if isinstance(c, str))
    for c in expected:
        if isinstance(c, str):
            assert grouped.get(cid_to_bytes(c)) == alone.get(cid_to_bytes(c))
    grouped.close()
    alone.close()


async def test_a_publish_cancelled_while_it_waits_for_its_group_leaves_the_others_going(tmp_path: Path) -> None:
    import threading

    from bacalhau.compute.publishing import GroupedPublisher

    roots = _results(tmp_path / "res", 6)
    store = Blockstore(tmp_path / "s")
    publisher = GroupedPublisher(store, None)
    done: list[int] = []
    in_thread, release = threading.Event(), threading.Event()

    def held_root() -> Path:        # the first group stays in its worker thread until released
        in_thread.set()
        release.wait(10)
        return roots[0]

    async def one(i: int) -> None:
        await publisher.publish(held_root if i == 0 else lambda: roots[i])
        done.append(i)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 0)
            await trio.to_thread.run_sync(in_thread.wait)
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as waiting:
                    for i in (1, 2):
                        waiting.start_soon(one, i)
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()           # 1 and 2 queued behind 0's group: cancelled there
            for i in (3, 4, 5):
                nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    assert sorted(done) == [0, 3, 4, 5]
    await publisher.publish(lambda: roots[1])     # and the publisher still leads new groups
    assert len(store.pins()) == 5
    store.close()


async def test_the_requesters_callbacks_answer_a_self_call_as_they_answer_bytes(tmp_path: Path) -> None:
    from bacalhau.models import RunResult

    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "n", serve_api=False, engines=("noop",))).run)
        t = node.transport
        assert isinstance(t, LocalTransport)
        ex, job = new_id(), new_id()
        me = t.self_id
        msgs: list[tuple[str, BaseModel]] = [     # an execution this requester never made: refused each way
            (m.ON_BID_COMPLETE, m.BidResult(execution_id=ex, job_id=job, node_id=me, accepted=True)),
            (m.ON_RUN_COMPLETE, m.RunComplete(execution_id=ex, job_id=job, node_id=me, result=RunResult(exit_code=0))),
            (m.ON_PUBLISH_COMPLETE, m.PublishComplete(execution_id=ex, job_id=job, node_id=me,
                                                      result_ref="ipfs://QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")),
            (m.ON_CANCEL_COMPLETE, m.CancelComplete(execution_id=ex, job_id=job, node_id=me)),
            (m.ON_COMPUTE_FAILURE, m.ComputeFailure(execution_id=ex, job_id=job, node_id=me, reason="x", retry=False)),
            (m.ON_RUN_COMPLETE, m.RunComplete.model_construct(execution_id=ex, job_id="../x", node_id=me,
                                                              result=RunResult(exit_code=0))),
            (m.RESULT_REJECTED, m.ExecutionReasonRequest(execution_id=ex, reason="no")),
        ]
        for proto, msg in msgs:
            outcomes = []
            for way in (by_object, by_bytes):
                try:
                    outcomes.append(f"ok {await way(t, proto, msg, m.Ack)!r}")
                except RemoteError as exc:
                    outcomes.append(f"{exc.code}: {exc}")
            assert outcomes[0] == outcomes[1] and not outcomes[0].startswith("ok"), (proto, outcomes)
        nursery.cancel_scope.cancel()
