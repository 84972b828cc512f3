"""Costs of a cluster besides the jobs (issue 15): what a `bacalhau devstack -n N` burns idle, and what one
small bprotocol call on the mux costs between two hosts in one process (with the yamux window updates sent).

    .venv/bin/python benchmarks/cluster_costs.py idle [--nodes 12] [--seconds 15]
    .venv/bin/python benchmarks/cluster_costs.py echo [--calls 2000] [--callers 1]

The same-run baseline is another tree's code: PYTHONPATH=/path/to/tree (devstack runs from the tree bacalhau
is imported from). Use `env -u PYTHONDONTWRITEBYTECODE`.

Measured on the shared 2-core machine (load 10-18), alternated with the branch point (1054790):
  echo, 2000 calls one at a time, 300 bytes: main 0.63-0.74 ms of CPU a call and 4000 window updates (one
  per read at each end); yamux credit given back in halves of the window 0.48-0.55 ms, 4 updates. With 16
  callers (frames batched in each write) 0.073 -> 0.069 ms, 500 -> 250 updates (before the halves patch's
  final form: py-libp2p's release-on-read switch alone).
  idle, devstack -n 12, 15 s after 8 s settling: main 43, 53, 57 ms of CPU a second; subscriptions announced
  again in one RPC without a signed record 31, 33, 37.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _serve import cpu_seconds  # noqa: E402


def idle(nodes: int, seconds: float) -> None:
    from scheduling import devstack

    os.environ.setdefault("BACALHAU_DIR", tempfile.mkdtemp(prefix="bacalhau-bench-client-"))
    with devstack(nodes) as (_, pid):
        time.sleep(8)
        start = cpu_seconds(pid)
        time.sleep(seconds)
        used = cpu_seconds(pid) - start
    print(f"devstack -n {nodes} idle: {used * 1000 / seconds:.0f} ms of CPU a second")


async def echo(calls: int, callers: int) -> None:
    from libp2p.stream_muxer.yamux import yamux

    from bacalhau.bprotocol.p2p_transport import P2PTransport
    from bacalhau.p2p.host import P2PHost

    updates = [0]
    original = yamux.YamuxStream.send_window_update

    async def counted(self: yamux.YamuxStream, *args: object, **kw: object) -> None:
        updates[0] += 1
        await original(self, *args, **kw)  # type: ignore[arg-type]

    yamux.YamuxStream.send_window_update = counted  # type: ignore[method-assign]
    tmp, key = Path(tempfile.mkdtemp()), "a" * 64
    async with trio.open_nursery() as nursery:
        a = await nursery.start(P2PHost(key_path=tmp / "a", listen_host="127.0.0.1", listen_port=0, psk=key,
                                        pubsub=False).run)
        b = await nursery.start(P2PHost(key_path=tmp / "b", listen_host="127.0.0.1", listen_port=0, psk=key,
                                        pubsub=False, peers=[a.listen_addrs[0]]).run)
        server = await nursery.start(P2PTransport(a).run)
        client = await nursery.start(P2PTransport(b).run)

        async def answer(peer: str, data: bytes) -> bytes:
            return data

        server.register("/bench/echo/1.0.0", answer)
        while not b.connected_peers():  # noqa: ASYNC110 (the host has no event for a connection made)
            await trio.sleep(0.02)
        payload = b"x" * 300
        for _ in range(50):
            await client.call(a.peer_id, "/bench/echo/1.0.0", payload, timeout=10)
        updates[0], left = 0, [calls]
        cpu, start = time.process_time(), time.perf_counter()

        async def caller() -> None:
            while left[0] > 0:
                left[0] -= 1
                await client.call(a.peer_id, "/bench/echo/1.0.0", payload, timeout=10)

        async with trio.open_nursery() as callers_nursery:
            for _ in range(callers):
                callers_nursery.start_soon(caller)
        used, took = time.process_time() - cpu, time.perf_counter() - start
        print(f"{calls} calls from {callers} caller(s): {used * 1000 / calls:.3f} ms of CPU a call, "
              f"{calls / took:.0f} calls/s, {updates[0]} window updates")
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p_idle = sub.add_parser("idle")
    p_idle.add_argument("--nodes", type=int, default=12)
    p_idle.add_argument("--seconds", type=float, default=15.0)
    p_echo = sub.add_parser("echo")
    p_echo.add_argument("--calls", type=int, default=2000)
    p_echo.add_argument("--callers", type=int, default=1)
    args = parser.parse_args()
    if args.what == "idle":
        idle(args.nodes, args.seconds)
    else:
        trio.run(echo, args.calls, args.callers)


if __name__ == "__main__":
    main()
