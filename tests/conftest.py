"""Shared fixtures: nodes started in-process on port 0, and a way to run the real CLI against them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from bacalhau.cli.client import ApiClient
from bacalhau.config import NodeConfig
from bacalhau.node import Node
from bacalhau.testing import free_port
from bacalhau.testing.jsipfs import JsIpfs

BACALHAU = [sys.executable, "-m", "bacalhau.cli.main"]
TEST_SWARM_KEY = "5e" * 32   # in-process test clusters share one private-network key


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    stdout_bytes: bytes


async def run_cli(node: Node | None, *args: str, env: dict[str, str] | None = None, stdin: bytes = b"",
                  timeout: float = 60) -> CliResult:
    """Run the real `bacalhau` command in a child process against `node`'s API."""
    full_env = {**os.environ, **(env or {})}
    if node is not None:
        full_env.setdefault("BACALHAU_API_HOST", "127.0.0.1")
        full_env["BACALHAU_API_PORT"] = str(node.api_port)
    with trio.fail_after(timeout):
        proc = await trio.run_process(
            [*BACALHAU, *args], capture_stdout=True, capture_stderr=True, check=False, env=full_env, stdin=stdin,
        )
    return CliResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
                     proc.stdout)


def node_config(path: Path, **kw: object) -> NodeConfig:
    """A node on loopback with ephemeral ports, quick to notice others."""
    defaults: dict[str, object] = dict(
        repo_dir=path, swarm_key=TEST_SWARM_KEY, api_port=0, swarm_host="127.0.0.1", swarm_port=0, ipfs_swarm_port=0,
        node_info_interval=0.3,
        node_info_ttl=3.0, bid_timeout=5.0, shutdown_grace=2.0,
    )
    defaults.update(kw)
    return NodeConfig(**defaults)  # type: ignore[arg-type]


@pytest.fixture
async def single_node(tmp_path: Path) -> AsyncIterator[Node]:
    """One requester+compute node over real libp2p, API on an ephemeral port."""
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node")).run)
        yield node
        nursery.cancel_scope.cancel()


@pytest.fixture
async def api_node(tmp_path: Path) -> AsyncIterator[Node]:
    """One noop node on the in-memory bprotocol network (no libp2p), API on an ephemeral port."""
    from bacalhau.bprotocol.transport import InMemoryNetwork
    from bacalhau.node import NodeDeps

    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", engines=("noop",)),
                                        NodeDeps(network=InMemoryNetwork())).run)
        yield node
        nursery.cancel_scope.cancel()


# -- `bacalhau serve` as a real process ------------------------------------------------------------------

def join_args(text: str) -> tuple[str, str]:
    """The --peer (pointed at loopback) and --swarm-key of the join command a first node printed."""
    m = re.search(r"--peer /ip4/[0-9.]+/tcp/(\d+)/p2p/(\w+) --swarm-key ([0-9a-f]{64})", text)
    assert m, text
    return f"/ip4/127.0.0.1/tcp/{m.group(1)}/p2p/{m.group(2)}", m.group(3)


class Served:
    def __init__(self, repo: Path, *args: str) -> None:
        self.repo = repo
        self.api_port = free_port()
        self.swarm_port = free_port()
        self.log = repo.parent / f"{repo.name}.log"
        self.env = {**os.environ, "BACALHAU_DIR": str(repo)}
        self.args = ["serve", "--port", str(self.api_port), "--swarm-port", str(self.swarm_port),
                     "--ipfs-swarm-port", str(free_port()), *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_from = 0

    def start(self) -> Served:
        self.log_from = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen([*BACALHAU, *self.args], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"))
        return self

    def wait_ready(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_bytes()[self.log_from:].decode(errors="replace") if self.log.exists() else ""
            if "To join another machine" in text:
                return text
            assert self.proc is not None and self.proc.poll() is None, text
            time.sleep(0.1)
        raise AssertionError(f"serve did not start: {self.log.read_text()}")

    def name_matches(self, client: ApiClient, node_id: str) -> bool:
        """Whether the cluster's node `node_id` is this process (matched by its labels' name=)."""
        return any(n["node_id"] == node_id and n["labels"].get("name") == self.repo.name for n in client.nodes())

    def client(self) -> ApiClient:
        return ApiClient("127.0.0.1", self.api_port)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "BACALHAU_API_PORT": str(self.api_port)}
        return subprocess.run([*BACALHAU, *args], env=env, capture_output=True, text=True, timeout=120, check=False)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[Served] = []

    def make(name: str = "node", *args: str) -> Served:
        s = Served(tmp_path / name, *args)
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


@pytest.fixture
def jsipfs(tmp_path: Path) -> Iterator[JsIpfs]:
    """js-ipfs serving the Kubo RPC API (the stand-in for an external IPFS node of --ipfs-connect)."""
    with JsIpfs.start(tmp_path / "js-ipfs") as node:
        yield node
