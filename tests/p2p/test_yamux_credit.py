"""yamux credit given back in halves of the window (p2p/fastpath.py): small calls on a long-lived stream send
no window update each, and a bulk transfer still flows (a reader that keeps reading never stalls its sender)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.stream_muxer.yamux import yamux as yamux_module

from bacalhau.bprotocol.p2p_transport import P2PTransport
from bacalhau.p2p.host import P2PHost, P2PStream
from tests.conftest import TEST_SWARM_KEY


@asynccontextmanager
async def two_hosts(tmp_path: Path) -> AsyncIterator[tuple[P2PHost, P2PHost]]:
    async with trio.open_nursery() as nursery:
        a = await nursery.start(P2PHost(key_path=tmp_path / "a.key", listen_host="127.0.0.1", listen_port=0,
                                        psk=TEST_SWARM_KEY, pubsub=False).run)
        b = await nursery.start(P2PHost(key_path=tmp_path / "b.key", listen_host="127.0.0.1", listen_port=0,
                                        psk=TEST_SWARM_KEY, pubsub=False, peers=[a.listen_addrs[0]]).run)
        with trio.fail_after(10):
            while not b.connected_peers():
                await trio.sleep(0.02)
        yield a, b
        nursery.cancel_scope.cancel()


def count_window_updates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sent = [0]
    original = yamux_module.YamuxStream.send_window_update

    async def counted(self: Any, *args: Any, **kw: Any) -> None:
        sent[0] += 1
        await original(self, *args, **kw)

    monkeypatch.setattr(yamux_module.YamuxStream, "send_window_update", counted)
    return sent


async def test_small_calls_on_the_mux_send_no_window_update_each(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sent = count_window_updates(monkeypatch)
    async with two_hosts(tmp_path) as (a, b), trio.open_nursery() as nursery:
        server = await nursery.start(P2PTransport(a).run)
        client = await nursery.start(P2PTransport(b).run)

        async def echo(peer: str, data: bytes) -> bytes:
            return data

        server.register("/test/echo/1.0.0", echo)
        await client.call(a.peer_id, "/test/echo/1.0.0", b"warm", timeout=10)
        sent[0] = 0
        for i in range(200):       # one at a time: each frame is a read of its own at both ends
            assert await client.call(a.peer_id, "/test/echo/1.0.0", b"%d" % i * 50, timeout=10) == b"%d" % i * 50
        assert sent[0] <= 4        # was one a read: 400 for 200 calls
        nursery.cancel_scope.cancel()


async def test_a_bulk_transfer_flows_with_credit_given_back_in_halves(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sent = count_window_updates(monkeypatch)
    size = 8 * 1024 * 1024
    async with two_hosts(tmp_path) as (a, b):
        async def blast(peer: str, stream: P2PStream) -> None:
            for _ in range(size // 65536):
                await stream.write(b"x" * 65536)
            await stream.close()

        a.set_stream_handler("/test/blast/1.0.0", blast)
        stream = await b.open_stream(a.peer_id, "/test/blast/1.0.0")
        got = 0
        with trio.fail_after(30):
            while chunk := await stream.read(256 * 1024):
                got += len(chunk)
        assert got == size
        assert 0 < sent[0] < size // (128 * 1024) + 8     # about one per half window read, never one a read
