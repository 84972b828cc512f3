"""Attacks on the dashboard: forged, oversized and flooding gossip from cluster peers, markup in what peers
send, and the page and its stream reached without the token."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bacalhau.dashboard import events as ev
from bacalhau.dashboard import service as svc
from bacalhau.dashboard.service import Dashboard
from bacalhau.dashboard.store import DashboardStore
from bacalhau.models import Engine, JobState, NodeInfo, NodeType
from bacalhau.node import Node
from bacalhau.p2p.host import P2PHost
from tests.conftest import node_config

REQ = "12D3KooWRequester"


def job_event(requester: str = REQ, **kw: Any) -> ev.JobEvent:
    now = time.time()
    fields: dict[str, Any] = dict(job_id=str(uuid.uuid4()), requester=requester, state=JobState.COMPLETED,
                                  engine=Engine.NOOP, created_at=now - 1, updated_at=now)
    fields.update(kw)
    return ev.JobEvent(**fields)


async def dashboard(tmp_path: Path, nursery: trio.Nursery) -> Dashboard:
    store = DashboardStore(tmp_path / "dashboard.db")
    d = Dashboard(node_id="12D3KooWSelf", store=store, node_info_ttl=5.0, hello_interval=1.0)
    await nursery.start(d.run)
    return d


def hello(node_id: str, types: tuple[NodeType, ...] = (NodeType.REQUESTER,)) -> bytes:
    return ev.dump_hello(ev.Hello(node_id=node_id, node_types=list(types)))


async def settled(d: Dashboard, jobs: int) -> dict[str, Any]:
    with trio.fail_after(10):
        while (s := await d.store.summary())["jobs"] < jobs:
            await trio.sleep(0.02)
    return s


async def test_job_events_are_taken_only_from_the_requester_they_name(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        d = await dashboard(tmp_path, nursery)
        compute = "12D3KooWComputeOnly"
        d.node_seen(NodeInfo(node_id=compute, node_types=[NodeType.COMPUTE]))
        d.receive(compute, hello(compute))                 # says hello as a requester, its NodeInfo says not
        d.receive(compute, ev.dump(job_event(compute)))
        d.receive("12D3KooWStranger", ev.dump(job_event("12D3KooWStranger")))      # never said hello
        d.receive(REQ, hello(REQ))
        d.receive("12D3KooWStranger", ev.dump(job_event(REQ)))     # speaks for a requester
        d.receive(REQ, hello("12D3KooWOther"))                      # a hello for another node
        d.receive("12D3KooWOther", ev.dump(job_event("12D3KooWOther")))
        bad = json.loads(ev.dump(job_event(REQ)))
        bad["job"]["job_id"] = "../../etc/passwd"
        d.receive(REQ, json.dumps(bad).encode())
        bad["job"]["job_id"] = str(uuid.uuid4())
        bad["job"]["created_at"] = bad["job"]["updated_at"] = time.time() + 10 * 365 * 86400   # the far future
        d.receive(REQ, json.dumps(bad).encode())
        good = job_event(REQ)
        d.receive(REQ, ev.dump(good))                               # the only one taken
        s = await settled(d, 1)
        assert s["jobs"] == 1 and (await d.store.job(good.job_id)) is not None
        assert d.refused == 7
        nursery.cancel_scope.cancel()


async def test_oversized_and_malformed_events_are_refused_before_they_cost_anything(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        d = await dashboard(tmp_path, nursery)
        d.receive(REQ, hello(REQ))
        big = json.loads(ev.dump(job_event(REQ)))
        big["job"]["labels"] = {f"k{i}": "v" * 200 for i in range(500)}          # ~100 kB
        d.receive(REQ, json.dumps(big).encode())
        d.receive(REQ, b"{" * 7000)                                               # deep, under the size cap
        d.receive(REQ, b"\xff\xfe not json")
        wide = json.loads(ev.dump(job_event(REQ)))
        wide["job"]["labels"] = {f"k{i}": "v" for i in range(ev.MAX_LABELS + 1)}  # small, too many
        d.receive(REQ, json.dumps(wide).encode())
        extra = json.loads(ev.dump(job_event(REQ)))
        extra["job"]["spec"] = {"env": {"SECRET": "x"}}                          # unknown field
        d.receive(REQ, json.dumps(extra).encode())
        d.receive(REQ, ev.dump(job_event(REQ, image="x" * 100)))
        await settled(d, 1)
        assert d.refused == 5 and (await d.store.summary())["jobs"] == 1
        nursery.cancel_scope.cancel()


async def test_a_flood_from_one_peer_is_bounded_and_others_still_count(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        d = await dashboard(tmp_path, nursery)
        flooder, honest = "12D3KooWFlooder", "12D3KooWHonest"
        d.receive(flooder, hello(flooder))
        d.receive(honest, hello(honest))
        started = trio.current_time()
        for _ in range(50_000):              # in one go: faster than any rate a requester has
            d.receive(flooder, ev.dump(job_event(flooder)))
        took = trio.current_time() - started
        assert d._queue_send.statistics().current_buffer_used <= svc.QUEUE
        assert d.dropped >= 50_000 - svc.BURST - svc.RATE * took - 1
        # fresh sender ids do not grow the node's memory either
        for i in range(3 * svc.MAX_PEERS):
            d.receive(f"12D3KooWSybil{i}", hello(f"12D3KooWSybil{i}"))
        assert len(d.requesters) <= svc.MAX_PEERS and len(d._buckets) <= svc.MAX_PEERS
        assert len(d._nodes) <= svc.MAX_PEERS
        mine = job_event(honest)
        d.receive(honest, ev.dump(mine))
        with trio.fail_after(30):
            while await d.store.job(mine.job_id) is None:
                await trio.sleep(0.05)
        # what the flooder got in is its burst and its rate over the time it flooded, no more
        assert (await d.store.summary())["jobs"] <= svc.BURST + svc.RATE * took + 2
        nursery.cancel_scope.cancel()


async def test_a_rogue_peer_with_the_swarm_key_cannot_forge_a_requesters_jobs(tmp_path: Path) -> None:
    """Over real libp2p gossip: the rogue publishes as itself (pubsub signs the origin)."""
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "req", engines=("noop",), serve_api=False)).run)
        rogue = await nursery.start(P2PHost(key_path=tmp_path / "rogue.key", listen_host="127.0.0.1", listen_port=0,
                                            peers=[node.addrs()[0]], psk=node.swarm_key).run)
        forged = job_event(node.node_id)                    # one of the requester's, said by the rogue
        unannounced = job_event(rogue.peer_id)              # its own, but it never said it is a requester
        with trio.fail_after(20):
            while node.dashboard.refused < 2:
                await rogue.publish(ev.DASHBOARD_TOPIC, ev.dump(forged))
                await rogue.publish(ev.DASHBOARD_TOPIC, ev.dump(unannounced))
                await trio.sleep(0.2)
        assert await node.dashboard.store.job(forged.job_id) is None
        assert await node.dashboard.store.job(unannounced.job_id) is None
        nursery.cancel_scope.cancel()


@pytest.fixture
async def api_node(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "n", engines=("noop",), api_token="s3cret")).run)
        yield node
        nursery.cancel_scope.cancel()


async def test_markup_reflected_into_the_page_is_escaped(api_node: Node) -> None:
    attack = '"><script>alert(1)</script>'
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_node.api_port}") as c:
        r = await c.get("/dashboard", params={"token": attack})
        assert r.status_code == 200 and "<script>alert(1)" not in r.text and "&quot;&gt;&lt;script&gt;" not in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
        r = await c.get("/dashboard/jobs/<script>alert(1)</script>")
        assert r.status_code == 404 and "<script>alert" not in r.text


async def test_the_page_and_its_stream_need_the_token_beyond_loopback(api_node: Node) -> None:
    # driven through the ASGI app with a remote client address: no second machine here
    from bacalhau.api.replay import SeenSignatures
    from bacalhau.api.server import build_app

    seen = SeenSignatures(api_node.config.repo_dir / "api2.db")
    app = build_app(api_node.api_deps(), seen, host="node1", token="s3cret")
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://node1:8080") as c:
        for path in ("/dashboard", "/api/v1/dashboard/summary", "/dashboard/assets/dashboard.js"):
            assert (await c.get(path)).status_code == 401
        assert (await c.get("/api/v1/dashboard/summary", params={"token": "s3cret"})).status_code == 401  # header only
        r = await c.get("/dashboard", params={"token": "s3cret"})
        assert r.status_code == 200 and "dashboard.js?token=s3cret" in r.text
        assert r.headers["referrer-policy"] == "no-referrer"
        assert (await c.get("/api/v1/dashboard/summary", headers={"Authorization": "Bearer s3cret"})).status_code == 200
    seen.close()


async def test_a_page_of_another_origin_or_a_rebound_name_cannot_read_the_stream(api_node: Node) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_node.api_port}", timeout=10) as c:
        r = await c.get("/api/v1/dashboard/stream", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and r.json()["code"] == "forbidden_origin"
        r = await c.get("/api/v1/dashboard/snapshot", headers={"Host": f"evil.example:{api_node.api_port}"})
        assert r.status_code == 403 and r.json()["code"] == "forbidden_host"
        r = await c.get("/dashboard", headers={"Host": f"evil.example:{api_node.api_port}"})
        assert r.status_code == 403
