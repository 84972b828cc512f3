"""Shared fixtures: nodes started in-process on port 0, and a way to run the real CLI against them."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from bacalhau.config import NodeConfig
from bacalhau.node import Node

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

