"""A private LAN of Linux network namespaces for tests of real network separation (root and iproute2 needed).

One bridge in a hub namespace; each node gets a namespace of its own joined to the bridge by a veth pair,
with an address in 10.201.X.0/24 (X picked free on this machine); the test's own namespace gets one leg on
the bridge too, so it reaches the nodes' APIs directly. `cut(name)` takes a node's link down (its packets go
nowhere, its sockets stay open, as when a cable is pulled); `heal(name)` brings it back. Every name carries a
random suffix, and `close()` deletes the namespaces, which takes every veth with them.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field


class NetnsUnavailable(Exception):
    """Namespaces cannot be made here (not root, no `ip`, no CAP_NET_ADMIN); the message says which."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _free_subnet() -> int:
    """A third octet X with 10.201.X.0/24 used by no address or route of this namespace."""
    used = _ip("-4", "route", "show", "table", "all").stdout + _ip("-4", "addr").stdout
    free = [x for x in range(1, 255) if f"10.201.{x}." not in used]
    if not free:
        raise NetnsUnavailable("no free 10.201.X.0/24 subnet on this machine")
    return random.choice(free)


@dataclass
class Lan:
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet: int = 0
    namespaces: dict[str, str] = field(default_factory=dict)   # node name -> namespace name
    addrs: dict[str, str] = field(default_factory=dict)        # node name -> its address
    host_addr: str = ""                                        # the test's own leg on the bridge

    @property
    def hub(self) -> str:
        return f"bh-{self.suffix}-hub"

    def open(self) -> Lan:
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        if shutil.which("ip") is None:
            raise NetnsUnavailable("no `ip` command (iproute2)")
        probe = _ip("netns", "add", self.hub, check=False)
        if probe.returncode != 0:
            raise NetnsUnavailable(f"cannot make a network namespace: {probe.stderr.strip()}")
        try:
            self.subnet = _free_subnet()
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            # the test's leg: created here in the test's namespace, its peer moved into the hub
            self.host_addr = f"10.201.{self.subnet}.254"
            leg = f"bh{self.suffix}"
            _ip("link", "add", leg, "type", "veth", "peer", "name", "up0", "netns", self.hub)
            _ip("addr", "add", f"{self.host_addr}/24", "dev", leg)
            _ip("link", "set", leg, "up")
            _ip("-n", self.hub, "link", "set", "up0", "master", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def add(self, name: str) -> str:
        """A namespace for node `name` on the LAN; returns its address."""
        ns = f"bh-{self.suffix}-{name}"
        index = len(self.namespaces) + 1
        addr = f"10.201.{self.subnet}.{index}"
        _ip("netns", "add", ns)
        self.namespaces[name] = ns
        self.addrs[name] = addr
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.hub, "link", "set", f"v{name}", "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        return addr

    def exec_prefix(self, name: str) -> list[str]:
        """What runs a command inside node `name`'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[name]]

    def cut(self, name: str) -> None:
        """Node `name` loses its link: nothing it sends arrives, nothing reaches it; its sockets stay open."""
        _ip("-n", self.hub, "link", "set", f"v{name}", "down")

    def heal(self, name: str) -> None:
        _ip("-n", self.hub, "link", "set", f"v{name}", "up")

    def close(self) -> None:
        """Delete every namespace made (their veths go with them, the test's leg too). Processes still
        running in them keep their namespace alive: stop them first."""
        for ns in [*self.namespaces.values(), self.hub]:
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", f"bh{self.suffix}", check=False)
        self.namespaces.clear()
