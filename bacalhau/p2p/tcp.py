"""A connection to a peer that went silent is dropped: TCP_USER_TIMEOUT on the sockets under py-libp2p.

A peer cut off without a word (a cable pulled, a network partition) leaves its connection open on this side:
what is written waits in the socket's send buffer while TCP retransmits with a backoff that reaches minutes.
py-libp2p 0.8.1 checks no liveness itself, and every writer of a connection queues behind one yamux write lock
that a send stuck on that socket holds (gossip fills the buffer within seconds), some of them shielded from
cancellation (a stream open that failed resets its stream under a shield). So a bprotocol call or a log stream
to such a peer outlived its own timeout until the link came back, and a peer whose link came back was seen
again only at TCP's next retransmission, 20-26 s after a 30 s partition (tests/hostile/test_partition.py).

With TCP_USER_TIMEOUT the kernel aborts a connection whose sent data stays unacknowledged for UNACKED_ABORT
seconds: the stuck writers fail, the connection closes, the peer is redialled as soon as it can be reached
(P2PHost._keep_connected). A live peer acknowledges within a round trip, even one that reads slowly (yamux
flow control keeps its socket drained), so only a silent one is cut. `BACALHAU_P2P_UNACKED_ABORT=0` leaves it
out, for A/B benchmarks (benchmarks/partition_heal.py).
"""

from __future__ import annotations

import logging
import os
import socket
from importlib.metadata import version
from typing import Any

log = logging.getLogger(__name__)

PATCHED_VERSION = "0.8.1"
UNACKED_ABORT = 15.0

_applied: bool | None = None


def apply() -> bool:
    """Set UNACKED_ABORT on every TCP connection py-libp2p makes or accepts from now on (once); False where
    it could not be (another py-libp2p, a kernel without TCP_USER_TIMEOUT), with a warning."""
    global _applied
    if _applied is None:
        installed = version("libp2p")
        wanted = os.environ.get("BACALHAU_P2P_UNACKED_ABORT", "1") != "0"
        _applied = wanted and installed == PATCHED_VERSION and hasattr(socket, "TCP_USER_TIMEOUT")
        if wanted and not _applied:
            log.warning("py-libp2p %s (not %s) or this kernel: a silent peer's connection is not dropped "
                        "before TCP gives up on it", installed, PATCHED_VERSION)
        if _applied:
            from libp2p.io.trio import TrioTCPStream

            init = TrioTCPStream.__init__

            def __init__(self: TrioTCPStream, stream: Any, *args: Any, **kwargs: Any) -> None:
                init(self, stream, *args, **kwargs)
                stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(UNACKED_ABORT * 1000))

            TrioTCPStream.__init__ = __init__  # type: ignore[method-assign]
    return _applied
