"""Left-over correctness items, each tested as the attack or the upgrade it is about: pre-approved executions known
by a stored flag, not by their reason's text; a run's stderr tail kept (RunOutput, describe), bounded and
readable; amplify's oversize bodies a 413."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from bacalhau.bprotocol import messages as m
from bacalhau.db import QUARANTINE
from bacalhau.errors import NotFoundError
from bacalhau.models import Engine, Execution, ExecutionState, Job, JobSpec, JobState, NodeType, NoopSpec
from bacalhau.models.job import TAIL_BYTES, RunResult
from bacalhau.node import Node
from bacalhau.requester import store as job_store
from bacalhau.requester.store import JobStore
from tests.conftest import node_config, run_cli
from tests.hostile.test_proto_review import stoppable_requester_and_computes
from tests.test_flow_inmemory import wait_terminal

S = ExecutionState


async def _state_on(node: Node, execution_id: str) -> ExecutionState | None:
    try:
        return (await node.compute._store.get(execution_id)).state
    except NotFoundError:
        return None


async def test_a_fan_out_ask_a_node_says_it_runs_is_not_taken_by_a_restarted_requester(tmp_path: Path) -> None:
    """The attack: a node asked for a bid on one execution of a fan-out job (concurrency 2: asked the old way, to
    bid and wait for the acceptance) runs it at once and never bids; the job's two executions run on two other
    nodes. The requester restarts, asks each node how its execution goes, and the liar says running. Before, a
    restarted requester took any asked execution its node reported running as a pre-approved one: three ran for a
    job of two, on the liar's word. Now only an execution stored as asked pre-approved is: the liar's ask is
    refused and the node told to drop it."""
    async with trio.open_nursery() as nursery:
        # the liar's unanswered ask is still open when the requester stops
        req_cfg, first, req, computes = await stoppable_requester_and_computes(
            nursery, tmp_path, ("a", "b", "liar"), bid_timeout=60.0)
        liar = computes[2]
        approved = liar.transport.handlers[m.ASK_FOR_BID_APPROVED]
        ack = m.Envelope(result=m.Ack().model_dump(mode="json")).model_dump_json().encode()

        async def runs_it_unasked(peer_id: str, payload: bytes) -> bytes:
            await approved(peer_id, payload)     # the same request: taken as if pre-approved, run at once
            return ack                           # and no bid, ever

        liar.transport.handlers[m.ASK_FOR_BID] = runs_it_unasked
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60), concurrency=2))
        with trio.fail_after(15):
            while True:
                executions = (await req.requester.store.get_job(job.id)).executions
                running = [e for e in executions if e.state == S.RUNNING]
                asked = [e for e in executions if e.node_id == liar.node_id and e.state == S.ASKED_FOR_BID]
                if len(running) == 2 and asked and await _state_on(liar, asked[0].id) == S.RUNNING:
                    break
                await req.requester.wait_for_change(job.id, 0.2)
        [lie] = asked
        first.cancel()
        with trio.fail_after(10):
            while not first.cancelled_caught:
                await trio.sleep(0.02)
        # back knowing its nodes' addresses: one heard through another's gossip before it redials is reachable
        again = await nursery.start(Node(replace(req_cfg, peers=tuple(c.addrs()[0] for c in computes))).run)
        with trio.fail_after(20):       # the liar's ask is looked at after the restart
            while (await again.requester.store.get_execution(lie.id)).state == S.ASKED_FOR_BID:
                await again.requester.wait_for_change(job.id, 0.2)
        ex = await again.requester.store.get_execution(lie.id)
        assert ex.state == S.BID_REJECTED, (ex.state, ex.reason)
        assert "only asked to bid on" in ex.reason
        with trio.fail_after(10):       # and the node told to drop it
            while await _state_on(liar, lie.id) != S.CANCELLED:
                await trio.sleep(0.05)
        done = await again.requester.store.get_job(job.id)
        assert sum(e.state.active for e in done.executions) == 2, [(e.node_id[-6:], e.state, e.reason) for e in done.executions]
        assert done.state == JobState.IN_PROGRESS
        nursery.cancel_scope.cancel()


async def test_the_flag_is_written_with_the_ask_a_plain_jobs_at_submit_and_a_fan_out_jobs_never(
        tmp_path: Path) -> None:
    """What a restarted requester reads back: a plain job's one execution (written with the job at submit) is
    flagged; a fan-out job's asks are not."""
    from bacalhau.bprotocol.transport import InMemoryNetwork
    from bacalhau.config import NodeConfig
    from bacalhau.node import NodeDeps

    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / "r", serve_api=False,
                                                  node_types=(NodeType.REQUESTER,)), NodeDeps(network=net)).run)
        for name in ("a", "b"):
            await nursery.start(Node(NodeConfig(repo_dir=tmp_path / name, node_types=(NodeType.COMPUTE,),
                                                engines=("noop",), node_info_interval=0.2),
                                     NodeDeps(network=net)).run)
        with trio.fail_after(10):
            while len(req.requester.nodes.alive()) < 2:
                await trio.sleep(0.05)
        plain = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60)))
        fan_out = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60), concurrency=2))
        with trio.fail_after(10):
            for job in (plain, fan_out):
                while sum(e.state == S.RUNNING for e in (await req.requester.store.get_job(job.id)).executions) \
                        < job.spec.concurrency:
                    await req.requester.wait_for_change(job.id, 0.2)
        [first] = (await req.requester.store.get_job(plain.id)).executions
        flagged = await req.requester.store.preapproved()
        assert first.id in flagged
        assert not flagged & {e.id for e in (await req.requester.store.get_job(fan_out.id)).executions}
        nursery.cancel_scope.cancel()


async def test_a_jobs_db_of_layout_3_opens_knowing_its_pre_approved_executions_in_flight(tmp_path: Path) -> None:
    """A repo the layout before the flag wrote (version 3: pre-approved executions known by their reason's first
    words): opened, the flag is inferred once from those words, so a restarted requester still takes the
    one callback of its pre-approved executions in flight; the reasons `describe` shows are unchanged."""
    path = tmp_path / "jobs.db"
    spec = JobSpec(engine=Engine.NOOP).model_dump_json()
    rows = {   # execution -> (state, reason), each of its own job in progress
        "pre-running": ("running", "running (pre-approved)"),
        "pre-accepted": ("bid_accepted", "bid accepted (pre-approved; seen after a restart)"),
        "old-flow": ("running", "running"),
        "asked": ("asked_for_bid", "asked for a bid"),
        "ended": ("completed", "running (pre-approved)"),     # a finished job's: not one in flight
    }
    ids = {name: str(uuid.uuid4()) for name in rows}
    with sqlite3.connect(path) as conn:
        conn.executescript(job_store.SCHEMA)
        for migration in (QUARANTINE, job_store.INDEXES, job_store.SIGNATURES):
            conn.executescript(migration)
        conn.execute("PRAGMA user_version=3")
        for name, (state, reason) in rows.items():
            job_id = str(uuid.uuid4())
            conn.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?)",
                         (job_id, spec, "completed" if state == "completed" else "in_progress", "", "c", 1.0, 2.0))
            conn.execute("INSERT INTO executions VALUES (?,?,?,?,?,?,?,?,?)",
                         (ids[name], job_id, "node-a", state, reason, None, "", 1.0, 2.0))
    conn.close()
    store = JobStore(path)
    try:
        assert await store.preapproved() == {ids["pre-running"], ids["pre-accepted"]}
        for name, (state, reason) in rows.items():
            ex = await store.get_execution(ids[name])
            assert (ex.state.value, ex.reason) == (state, reason)
        # from here on the flag is the key, not the words: an execution written with them and no flag is not
        # one, and one asked pre-approved, then the old way (its node of before that ask), is no longer one
        job = Job(spec=JobSpec(engine=Engine.NOOP))
        await store.create_job(job)
        worded = Execution(job_id=job.id, node_id="node-b", state=S.ASKED_FOR_BID)
        await store.create_execution(worded, "bid accepted (pre-approved)")
        flagged, fell_back = (Execution(job_id=job.id, node_id=n, state=S.ASKED_FOR_BID) for n in ("c", "d"))
        for ex in (flagged, fell_back):
            await store.create_execution(ex, "asked for a bid", preapproved=True)
        await store.asked_the_old_way(fell_back.id)
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(job_store.MIGRATIONS) == 4
    finally:
        conn.close()
    store = JobStore(path)     # opened again: the flag as stored, not inferred again
    try:
        assert await store.preapproved() == {ids["pre-running"], ids["pre-accepted"], flagged.id}
    finally:
        store.close()


# -- stderr's tail: kept, bounded, readable -------------------------------------------------------------------

# 2 MB of 'x' on stderr, then bytes that are no UTF-8 (a lone continuation byte, an invalid start byte, a 3-byte
# sequence cut short), exit 1
FLOOD_THEN_BAD_BYTES = "head -c 2000000 /dev/zero | tr '\\000' x >&2; printf 'end \\200\\377 \\350\\200' >&2; exit 1"
BAD_END = "end \ufffd\ufffd \ufffd"


async def test_a_docker_job_flooding_stderr_with_bytes_that_are_not_utf8_keeps_a_bounded_readable_tail(
        single_node: Node) -> None:
    """The attack on the new stderr tail: a job writing megabytes, ending in bytes no UTF-8 decoder takes. What
    the requester stores, `describe` prints and RunOutput maps stays a KiB of text, its end readable."""
    from bacalhau.api.bacalhau_v1.mappers import execution_out
    from bacalhau.models import DockerSpec

    req = single_node.requester
    job = await req.submit(JobSpec(engine=Engine.DOCKER, docker=DockerSpec(
        image="bacalhau/busybox:latest", entrypoint=["sh", "-c", FLOOD_THEN_BAD_BYTES])))
    await wait_terminal(single_node, job.id, timeout=60)
    [ex] = [e for e in (await req.store.get_job(job.id)).executions if e.result is not None]
    r = ex.result
    assert r is not None and r.exit_code == 1 and r.stderr_bytes == 2_000_000 + len(b"end \x80\xff \xe8\x80")
    assert r.stderr_tail.endswith(BAD_END) and set(r.stderr_tail[:-len(BAD_END)]) <= {"x", "\ufffd"}
    assert len(r.stderr_tail.encode()) <= TAIL_BYTES * 3       # at most one U+FFFD (3 bytes) a byte read
    assert len(r.stderr_tail) <= TAIL_BYTES
    run_output = execution_out(ex)["RunOutput"]
    assert run_output["stderr"] == r.stderr_tail and run_output["stderrtruncated"] is True
    described = await run_cli(single_node, "describe", job.id, "--output", "table")
    assert described.returncode == 0, described.stderr
    assert BAD_END in described.stdout and len(described.stdout) < 20_000
    assert "Traceback" not in described.stderr


def _to_stderr(data: bytes, times: int) -> bytes:
    """A WASM module that writes `data` to stderr `times` times, then exits 2."""
    import wasmtime

    from tests.executors.test_wasm import WASI

    escaped = "".join("\\%02x" % b for b in data)
    wat = """(module %s
      (memory (export "memory") 1)
      (data (i32.const 16) "%s")
      (func (export "_start") (local $i i32)
        (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const %d))
        (loop $l
          (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const %d))))
        (call $proc_exit (i32.const 2))))""" % (WASI, escaped, len(data), times)
    return wasmtime.wat2wasm(wat)


async def test_a_wasm_module_flooding_stderr_with_bytes_that_are_not_utf8_keeps_a_bounded_readable_tail(
        tmp_path: Path) -> None:
    from bacalhau.executors.types import ExecutionDir
    from bacalhau.executors.wasm import WasmExecutor
    from tests.executors.test_wasm import job

    ex = WasmExecutor()
    d = ExecutionDir(tmp_path / "exec")
    d.create()
    await ex.start("e1", job(_to_stderr(b"oops \xff\xfe\xc3", 200_000)), d)
    with trio.fail_after(30):
        result = await ex.wait("e1")
    assert result.exit_code == 2 and result.stderr_bytes == 8 * 200_000
    assert len(result.stderr_tail) <= TAIL_BYTES and result.stderr_tail.endswith("oops \ufffd\ufffd\ufffd")
    assert not result.tail_is_whole("stderr")
    stored = RunResult.model_validate_json(result.model_dump_json())     # as the stores keep it
    assert stored.stderr_tail == result.stderr_tail


def test_a_run_result_with_a_stderr_tail_past_its_cap_is_refused() -> None:
    """A peer's RunResult (a run-complete, an execution status) is parsed at the edge: a tail longer than any
    executor keeps is refused there, not stored and served to every describe."""
    with pytest.raises(ValueError, match="stderr_tail"):
        RunResult(exit_code=1, stderr_tail="x" * (TAIL_BYTES + 1))


async def test_a_result_stored_before_the_stderr_tail_still_reads(tmp_path: Path) -> None:
    """jobs.db and compute.db rows whose RunResult was written without the field (the layout before it)."""
    from bacalhau.api.bacalhau_v1.mappers import execution_out
    from bacalhau.compute.store import ExecutionStore

    old = ('{"exit_code": 3, "error": "", "stdout_bytes": 3, "stderr_bytes": 5, "stdout_tail": "hi\\n",'
           ' "stdout_truncated": false, "stderr_truncated": false}')
    store = JobStore(tmp_path / "jobs.db")
    job = Job(spec=JobSpec(engine=Engine.NOOP))
    try:
        await store.create_job(job)
        ex = Execution(job_id=job.id, node_id="node-a", state=S.ASKED_FOR_BID)
        await store.create_execution(ex, "asked for a bid")
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.execute("UPDATE executions SET state='completed', result=?, result_ref='ipfs://x' WHERE id=?",
                     (old, ex.id))
        conn.execute("UPDATE jobs SET state='completed' WHERE id=?", (job.id,))
    conn.close()
    store = JobStore(tmp_path / "jobs.db")
    try:
        read = await store.get_execution(ex.id)
    finally:
        store.close()
    assert read.state == S.COMPLETED and read.result is not None
    assert (read.result.stdout_tail, read.result.stderr_tail, read.result.stderr_bytes) == ("hi\n", "", 5)
    run_output = execution_out(read)["RunOutput"]
    # the stderr was not kept then: the tail is empty and says it is not the whole of it
    assert (run_output["stderr"], run_output["stderrtruncated"]) == ("", True)
    assert (run_output["stdout"], run_output["stdouttruncated"]) == ("hi\n", False)

    compute = ExecutionStore(tmp_path / "compute.db")
    compute.close()
    with sqlite3.connect(tmp_path / "compute.db") as conn:
        conn.execute("INSERT INTO local_executions(id, job, requester_id, state, reason, result, result_ref,"
                     " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                     (ex.id, job.model_dump_json(), "r", "completed", "", old, "ipfs://x", 1.0, 2.0))
    conn.close()
    compute = ExecutionStore(tmp_path / "compute.db")
    try:
        local = await compute.get(ex.id)
    finally:
        compute.close()
    assert local.result is not None and local.result.stderr_tail == "" and local.result.exit_code == 3


# -- amplify's request bodies ----------------------------------------------------------------------------------

async def test_an_oversize_amplify_body_streamed_without_a_length_is_a_413_and_the_node_serves_on(
        single_node: Node) -> None:
    """The attack: a run request (and a cancel) whose body streams on past the cap with no length declared.
    Every other route of ours answers that 413; amplify's answered 400 (a user's mistake in the body, to a
    client), having grown the body by copying it at each chunk."""
    import httpx

    from bacalhau.api.amplify import MAX_BODY

    async def endless() -> AsyncIterator[bytes]:
        yield b'{"data": {"attributes": {"inputs": [{"cid": "'
        for _ in range(4 * MAX_BODY // 65536):        # 4 times the cap, 64 KiB a chunk
            yield b"Q" * 65536

    run_id = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{single_node.api_port}", timeout=30) as client:
        for method, path in (("PUT", f"/api/v0/queue/{run_id}"), ("POST", f"/api/v0/queue/{run_id}/cancel")):
            answer = await client.request(method, path, content=endless(),
                                          headers={"Content-Type": "application/json"})
            assert "content-length" not in answer.request.headers      # streamed: no length to refuse it by
            assert answer.status_code == 413, (path, answer.text)
            body = answer.json()
            assert body["status"] == 413 and body["title"] == "Too large", body
            assert body["error"] == f"request body over {MAX_BODY} bytes"
        declared = await client.put(f"/api/v0/queue/{run_id}", content=b"Q" * (MAX_BODY + 1),
                                    headers={"Content-Type": "application/json"})
        assert declared.status_code == 413, declared.text
        listed = await client.get("/api/v0/queue")      # the node serves on
        assert listed.status_code == 200 and listed.json()["meta"]["count"] == 0


async def test_logs_of_a_finished_execution_whose_node_is_away_replay_its_stderr_tail_too(tmp_path: Path) -> None:
    """Go's logs websocket replays what the requester kept of a run when its node is away: stdout's tail only,
    before (the error text a failed job wrote was what a user looked for)."""
    from bacalhau.bprotocol.transport import InMemoryNetwork
    from bacalhau.config import NodeConfig
    from bacalhau.executors.noop import NoopExecutor
    from bacalhau.node import NodeDeps
    from bacalhau.rsa_identity import client_id_of, load_or_create
    from tests.test_bacalhau_logs import envelope, joined, logs_payload, read_frames

    class WritesStderr(NoopExecutor):
        """The noop executor writes no stderr: this one's result says it wrote some (as Docker's would)."""
        async def wait(self, execution_id: str) -> RunResult:
            result = await super().wait(execution_id)
            return result.model_copy(update={"stderr_tail": "it went wrong\n", "stderr_bytes": 14})

    key = load_or_create(tmp_path / "client" / "user_id.pem")
    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req = await nursery.start(Node(node_config(tmp_path / "r", node_types=(NodeType.REQUESTER,)),
                                       NodeDeps(network=net)).run)
        compute = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / "c", node_types=(NodeType.COMPUTE,),
                                                      node_info_interval=0.2),
                                           NodeDeps(network=net, executors={Engine.NOOP: WritesStderr()})).run)
        with trio.fail_after(10):
            while not req.requester.nodes.alive():
                await trio.sleep(0.05)
        job = await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="some\n", exit_code=1)),
                                         client_id=client_id_of(key.public_key()))
        with trio.fail_after(10):
            while not (await req.requester.store.get_job(job.id, full=False)).state.terminal:
                await req.requester.wait_for_change(job.id, 0.5)
        [ran] = (await req.requester.store.get_job(job.id)).executions
        assert ran.result is not None and ran.result.stderr_tail == "it went wrong\n"
        net.take_down(compute.node_id)     # the only node that holds the whole log
        first = envelope(key, logs_payload(key, job.id, ran.id, follow=True))
        frames, code, reason = await trio.to_thread.run_sync(read_frames, req.api_port, first)
        assert code == 1000, reason
        assert (joined(frames, 1), joined(frames, 2)) == ("some\n", "it went wrong\n")
        nursery.cancel_scope.cancel()


async def test_a_restarted_requester_that_hears_of_a_node_before_reaching_it_does_not_write_its_run_off(
        tmp_path: Path) -> None:
    """A requester restarts knowing no node: its compute nodes redial it, and the first back gossips the others'
    NodeInfo before they have redialed. Before, the requester asked such a node how its execution went, got "no
    known addresses", wrote the running execution off as lost and ran the job again elsewhere (twice at once).
    Now a call with no answer is tried again while the nodes come back."""
    async with trio.open_nursery() as nursery:
        req_cfg, first, req, computes = await stoppable_requester_and_computes(nursery, tmp_path, ("a", "b", "c"))
        jobs = [await req.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(sleep=60))) for _ in range(3)]
        running: dict[str, Execution] = {}
        with trio.fail_after(15):
            while len(running) < 3:
                for job in jobs:
                    for e in (await req.requester.store.get_job(job.id)).executions:
                        if e.state == S.RUNNING:
                            running[job.id] = e
                await trio.sleep(0.05)
        first.cancel()
        with trio.fail_after(10):
            while not first.cancelled_caught:
                await trio.sleep(0.02)
        again = await nursery.start(Node(req_cfg).run)       # knows no node: they redial it
        with trio.fail_after(30):
            while len(again.requester.nodes.alive()) < 3:
                await trio.sleep(0.05)
        await trio.sleep(3 * again.config.node_info_ttl)     # the reconcile passes have run by now
        by_id = {c.node_id: c for c in computes}
        for job in jobs:
            done = await again.requester.store.get_job(job.id)
            active = [e for e in done.executions if e.state.active]
            assert [e.id for e in active] == [running[job.id].id], [
                (e.node_id[-6:], e.state, e.reason) for e in done.executions]
            assert await _state_on(by_id[running[job.id].node_id], running[job.id].id) == S.RUNNING
        nursery.cancel_scope.cancel()
