"""Which addresses others can dial: a listener on 0.0.0.0 is shown as loopback and this machine's own address.
(No py-libp2p here: the CLI imports this.)"""

from __future__ import annotations

import socket


def public_ip() -> str:
    """The address other machines reach this one at (no packet is sent: UDP connect only picks a route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.254.254.254", 1))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def dialable(addrs: list[str]) -> list[str]:
    """Multiaddrs with /ip4/0.0.0.0/ replaced by the addresses that reach it, as Kubo's `ipfs id` lists them."""
    out: list[str] = []
    for addr in addrs:
        if "/ip4/0.0.0.0/" in addr:
            hosts = dict.fromkeys(["127.0.0.1", public_ip()])
            out += [addr.replace("/ip4/0.0.0.0/", f"/ip4/{host}/") for host in hosts]
        else:
            out.append(addr)
    return out
