"""What tests and benchmarks share: real Kubo (`kubo`), js-ipfs (`jsipfs`), and free ports."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a daemon started next."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
