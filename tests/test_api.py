"""The HTTP API: bad bodies get a clear 4xx, id prefixes resolve, waits return on change."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bacalhau.node import Node
from bacalhau.signing import load_or_create_client_key, sign


def post(port: int, path: str, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    except BrokenPipeError:
        pass   # a body over the cap is answered (413) before it is all read
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data)


def get(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data)


async def test_bad_submissions_get_a_400_that_names_the_field(api_node: Node) -> None:
    port = api_node.api_port
    cases = [
        (b"not json", "not JSON"),
        (b"[]", "must be an object"),
        (json.dumps({"spec": {"engine": "docker"}}).encode(), "no 'docker' section"),
        (json.dumps({"spec": {"engine": "noop", "concurrency": "x"}}).encode(), "at concurrency"),
        (json.dumps({"spec": {"engine": "teleport"}}).encode(), "at engine"),
    ]
    for body, expected in cases:
        status, data = await trio.to_thread.run_sync(post, port, "/api/v1/jobs", body)
        assert status == 400 and expected in data["error"], (body, data)
    status, data = await trio.to_thread.run_sync(post, port, "/api/v1/jobs", b"x" * (5 * 1024 * 1024))
    assert status == 413
    status, data = await trio.to_thread.run_sync(get, port, "/api/v1/jobs/nope")
    assert status == 404 and "no job" in data["error"]


async def test_random_json_bodies_never_break_the_api(api_node: Node) -> None:
    port = api_node.api_port
    tried: list[int] = []

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                             lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                             max_leaves=20))
    def fuzz(body: object) -> None:
        status, data = post(port, "/api/v1/jobs", json.dumps({"spec": body}).encode())
        assert status in (201, 400) and ("id" in data or "error" in data)
        tried.append(status)

    await trio.to_thread.run_sync(fuzz)
    assert len(tried) >= 50
    status, _ = await trio.to_thread.run_sync(get, port, "/api/v1/version")
    assert status == 200


def signed_body(key: object, spec: dict, cluster_id: str) -> bytes:  # type: ignore[type-arg]
    return json.dumps({"spec": spec, **sign(key, {"submit": spec}, cluster_id)}).encode()


async def test_unique_prefix_resolves_and_wait_returns_when_the_job_ends(api_node: Node, tmp_path: Path) -> None:
    port = api_node.api_port
    key = load_or_create_client_key(tmp_path / "client.key")
    status, data = await trio.to_thread.run_sync(
        post, port, "/api/v1/jobs", signed_body(key, {"engine": "noop", "noop": {"stdout": "x"}}, api_node.cluster_id))
    assert status == 201
    job_id = data["id"]
    status, job = await trio.to_thread.run_sync(get, port, f"/api/v1/jobs/{job_id[:6]}/wait?timeout=10&since=1e12")
    assert status == 200 and job["id"] == job_id and job["state"] == "completed"


async def test_submissions_must_be_signed_and_only_the_submitter_may_cancel(api_node: Node, tmp_path: Path) -> None:
    port = api_node.api_port
    spec = {"engine": "noop", "noop": {"sleep": 30}}
    status, data = await trio.to_thread.run_sync(post, port, "/api/v1/jobs", json.dumps({"spec": spec}).encode())
    assert status == 400 and "not signed" in data["error"]
    alice = load_or_create_client_key(tmp_path / "alice.key")
    mallory = load_or_create_client_key(tmp_path / "mallory.key")
    tampered = json.loads(signed_body(alice, spec, api_node.cluster_id))
    tampered["spec"]["noop"]["sleep"] = 1
    status, data = await trio.to_thread.run_sync(post, port, "/api/v1/jobs", json.dumps(tampered).encode())
    assert status == 400 and "does not verify" in data["error"]
    status, data = await trio.to_thread.run_sync(post, port, "/api/v1/jobs", signed_body(alice, spec, api_node.cluster_id))
    assert status == 201
    job_id = data["id"]
    cancel = f"/api/v1/jobs/{job_id}/cancel"
    status, data = await trio.to_thread.run_sync(post, port, cancel, json.dumps(sign(mallory, {"cancel": job_id}, api_node.cluster_id)).encode())
    assert status == 403 and "only the client that submitted" in data["error"]
    status, data = await trio.to_thread.run_sync(post, port, cancel, b"{}")
    assert status == 400
    status, data = await trio.to_thread.run_sync(post, port, cancel, json.dumps(sign(alice, {"cancel": job_id}, api_node.cluster_id)).encode())
    assert status == 200 and data["state"] == "cancelled"


async def test_non_loopback_clients_need_the_api_token() -> None:
    # The guard is driven with ASGI scopes directly: a second machine's address cannot be used in tests here
    from bacalhau.api.server import TokenGuard

    reached: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        reached.append(scope["client"][0])

    sent: list[dict] = []  # type: ignore[type-arg]

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        sent.append(message)

    async def receive() -> dict:  # type: ignore[type-arg]
        return {"type": "http.request", "body": b""}

    guard = TokenGuard(app, "s3cret")

    def scope(client: str, auth: str = "") -> dict:  # type: ignore[type-arg]
        headers = [(b"authorization", f"Bearer {auth}".encode())] if auth else []
        return {"type": "http", "client": (client, 1), "headers": headers, "method": "GET", "path": "/"}

    await guard(scope("127.0.0.1"), receive, send)
    await guard(scope("10.1.2.3", "s3cret"), receive, send)
    assert reached == ["127.0.0.1", "10.1.2.3"]
    await guard(scope("10.1.2.3", "wrong"), receive, send)
    await guard(scope("10.1.2.3"), receive, send)
    assert reached == ["127.0.0.1", "10.1.2.3"]
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [401, 401]
