"""Attacks on Bacalhau 1.0's logs websocket (/requester/logs): another client reading a job's logs, a forged
or garbled request, a client that never sends one. Each is closed with a valid code (1008) and a reason,
sees no frame, and the node goes on serving the owner."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

import bacalhau.api.bacalhau_v1.logs as bacalhau_logs
from bacalhau.models import Engine, JobSpec, NoopSpec
from bacalhau.node import Node
from bacalhau.rsa_identity import client_id_of, load_or_create
from tests.test_bacalhau_logs import envelope, joined, logs_payload, noop_node, read_frames, rsa_key  # noqa: F401  (fixtures)
from tests.test_flow_inmemory import wait_terminal

SECRET = "the owner's secret output\n"


async def owners_job(node: Node, key: Any) -> tuple[str, str]:
    assert node.requester is not None
    job = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout=SECRET)),
                                      client_id=client_id_of(key.public_key()))
    await wait_terminal(node, job.id)
    done = await node.requester.store.get_job(job.id, full=False)
    return job.id, done.executions[0].id


async def refused(node: Node, first: str | None) -> str:
    frames, code, reason = await trio.to_thread.run_sync(read_frames, node.api_port, first)
    assert code == 1008 and frames == [], (code, reason, frames)
    return reason


async def still_serves_the_owner(node: Node, key: Any, job_id: str, execution_id: str) -> None:
    frames, code, _ = await trio.to_thread.run_sync(
        read_frames, node.api_port, envelope(key, logs_payload(key, job_id, execution_id, follow=False)))
    assert code == 1000 and joined(frames, 1) == SECRET


async def test_another_client_cannot_read_a_jobs_logs(
    noop_node: Node, rsa_key: Any, tmp_path: Any  # noqa: F811
) -> None:
    job_id, execution_id = await owners_job(noop_node, rsa_key)
    other = load_or_create(tmp_path / "other.pem")
    # a valid envelope of its own key, for the owner's job
    reason = await refused(noop_node, envelope(other, logs_payload(other, job_id, execution_id, follow=True)))
    assert "only the client that submitted" in reason
    # the owner's client id claimed, signed with its own key
    payload = {**logs_payload(other, job_id, execution_id, follow=True), "ClientID": client_id_of(rsa_key.public_key())}
    assert "does not match client ID" in await refused(noop_node, envelope(other, payload))
    await still_serves_the_owner(noop_node, rsa_key, job_id, execution_id)


async def test_a_tampered_payload_is_refused(noop_node: Node, rsa_key: Any) -> None:  # noqa: F811
    job_id, execution_id = await owners_job(noop_node, rsa_key)
    good = envelope(rsa_key, logs_payload(rsa_key, job_id, execution_id, follow=False))
    tampered = good.replace('"WithHistory":true', '"WithHistory": true')   # the same JSON, not the bytes signed
    assert tampered != good
    assert "verification error" in await refused(noop_node, tampered)
    bad_signature = json.loads(good)
    bad_signature["signature"] = bad_signature["signature"][:-8] + "AAAAAAA="
    raw = good[good.index('"payload":') + len('"payload":'):good.index(',"signature"')]
    forged = '{"client_public_key":%s,"payload":%s,"signature":%s}' % (
        json.dumps(bad_signature["client_public_key"]), raw, json.dumps(bad_signature["signature"]))
    assert "verification error" in await refused(noop_node, forged)
    await still_serves_the_owner(noop_node, rsa_key, job_id, execution_id)


@pytest.mark.parametrize("garbage", ["not json", "{}", '{"payload": null}', "[1,2]", '{"payload": {"a": 1}',
                                     "\x00" * 70000])
async def test_a_garbage_first_message_is_refused_with_a_reason(
    noop_node: Node, garbage: str  # noqa: F811
) -> None:
    reason = await refused(noop_node, garbage)
    assert reason and ("decod" in reason or "payload" in reason), reason


async def test_a_client_that_never_sends_its_request_is_closed_after_the_timeout(
    noop_node: Node, rsa_key: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setattr(bacalhau_logs, "FIRST_MESSAGE_TIMEOUT", 0.5)
    job_id, execution_id = await owners_job(noop_node, rsa_key)
    with trio.fail_after(10):   # before: no route; a handler without a deadline would hold its follower for ever
        assert "no request within" in await refused(noop_node, None)
    await still_serves_the_owner(noop_node, rsa_key, job_id, execution_id)


async def test_an_unknown_job_or_execution_is_refused_not_a_crash(
    noop_node: Node, rsa_key: Any  # noqa: F811
) -> None:
    job_id, execution_id = await owners_job(noop_node, rsa_key)
    unknown_job = logs_payload(rsa_key, "00000000-0000-4000-8000-000000000000", execution_id, follow=True)
    assert "not found" in await refused(noop_node, envelope(rsa_key, unknown_job))
    unknown_execution = logs_payload(rsa_key, job_id, "../../etc", follow=True)
    assert "unable to find execution" in await refused(noop_node, envelope(rsa_key, unknown_execution))
    await still_serves_the_owner(noop_node, rsa_key, job_id, execution_id)


async def test_the_follower_caps_count_both_log_websockets(
    noop_node: Node, rsa_key: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    # one cap for the API: a client over it on our websocket must not get another follower from Bacalhau's
    from websockets.sync.client import connect

    import bacalhau.api.logs as api_logs

    assert noop_node.requester is not None
    job_id, execution_id = await owners_job(noop_node, rsa_key)
    running = await noop_node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="x\n", sleep=30)))
    monkeypatch.setattr(api_logs, "MAX_FOLLOWERS_PER_CLIENT", 1)

    def hold() -> Any:
        ws = connect(f"ws://127.0.0.1:{noop_node.api_port}/api/v1/jobs/{running.id}/logs?follow=1").__enter__()
        ws.recv(timeout=10)   # the "execution" event: this follower is being served
        return ws

    held = await trio.to_thread.run_sync(hold)
    try:
        first = envelope(rsa_key, logs_payload(rsa_key, job_id, execution_id, follow=False))
        frames, code, reason = await trio.to_thread.run_sync(read_frames, noop_node.api_port, first)
        assert code == 1013 and frames == [] and "from 127.0.0.1" in reason, (code, reason)
    finally:
        await trio.to_thread.run_sync(held.close)
    with trio.fail_after(10):   # its place freed, the owner is served
        while True:
            frames, code, _ = await trio.to_thread.run_sync(read_frames, noop_node.api_port, first)
            if code == 1000:
                break
            await trio.sleep(0.05)
    assert joined(frames, 1) == SECRET


async def test_a_huge_job_id_never_reaches_the_store(
    noop_node: Node, rsa_key: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    # 60 KB of "%" would be a LIKE pattern tried on every job row
    assert noop_node.requester is not None
    store = noop_node.requester.store
    asked: list[str] = []
    real = store.resolve_id

    async def spy(prefix: str) -> str:
        asked.append(prefix)
        return await real(prefix)

    monkeypatch.setattr(store, "resolve_id", spy)
    for job_id in ("%" * 60_000, "a" * 37, "../x"):
        payload = logs_payload(rsa_key, job_id, "e-x", follow=True)
        assert "not found" in await refused(noop_node, envelope(rsa_key, payload))
    assert asked == []
