"""The API as an attacker sees it: a web page in a browser on the node's machine, a replayed or foreign
signature, a huge body, a crowd of websockets, a follower that never reads, a peek at another's secrets."""

from __future__ import annotations

import http.client
import json
import math
import os
import select
import socket
import stat
import time
from functools import partial
from pathlib import Path

import pytest
import trio

from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.node import Node, NodeDeps
from bacalhau.signing import cluster_id_of, load_or_create_client_key, sign
from tests.conftest import node_config

NOOP = {"engine": "noop", "noop": {"stdout": "x"}}


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(data) if data else {}


async def call(port: int, method: str, path: str, body: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    return await trio.to_thread.run_sync(partial(request, port, method, path, body, headers))


def signed(key: object, spec: dict, cluster_id: str) -> bytes:  # type: ignore[type-arg]
    return json.dumps({"spec": spec, **sign(key, {"submit": spec}, cluster_id)}).encode()


JSON = {"Content-Type": "application/json"}


async def job_count(node: Node) -> int:
    assert node.requester is not None
    return len(await node.requester.store.list_jobs(None))


# -- a web page on the node's machine --------------------------------------------------------------------

async def test_a_cross_origin_post_from_a_web_page_is_refused_and_creates_no_job(api_node: Node, tmp_path: Path) -> None:
    port = api_node.api_port
    key = load_or_create_client_key(tmp_path / "k")
    # the page's script posts a well-formed, even signed, job: the browser adds its Origin
    status, data = await call(
        port, "POST", "/api/v1/jobs", signed(key, NOOP, api_node.cluster_id),
        {**JSON, "Origin": "http://evil.example"})
    assert status == 403 and "other origins" in data["error"]
    status, _ = await call(
        port, "GET", "/api/v1/jobs", headers={"Origin": "null"})
    assert status == 403
    assert await job_count(api_node) == 0
    # the API's own origin and no Origin at all (CLI, SDK) pass
    status, _ = await call(
        port, "GET", "/api/v1/jobs", headers={"Origin": f"http://127.0.0.1:{port}"})
    assert status == 200


async def test_a_form_post_which_needs_no_preflight_gets_415(api_node: Node, tmp_path: Path) -> None:
    port = api_node.api_port
    key = load_or_create_client_key(tmp_path / "k")
    body = signed(key, NOOP, api_node.cluster_id)
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"):
        status, data = await call(
            port, "POST", "/api/v1/jobs", body, {"Content-Type": content_type})
        assert status == 415 and "application/json" in data["error"], content_type
    status, _ = await call(port, "POST", "/api/v1/jobs", body)
    assert status == 415   # no content type at all
    assert await job_count(api_node) == 0


async def test_a_dns_rebinding_host_is_refused_on_http_and_websocket(api_node: Node) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    port = api_node.api_port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", f"localhost.evil.example:{port}"):
        status, data = await call(
            port, "GET", "/api/v1/jobs", headers={"Host": host})
        assert status == 403 and "Host" in data["error"], host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        status, _ = await call(
            port, "GET", "/api/v1/version", headers={"Host": host})
        assert status == 200, host

    def ws(host: str, headers: dict[str, str]) -> int:
        # the rebound name resolves to 127.0.0.1: connect there, name the attacker's host in the handshake
        sock = socket.create_connection(("127.0.0.1", port))
        try:
            with connect(f"ws://{host}/api/v1/jobs/x/logs", sock=sock, additional_headers=headers, open_timeout=10):
                return 101
        except InvalidStatus as exc:
            return int(exc.response.status_code)

    assert await trio.to_thread.run_sync(ws, f"evil.example:{port}", {}) == 403
    assert await trio.to_thread.run_sync(ws, f"127.0.0.1:{port}", {"Origin": "http://evil.example"}) == 403
    assert await trio.to_thread.run_sync(ws, f"127.0.0.1:{port}", {}) == 101


# -- signatures ------------------------------------------------------------------------------------------

async def test_a_replayed_signed_submit_is_refused_and_makes_no_second_job(api_node: Node, tmp_path: Path) -> None:
    port = api_node.api_port
    body = signed(load_or_create_client_key(tmp_path / "k"), NOOP, api_node.cluster_id)
    status, _ = await call(port, "POST", "/api/v1/jobs", body, JSON)
    assert status == 201
    status, data = await call(port, "POST", "/api/v1/jobs", body, JSON)
    assert status == 409 and "already used" in data["error"] and "\n" not in data["error"]
    assert await job_count(api_node) == 1


async def test_a_replay_is_refused_after_a_restart_too(tmp_path: Path) -> None:
    key = load_or_create_client_key(tmp_path / "k")
    # an in-memory node's cluster id comes from its node id, new at each start: a real swarm key here
    cfg = node_config(tmp_path / "node", engines=("noop",))
    body = b""
    for attempt in range(2):
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(cfg).run)
            body = body or signed(key, NOOP, node.cluster_id)
            status, data = await call(node.api_port, "POST", "/api/v1/jobs", body, JSON)
            assert status == (201, 409)[attempt], data
            nursery.cancel_scope.cancel()


async def test_signatures_for_another_cluster_or_out_of_time_are_refused(api_node: Node, tmp_path: Path) -> None:
    port = api_node.api_port
    key = load_or_create_client_key(tmp_path / "k")
    other = signed(key, NOOP, cluster_id_of("ab" * 32))
    status, data = await call(port, "POST", "/api/v1/jobs", other, JSON)
    assert status == 400 and "another cluster" in data["error"]
    # claiming this cluster while the signature covers another does not verify either
    forged = json.loads(other) | {"cluster_id": api_node.cluster_id}
    status, data = await call(port, "POST", "/api/v1/jobs", json.dumps(forged).encode(), JSON)
    assert status == 400 and "does not verify" in data["error"]
    for when in (math.nan, math.inf, time.time() - 120, time.time() + 120):
        body = {"spec": NOOP, **sign(key, {"submit": NOOP}, api_node.cluster_id)}
        body["signed_at"] = when
        # re-sign over the forged time so only the time is wrong
        from bacalhau.signing import _canonical

        body["signature"] = key.sign(_canonical({"submit": NOOP}, when, api_node.cluster_id,  # type: ignore[attr-defined]
                                                body["nonce"])).hex()
        status, data = await call(port, "POST", "/api/v1/jobs", json.dumps(body).encode(), JSON)
        assert status == 400 and ("not a time" in data["error"] or "allowed" in data["error"]), (when, data)
    assert await job_count(api_node) == 0
    status, ident = await call(port, "GET", "/api/v1/id")
    assert ident["cluster_id"] == api_node.cluster_id


# -- sizes -----------------------------------------------------------------------------------------------

def stream_post(port: int, total: int, chunked: bool, path: str = "/api/v1/jobs") -> tuple[int, bytes]:
    """POST `total` bytes in 64 KiB writes, looking for an answer between writes: (bytes sent, answer)."""
    s = socket.create_connection(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
    s.sendall(head.encode())
    s.setblocking(False)
    chunk, sent, deadline = b" " * 65536, 0, time.monotonic() + 30
    try:
        while sent < total and time.monotonic() < deadline:
            readable, writable, _ = select.select([s], [s], [], 1)
            if readable:
                break
            if writable:
                try:
                    sent += s.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                except OSError:
                    break
        s.setblocking(True)
        s.settimeout(10)
        return sent, s.recv(65536)
    finally:
        s.close()


async def test_a_100mb_body_is_refused_with_413_before_it_is_read(api_node: Node) -> None:
    port = api_node.api_port
    cancel = f"/api/v1/jobs/{await _long_job(api_node)}/cancel"
    for chunked, path in ((False, "/api/v1/jobs"), (True, "/api/v1/jobs"), (True, cancel)):
        sent, answer = await trio.to_thread.run_sync(stream_post, port, 100 * 1024 * 1024, chunked, path)
        assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:100])
        # the node read at most its cap (4 MiB) and the kernel buffered a few more: far from 100 MB
        assert sent < 32 * 1024 * 1024, sent
    status, _ = await call(port, "GET", "/api/v1/version")
    assert status == 200


# -- secrets on disk -------------------------------------------------------------------------------------

def test_secret_files_are_never_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bacalhau.p2p.host import load_or_create_identity
    from bacalhau.p2p.swarm_key import load_or_create_swarm_key
    from bacalhau.secret_file import write_secret

    old = os.umask(0o022)
    try:
        # every write of a secret goes through a file created 0600: record each file's mode right after it
        # is opened, before a byte is written (a write-then-chmod is visible to others in between)
        seen: list[int] = []
        real_fdopen = os.fdopen

        def watching_fdopen(fd: int, *a: object, **kw: object):  # type: ignore[no-untyped-def]
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
            return real_fdopen(fd, *a, **kw)  # type: ignore[call-overload]

        monkeypatch.setattr(os, "fdopen", watching_fdopen)
        load_or_create_client_key(tmp_path / "state" / "client.key")
        load_or_create_swarm_key(tmp_path / "repo" / "swarm.key")
        load_or_create_identity(tmp_path / "repo" / "identity.key")
        write_secret(tmp_path / "repo" / "api.token", "t\n")
        assert seen == [0o600] * 4
        for path in ("state/client.key", "repo/swarm.key", "repo/identity.key", "repo/api.token"):
            assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o600, path
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
        assert not [p for p in (tmp_path / "repo").iterdir() if p.name.endswith(".tmp")]
    finally:
        os.umask(old)


async def test_the_repo_is_private_and_an_open_one_is_tightened(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        fresh, existing = tmp_path / "fresh", tmp_path / "existing"
        existing.mkdir(mode=0o755)
        existing.chmod(0o755)
        for repo in (fresh, existing):
            async with trio.open_nursery() as nursery:
                await nursery.start(Node(node_config(repo, engines=("noop",)), NodeDeps(network=InMemoryNetwork())).run)
                nursery.cancel_scope.cancel()
            assert stat.S_IMODE(repo.stat().st_mode) == 0o700, repo
    finally:
        os.umask(old)


# -- another client's secrets ----------------------------------------------------------------------------

@pytest.mark.slow
async def test_env_values_are_shown_in_clear_to_their_owner_only(api_node: Node, tmp_path: Path) -> None:
    from tests.conftest import run_cli

    port = api_node.api_port
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps({"engine": "docker", "docker": {"image": "x", "env": {"TOKEN": "hunter2"}}}))
    alice, mallory = {"BACALHAU_DIR": str(tmp_path / "alice")}, {"BACALHAU_DIR": str(tmp_path / "mallory")}
    created = await run_cli(api_node, "create", str(spec), env=alice)
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.strip()
    for path in (f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/wait?timeout=0", "/api/v1/jobs?limit=0"):
        status, data = await call(port, "GET", path)
        assert status == 200 and "hunter2" not in json.dumps(data), path
    seen = await run_cli(api_node, "describe", job_id, "-o", "json", env=mallory)
    assert seen.returncode == 0 and json.loads(seen.stdout)["spec"]["docker"]["env"] == {"TOKEN": "***"}
    # a signed describe proves who asks: only the submitter gets the value (and can feed it back to create)
    own = await run_cli(api_node, "describe", job_id, "-o", "json", env=alice)
    assert own.returncode == 0 and json.loads(own.stdout)["spec"]["docker"]["env"] == {"TOKEN": "hunter2"}
    # someone else's `describe -o yaml` fed back to `create` as it is: one clear line, not a job run with "***"
    again = tmp_path / "again.json"
    again.write_text(json.dumps(json.loads(seen.stdout)["spec"]))
    res = await run_cli(api_node, "create", str(again), env=mallory)
    assert res.returncode == 1 and "env TOKEN" in res.stderr and "Traceback" not in res.stderr


# -- websockets ------------------------------------------------------------------------------------------

async def _long_job(node: Node, stdout: str = "x\n", sleep: float = 30) -> str:
    from bacalhau.models import Engine, JobSpec, NoopSpec

    assert node.requester is not None
    return (await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout=stdout, sleep=sleep)))).id


async def test_one_websocket_over_the_caps_is_refused_with_a_reason(api_node: Node,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    import bacalhau.api.logs as api_logs

    url = f"ws://127.0.0.1:{api_node.api_port}/api/v1/jobs/{await _long_job(api_node)}/logs?follow=1"

    def open_and_read_first() -> object:
        ws = connect(url, open_timeout=10).__enter__()
        ws.recv(timeout=10)   # the "execution" event: this follower is being served
        return ws

    def refused() -> tuple[int, str]:
        with connect(url, open_timeout=10) as ws:
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                return exc.rcvd.code, exc.rcvd.reason
        raise AssertionError("served")

    for total, per_client, words in ((100, 3, "from 127.0.0.1"), (2, 100, "try again later")):
        monkeypatch.setattr(api_logs, "MAX_FOLLOWERS", total)
        monkeypatch.setattr(api_logs, "MAX_FOLLOWERS_PER_CLIENT", per_client)
        held = [await trio.to_thread.run_sync(open_and_read_first) for _ in range(min(total, per_client))]
        try:
            code, reason = await trio.to_thread.run_sync(refused)
            assert code == 1013 and words in reason, reason
        finally:
            for ws in held:
                await trio.to_thread.run_sync(ws.close)  # type: ignore[attr-defined]
        with trio.fail_after(10):   # closed ones free their places
            while True:
                try:
                    ws = await trio.to_thread.run_sync(open_and_read_first)
                except ConnectionClosed:
                    await trio.sleep(0.05)
                    continue
                await trio.to_thread.run_sync(ws.close)  # type: ignore[attr-defined]
                break


def raw_websocket(port: int, path: str) -> socket.socket:
    """A websocket handshake by hand on a socket with a small receive buffer, which is then never read."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    assert s.recv(12) == b"HTTP/1.1 101"
    return s


async def test_a_follower_that_never_reads_is_dropped_and_frees_its_stream(api_node: Node,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import bacalhau.api.server as api_server

    monkeypatch.setattr(api_server, "SEND_TIMEOUT", 1.0)
    assert api_node.compute is not None
    job_id = await _long_job(api_node)
    assert api_node.requester is not None
    with trio.fail_after(10):
        while not (running := [e for e in (await api_node.requester.store.get_job(job_id)).executions
                               if e.state.value in ("bid_accepted", "running")]):
            await trio.sleep(0.02)
    stdout = api_node.compute.execution_dir(running[0].id).stdout
    with trio.fail_after(10):
        while not (stdout.exists() and stdout.stat().st_size):
            await trio.sleep(0.02)

    def flood() -> None:   # the job floods its output (what a container does): 32 MB
        with open(stdout, "ab") as f:
            f.write(b"y" * (32 * 1024 * 1024))

    await trio.to_thread.run_sync(flood)
    sock = await trio.to_thread.run_sync(raw_websocket, api_node.api_port, f"/api/v1/jobs/{job_id}/logs?follow=1")
    try:
        with trio.fail_after(15):
            while not api_node.compute.log_followers:
                await trio.sleep(0.05)
        with trio.fail_after(20):   # the client is still connected, the job still runs: the node let it go
            while api_node.compute.log_followers:
                await trio.sleep(0.05)
        assert api_node.requester is not None
        assert not (await api_node.requester.store.get_job(job_id, full=False)).state.terminal
    finally:
        sock.close()
    status, _ = await call(api_node.api_port, "GET", "/api/v1/version")
    assert status == 200


def test_the_hypercorn_fixes_apply_to_the_installed_version() -> None:
    from hypercorn.trio.tcp_server import TCPServer

    from bacalhau.api.server import _guard_hypercorn

    _guard_hypercorn()
    assert getattr(TCPServer, "_bacalhau_guarded", False), "hypercorn changed: review _guard_hypercorn"


async def test_many_idle_followers_of_one_execution_do_not_each_poll_through_the_thread_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bacalhau.compute.logs as logs

    calls = {"read": 0, "look": 0}
    real_read, real_sizes = logs._read_from, logs._sizes

    def read(path: Path, offset: int) -> bytes:
        calls["read"] += 1
        return real_read(path, offset)

    def sizes(paths: dict[int, Path]) -> dict[int, float]:
        calls["look"] += 1
        return real_sizes(paths)

    monkeypatch.setattr(logs, "_read_from", read)
    monkeypatch.setattr(logs, "_sizes", sizes)
    (tmp_path / "stdout").write_bytes(b"a")
    got: list[bytes] = [b""] * 20

    async def running() -> logs.LogEnd | None:
        return None

    async def follow(i: int) -> None:
        async for chunk in logs.stream_logs(tmp_path, logs.LogRequest(execution_id="0b5c6a0e-0000-4000-8000-000000000001"), running):
            got[i] += chunk[logs.HEADER.size:]

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(follow, i)
        with trio.fail_after(10):
            while got.count(b"a") < 20:
                await trio.sleep(0.01)
        with trio.fail_after(10):
            while calls["look"] < 20:      # the followers have settled
                await trio.sleep(0.01)
        calls.update(read=0, look=0)
        with trio.fail_after(10):
            while calls["look"] < 20:      # twenty looks at the files, for all twenty followers
                await trio.sleep(0.01)
        assert calls["read"] == 0          # nothing new: nobody read (each follower once read both files every 5 ms)
        async with await trio.open_file(tmp_path / "stdout", "ab") as f:
            await f.write(b"b")
        with trio.fail_after(10):
            while got.count(b"ab") < 20:
                await trio.sleep(0.01)
        assert calls["read"] <= 2 * 20     # each read once what was new (and maybe once more at the end)
        assert len(logs._watches) == 1
        nursery.cancel_scope.cancel()
    assert not logs._watches               # the last follower gone, its watch is gone


async def test_listening_on_all_interfaces_a_remote_client_may_name_the_machine_but_a_local_one_may_not() -> None:
    # driven with ASGI scopes: a second machine's address cannot be used here. Remote clients also need
    # the token (TokenGuard, inside), which a rebinding page cannot have
    from bacalhau.api.guard import RequestGuard

    reached: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        reached.append(scope["client"][0])

    statuses: list[int] = []

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive() -> dict:  # type: ignore[type-arg]
        return {"type": "http.request", "body": b""}

    def scope(client: str, host: str) -> dict:  # type: ignore[type-arg]
        return {"type": "http", "client": (client, 1), "server": ("0.0.0.0", 1234), "method": "GET", "path": "/",
                "headers": [(b"host", host.encode())]}

    wildcard, named = RequestGuard(app, "0.0.0.0"), RequestGuard(app, "node1.lan")
    await wildcard(scope("10.1.2.3", "node1.lan:1234"), receive, send)
    await wildcard(scope("127.0.0.1", "node1.lan:1234"), receive, send)      # a rebound name, locally
    await named(scope("10.1.2.3", "node1.lan:1234"), receive, send)
    await named(scope("10.1.2.3", "other.lan:1234"), receive, send)
    await wildcard(scope("10.1.2.3", "node1.lan:9999"), receive, send)       # not this API's port
    assert reached == ["10.1.2.3", "10.1.2.3"] and statuses == [403, 403, 403]


async def test_the_cli_says_in_one_line_that_the_follower_cap_is_reached(api_node: Node,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import bacalhau.api.logs as api_logs
    from tests.conftest import run_cli

    monkeypatch.setattr(api_logs, "MAX_FOLLOWERS_PER_CLIENT", 0)
    res = await run_cli(api_node, "logs", "-f", await _long_job(api_node), timeout=20)
    assert res.returncode == 1 and "log followers from 127.0.0.1" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


async def test_bodies_nested_past_the_parser_and_numbers_past_sqlite_get_one_line_and_a_400(api_node: Node) -> None:
    """JSON nested deeper than the parser recurses (RecursionError) and a page size past SQLite's integers
    (OverflowError) were answered 500; a malformed number was answered with Python's own words."""
    port = api_node.api_port
    job = f"/api/v1/jobs/{await _long_job(api_node)}"
    cases = [("POST", "/api/v1/jobs", b"[" * 100_000, "nested"),
             ("POST", f"{job}/cancel", b'{"a": ' * 50_000, "nested"),
             ("GET", "/api/v1/jobs?limit=99999999999999999999999", None, "limit"),
             ("GET", "/api/v1/jobs?limit=x", None, "limit"),
             ("GET", f"{job}/wait?timeout=x", None, "timeout"),
             ("GET", f"{job}/wait?timeout=nan", None, "timeout")]
    for method, path, body, word in cases:
        status, answer = await trio.to_thread.run_sync(
            partial(request, port, method, path, body, {"Content-Type": "application/json"}))
        assert status == 400, (path, answer)
        assert word in answer["error"] and "\n" not in answer["error"], (path, answer)
        assert "invalid literal" not in answer["error"] and "could not convert" not in answer["error"]
    assert (await call(port, "GET", "/api/v1/version"))[0] == 200


async def test_a_submit_signature_accepted_before_the_upgrade_is_still_refused_after(tmp_path: Path) -> None:
    """Submits' signatures moved from api.db into the job's own transaction in jobs.db: one accepted by the old
    layout (recorded in api.db only) must not be accepted a second time after the upgrade."""
    from bacalhau.api.replay import SeenSignatures
    from bacalhau.signing import verify

    key = load_or_create_client_key(tmp_path / "k")
    cfg = node_config(tmp_path / "node", engines=("noop",))
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg).run)
        cluster_id = node.cluster_id
        nursery.cancel_scope.cancel()
    body = signed(key, NOOP, cluster_id)
    old = SeenSignatures(cfg.repo_dir / "api.db")      # what the previous main did with an accepted submit
    accepted = verify(json.loads(body), {"submit": NOOP}, cluster_id)
    await old.accept(accepted.signature, accepted.signed_at)
    old.close()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg).run)
        status, data = await call(node.api_port, "POST", "/api/v1/jobs", body, JSON)
        assert status == 409 and "already used" in data["error"], data
        assert await job_count(node) == 0
        fresh = signed(key, NOOP, cluster_id)
        assert (await call(node.api_port, "POST", "/api/v1/jobs", fresh, JSON))[0] == 201
        assert (await call(node.api_port, "POST", "/api/v1/jobs", fresh, JSON))[0] == 409
        assert await job_count(node) == 1
        nursery.cancel_scope.cancel()
