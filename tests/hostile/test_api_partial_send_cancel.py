"""A write the socket takes only in part must still go out whole, even when its task is cancelled: the fast
path (server._send_now) puts the first part on the wire before the lock, and a Cancelled raised at the lock
left the connection with half a frame on it (the websocket close handshake or the next answer then follows
the torn frame)."""

from __future__ import annotations

import socket
import types

import trio
from hypercorn.events import RawData
from hypercorn.trio.tcp_server import TCPServer

from bacalhau.api.server import _guard_hypercorn


async def test_cancelled_partial_write_is_not_torn() -> None:
    _guard_hypercorn()
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    peer = trio.socket.from_stdlib_socket(b)
    closed: list[object] = []

    async def handle(event: object) -> None:
        closed.append(event)

    fake = types.SimpleNamespace(send_lock=trio.Lock(), stream=stream, config=None,
                                 protocol=types.SimpleNamespace(handle=handle, client=None))
    data = b"x" * (1 << 20)      # far more than the socket takes at once
    got = bytearray()

    async def drain() -> None:
        while True:
            chunk = await peer.recv(65536)
            if not chunk:
                return
            got.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)    # a reader that keeps reading, started after the writer's first step
        with trio.CancelScope() as scope:
            scope.cancel()        # the writer's task is cancelled (its client said goodbye, say)
            await TCPServer.protocol_send(fake, RawData(data=data))
        await trio.sleep(0.5)
        await stream.aclose()
    # all or nothing: never a torn frame
    assert len(got) in (0, len(data)), f"{len(got)} of {len(data)} bytes went out"
