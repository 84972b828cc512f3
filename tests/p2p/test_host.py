"""The libp2p host over real TCP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from bacalhau.errors import BacalhauError, TransportError
from bacalhau.p2p.host import P2PHost, P2PStream


def host(tmp_path: Path, name: str, **kw: object) -> P2PHost:
    return P2PHost(key_path=tmp_path / f"{name}.key", listen_host="127.0.0.1", listen_port=0, **kw)  # type: ignore[arg-type]


async def connected(a: P2PHost, b: P2PHost) -> None:
    with trio.fail_after(10):
        while a.peer_id not in b.connected_peers():
            await trio.sleep(0.02)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[P2PHost, P2PHost]]:
    async with trio.open_nursery() as nursery:
        a = await nursery.start(host(tmp_path, "a").run)
        b = await nursery.start(host(tmp_path, "b", peers=[a.listen_addrs[0]]).run)
        await connected(a, b)
        yield a, b
        nursery.cancel_scope.cancel()


async def test_identity_is_created_once_and_kept(tmp_path: Path) -> None:
    ids = []
    for _ in range(2):
        async with trio.open_nursery() as nursery:
            h = await nursery.start(host(tmp_path, "same").run)
            ids.append(h.peer_id)
            assert h.listen_addrs[0].endswith(f"/p2p/{h.peer_id}")
            nursery.cancel_scope.cancel()
    assert ids[0] == ids[1] and ids[0].startswith("12D3KooW")


async def test_requests_both_ways_and_many_at_once(pair: tuple[P2PHost, P2PHost]) -> None:
    a, b = pair

    async def reverse(peer: str, data: bytes) -> bytes:
        return peer.encode() + b":" + data[::-1]

    a.set_request_handler("/test/reverse/1.0.0", reverse)
    b.set_request_handler("/test/reverse/1.0.0", reverse)
    assert await a.request(b.peer_id, "/test/reverse/1.0.0", b"abc") == a.peer_id.encode() + b":cba"
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        results[i] = await b.request(a.peer_id, "/test/reverse/1.0.0", str(i).encode())

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(one, i)
    assert all(results[i] == b.peer_id.encode() + b":" + str(i).encode()[::-1] for i in range(50))


async def test_a_failing_handler_errors_the_caller_and_the_host_keeps_serving(pair: tuple[P2PHost, P2PHost]) -> None:
    a, b = pair

    async def fragile(peer: str, data: bytes) -> bytes:
        if data == b"boom":
            raise ValueError("bug in a handler")
        return b"ok"

    a.set_request_handler("/test/fragile/1.0.0", fragile)
    with pytest.raises(BacalhauError):
        await b.request(a.peer_id, "/test/fragile/1.0.0", b"boom", timeout=5)
    assert await b.request(a.peer_id, "/test/fragile/1.0.0", b"fine") == b"ok"


async def test_oversize_frames_are_refused_and_the_host_keeps_serving(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        small = await nursery.start(host(tmp_path, "small", max_frame=1024).run)
        big = await nursery.start(host(tmp_path, "big", peers=[small.listen_addrs[0]]).run)
        await connected(small, big)

        async def echo(peer: str, data: bytes) -> bytes:
            return data

        small.set_request_handler("/test/echo/1.0.0", echo)
        with pytest.raises(BacalhauError):
            await big.request(small.peer_id, "/test/echo/1.0.0", b"x" * 100_000, timeout=5)
        assert await big.request(small.peer_id, "/test/echo/1.0.0", b"small") == b"small"
        nursery.cancel_scope.cancel()


async def test_reads_time_out(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        a = await nursery.start(host(tmp_path, "a").run)
        b = await nursery.start(host(tmp_path, "b", peers=[a.listen_addrs[0]]).run)
        await connected(a, b)

        async def slow(peer: str, data: bytes) -> bytes:
            await trio.sleep(30)
            return b""

        a.set_request_handler("/test/slow/1.0.0", slow)
        with trio.fail_after(5), pytest.raises(TransportError, match="timed out"):
            await b.request(a.peer_id, "/test/slow/1.0.0", b"?", timeout=0.5)
        nursery.cancel_scope.cancel()


async def test_unknown_protocol_is_a_clear_error(pair: tuple[P2PHost, P2PHost]) -> None:
    a, b = pair
    with pytest.raises(TransportError, match="/test/nobody/1.0.0"):
        await b.request(a.peer_id, "/test/nobody/1.0.0", b"?", timeout=5)

    async def echo(peer: str, data: bytes) -> bytes:
        return data

    a.set_request_handler("/test/echo/1.0.0", echo)
    assert await b.request(a.peer_id, "/test/echo/1.0.0", b"still up") == b"still up"


async def test_bulk_transfer_on_one_stream_arrives_intact_through_the_fast_paths(
        pair: tuple[P2PHost, P2PHost]) -> None:
    import random

    from bacalhau.p2p import fastpath

    assert fastpath.apply()       # read-ahead, coalesced noise writes and noise-sized yamux frames are on
    a, b = pair
    blob = os.urandom(20 * 1024 * 1024)
    rng = random.Random(7)

    async def send(peer: str, stream: P2PStream) -> None:
        await stream.read_frame()
        i = 0
        while i < len(blob):    # writes of every size: a byte, under, at and over a noise frame, megabytes
            size = rng.choice([1, 2, 65519 - 12, 65519, 65536, rng.randrange(1, 3 * 1024 * 1024)])
            await stream.write(blob[i:i + size])
            i += size
        await stream.close()

    a.set_stream_handler("/test/bulk/1.0.0", send)
    stream = await b.open_stream(a.peer_id, "/test/bulk/1.0.0")
    await stream.write_frame(b"go")
    digest, total = hashlib.sha256(), 0
    while chunk := await stream.read(rng.choice([1, 5, 4096, 1 << 20])):
        digest.update(chunk)
        total += len(chunk)
    assert total == len(blob) and digest.digest() == hashlib.sha256(blob).digest()


async def test_pubsub_relays_across_a_star(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        hub = await nursery.start(host(tmp_path, "hub").run)
        left = await nursery.start(host(tmp_path, "left", peers=[hub.listen_addrs[0]]).run)
        right = await nursery.start(host(tmp_path, "right", peers=[hub.listen_addrs[0]]).run)
        await connected(hub, left)
        await connected(hub, right)
        got: dict[str, list[tuple[str, bytes]]] = {"hub": [], "left": [], "right": []}

        async def listen(name: str, h: P2PHost, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with h.subscribe("test-topic") as messages:
                task_status.started()
                async for item in messages:   # every subscriber reads, as nodes do
                    got[name].append(item)

        for name, h in (("hub", hub), ("left", left), ("right", right)):
            await nursery.start(listen, name, h)
        with trio.fail_after(20):
            i = 0
            while not got["right"]:  # meshes form on heartbeats: publish until the first one lands
                await left.publish("test-topic", b"hello-%d" % i)
                i += 1
                await trio.sleep(0.2)
        assert got["right"][0][0] == left.peer_id and got["right"][0][1].startswith(b"hello-")
        assert got["hub"]
        nursery.cancel_scope.cancel()


async def test_a_plaintext_dialer_is_refused(tmp_path: Path) -> None:
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

    async with trio.open_nursery() as nursery:
        ours = await nursery.start(host(tmp_path, "ours").run)
        kp = create_new_key_pair()
        intruder = new_host(key_pair=kp, sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(kp)},
                            listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")])
        async with intruder.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            refused = False
            with trio.move_on_after(10):
                try:
                    await intruder.connect(info_from_p2p_addr(multiaddr.Multiaddr(ours.listen_addrs[0])))
                except Exception:
                    refused = True
            assert refused
            assert intruder.get_id().to_base58() not in ours.connected_peers()
        nursery.cancel_scope.cancel()
