"""Session 6's correctness changes read as an attacker (the pre-approved flag's migration, the stderr tail, amplify's
413, the restarted requester's status retries): each hole found is tested here as the attack. Found: a job's or a
peer's terminal escapes printed raw by `describe` and by `docker run`'s status lines; a stdout tail of megabytes
taken from a peer (stderr's was capped); an execution written off during the retries accepted on its node."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.framing import parse_reply
from bacalhau.bprotocol.transport import InMemoryNetwork, typed_handler
from bacalhau.errors import RemoteError
from bacalhau.models import (
    DockerSpec,
    Engine,
    Execution,
    ExecutionState,
    Job,
    JobSpec,
    JobState,
    NodeInfo,
    NodeType,
    NoopSpec,
)
from bacalhau.models.job import TAIL_BYTES
from bacalhau.node import Node
from bacalhau.requester.nodes import NodeTable
from bacalhau.requester.service import Requester
from bacalhau.requester.store import JobStore
from tests.conftest import run_cli
from tests.test_flow_inmemory import wait_terminal

S = ExecutionState

# a window title set (OSC), the screen cleared and the cursor sent home (CSI), a bell, text hidden by a bidi override
ESCAPES = "\\033]0;owned\\007\\033[2J\\033[H\\342\\200\\256evil"


async def test_a_jobs_escape_sequences_on_stdout_and_stderr_reach_describe_escaped_not_raw(
        single_node: Node) -> None:
    """The attack: a job (or a compute node, whose RunResult carries the stderr tail) writes terminal escape
    sequences; `describe` printed its stdout's head and its stderr's tail raw, so whoever described the job had
    their terminal retitled, cleared and its cursor moved by it. Now shown as text, lines and tabs kept."""
    req = single_node.requester
    assert req is not None
    script = f"printf 'out\\tline\\n{ESCAPES}\\n'; printf 'err line\\n{ESCAPES}\\n' >&2; exit 1"
    job = await req.submit(JobSpec(engine=Engine.DOCKER, docker=DockerSpec(
        image="bacalhau/busybox:latest", entrypoint=["sh", "-c", script])))
    await wait_terminal(single_node, job.id, timeout=60)
    [ex] = [e for e in (await req.store.get_job(job.id)).executions if e.result is not None]
    assert ex.result is not None and "\x1b]0;owned\x07" in ex.result.stderr_tail   # stored as written
    described = await run_cli(single_node, "describe", job.id, "--output", "table")
    assert described.returncode == 0, described.stderr
    out = described.stdout
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, out
    assert out.count("\\x1b]0;owned\\x07\\x1b[2J\\x1b[H\\u202eevil") == 2, out      # stdout's and stderr's, readable
    assert "out\tline\n" in out and "err line\n" in out                           # their lines and tabs kept


async def test_an_execution_written_off_while_its_node_was_retried_after_a_restart_is_not_accepted_on_it(
        tmp_path: Path) -> None:
    """The attack on 4a3558c's retries: a restarted requester asks a node (heard of, not reachable) again and again
    for its execution's status, for up to 3 TTLs, holding the execution as read at its start. Meanwhile the node
    table's expiry writes it off and the job goes on without it; the node then answers that it still waits for
    its bid's acceptance. The requester sent it bid_accepted, from that stale read: a node it had written off ran
    the execution. Now the node is told to drop it. (The node is a handler on the in-memory network: a real
    compute node cannot be held unreachable while gossiped about.)"""
    net = InMemoryNetwork()
    node_id, requester_id = "mem-0000000000bb", "mem-0000000000aa"
    node = net.transport(node_id)
    told: list[str] = []
    asked_after_back = trio.Event()

    async def status(peer_id: str, msg: m.ExecutionRequest) -> m.ExecutionStatus:
        asked_after_back.set()
        return m.ExecutionStatus(execution_id=msg.execution_id, state=S.NEW)

    async def accepted(peer_id: str, msg: m.ExecutionRequest) -> m.Ack:
        told.append("bid_accepted")
        return m.Ack()

    async def cancel(peer_id: str, msg: m.ExecutionReasonRequest) -> m.Ack:
        told.append("cancel")
        return m.Ack()

    node.register(m.EXECUTION_STATUS, typed_handler(m.ExecutionRequest, status))
    node.register(m.BID_ACCEPTED, typed_handler(m.ExecutionRequest, accepted))
    node.register(m.CANCEL, typed_handler(m.ExecutionReasonRequest, cancel))

    store = JobStore(tmp_path / "jobs.db")       # what the requester left when it stopped: a bid accepted
    job = Job(spec=JobSpec(engine=Engine.NOOP, noop=NoopSpec()))
    ex = Execution(job_id=job.id, node_id=node_id, state=S.ASKED_FOR_BID)
    await store.create_job(job, execution=ex)
    await store.update_execution(ex.id, (S.ASKED_FOR_BID,), S.BID_ACCEPTED, "bid accepted",
                                 job_to=(JobState.PENDING, JobState.IN_PROGRESS, "bid accepted"))
    net.take_down(node_id)
    nodes = NodeTable(ttl=2.0)
    nodes.update(NodeInfo(node_id=node_id, node_types=[NodeType.COMPUTE], engines=[Engine.NOOP],
                          published_at=time.time()))     # another node's gossip: heard of, not reachable
    requester = Requester(node_id=requester_id, transport=net.transport(requester_id), store=store, nodes=nodes,
                          call_timeout=0.5, bid_timeout=1.0)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(requester.run)
            with trio.fail_after(10):
                while (await store.get_execution(ex.id)).state != S.FAILED:     # written off by the expiry
                    await trio.sleep(0.05)
                net.bring_back(node_id)
                asked_after_back = trio.Event()
                await asked_after_back.wait()              # the retry reached it
                while not told:
                    await trio.sleep(0.02)
            assert told == ["cancel"], told
            assert (await store.get_execution(ex.id)).state == S.FAILED
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_a_compute_node_reporting_megabytes_of_stdout_tail_is_refused(tmp_path: Path) -> None:
    """The attack on the tails `describe` and RunOutput show: stderr_tail is capped at TAIL_BYTES from a peer
    (d12037c), stdout_tail was not. A compute node reporting its run with 2 MB of stdout tail (under the 4 MiB
    frame) had it stored and sent in every describe, list and RunOutput of the job. Now the report is refused
    and the execution stays as it was. (The node is a raw in-memory peer: a real one reports only its 1 KiB.)"""
    net = InMemoryNetwork()
    node_id, requester_id = "mem-0000000000bb", "mem-0000000000aa"
    node = net.transport(node_id)
    store = JobStore(tmp_path / "jobs.db")
    requester = Requester(node_id=requester_id, transport=net.transport(requester_id), store=store,
                          nodes=NodeTable(ttl=60.0), call_timeout=1.0, bid_timeout=1.0)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(requester.run)
            job = Job(spec=JobSpec(engine=Engine.NOOP, noop=NoopSpec()))
            ex = Execution(job_id=job.id, node_id=node_id, state=S.ASKED_FOR_BID)
            await store.create_job(job, execution=ex)
            await store.update_execution(ex.id, (S.ASKED_FOR_BID,), S.BID_ACCEPTED, "bid accepted",
                                         job_to=(JobState.PENDING, JobState.IN_PROGRESS, "bid accepted"),
                                         then=(S.RUNNING, "running"))
            report: dict[str, Any] = {"execution_id": ex.id, "job_id": job.id, "node_id": node_id,
                      "result": {"exit_code": 0, "stdout_bytes": 2_000_000, "stdout_tail": "x" * 2_000_000}}
            with pytest.raises(RemoteError, match="stdout_tail"):
                parse_reply(await node.call(requester_id, m.ON_RUN_COMPLETE, json.dumps(report).encode(),
                                            timeout=10), m.Ack)
            report["result"]["stdout_tail"] = "x" * TAIL_BYTES       # what an executor keeps: taken
            parse_reply(await node.call(requester_id, m.ON_RUN_COMPLETE, json.dumps(report).encode(),
                                        timeout=10), m.Ack)
            stored = await store.get_execution(ex.id)
            assert stored.state == S.PUBLISHING and stored.result is not None
            assert stored.result.stdout_tail == "x" * TAIL_BYTES
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def test_a_failed_jobs_reason_with_escape_sequences_reaches_the_waiting_cli_escaped(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The attack through the reason: a compute node's failure reason (or its run's error) becomes the job's,
    which `docker run` prints when it waits for the job; it reached the user's terminal raw. The API's reply
    is given as data here: what a hostile node's reason turns into, without a node of our own to lie."""
    from bacalhau.cli.waiting import finish

    reason = "out of memory\x1b]0;owned\x07\x1b[2J\u202eevil"
    job = {"id": "0" * 36, "state": "failed", "reason": reason, "executions": []}
    # a job that failed before it ran asks nothing more of the API: no client
    assert finish(None, job) == 1  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err, err
    assert "could not run: out of memory\\x1b]0;owned\\x07\\x1b[2J\\u202eevil" in err


def test_a_peers_run_error_of_megabytes_is_kept_cut_short() -> None:
    """A run's `error` as a compute node reports it (run complete, run published, status) was taken whole: up to
    the 4 MiB frame stored and sent with every describe and wait of the job. It is kept, cut to
    MAX_PEER_ERROR_CHARS (a failure's words are worth keeping; refusing the report would lose the failure)."""
    ids = {"execution_id": str(uuid.uuid4()), "job_id": str(uuid.uuid4()), "node_id": "mem-0000000000bb"}
    msg = m.RunComplete.model_validate({**ids, "result": {"exit_code": 1, "error": "e" * 2_000_000}})
    assert len(msg.result.error) <= m.MAX_PEER_ERROR_CHARS + 10 and msg.result.error.startswith("e" * 100)
    short = m.RunComplete.model_validate({**ids, "result": {"exit_code": 1, "error": "timed out"}})
    assert short.result.error == "timed out"
