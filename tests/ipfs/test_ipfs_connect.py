"""`bacalhau serve --ipfs-connect`: an external IPFS node used through its RPC API instead of the embedded
one. js-ipfs 0.66 serves that API here in Kubo's place (no Kubo binary can be had; the kubo-python library
serves no RPC API): a real node over real HTTP, not a mock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from bacalhau.node import Node
from bacalhau.testing.jsipfs import JsIpfs
from tests.conftest import node_config, run_cli


@pytest.mark.docker
@pytest.mark.slow
async def test_a_node_with_ipfs_connect_adds_fetches_and_publishes_through_the_external_node(
        tmp_path: Path, jsipfs: JsIpfs) -> None:
    rpc = trio.to_thread.run_sync
    external_id = (await rpc(lambda: jsipfs.rpc("id"))).json()["ID"]
    # content that only the external node holds
    held = (await rpc(lambda: jsipfs.rpc("add", files={"file": ("data.txt", b"held by the external node\n")})))
    outside_cid = held.json()["Hash"]
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(node_config(tmp_path / "node", ipfs_connect=jsipfs.api_maddr)).run)
        assert node.ipfs_host is None      # no embedded public IPFS side
        ident = json.loads((await run_cli(node, "ipfs", "id")).stdout)
        assert ident["ID"] == external_id

        # `ipfs add` lands in the external node, pinned, with the CID our importer (and Kubo) gives
        src = tmp_path / "src"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "a.txt").write_text("a\n")
        (src / "big.bin").write_bytes(bytes(range(256)) * 4000)     # 4 chunks
        added = await run_cli(node, "ipfs", "add", "-r", str(src))
        assert added.returncode == 0, added.stderr
        root = added.stdout.splitlines()[-1].split()[1]
        pins = (await rpc(lambda: jsipfs.rpc("pin/ls", arg=root))).json()
        assert root in json.dumps(pins)
        assert (await rpc(lambda: jsipfs.rpc("cat", arg=f"{root}/big.bin"))).content == bytes(range(256)) * 4000

        # a job's input comes from the external node, and its result is published there
        job = await run_cli(node, "docker", "run", "-i", f"ipfs://{outside_cid}:/in", "bacalhau/busybox:latest",
                            "--", "sh", "-c", f"cat /in/{outside_cid} && echo x > /outputs/o")
        assert job.returncode == 0, job.stderr
        assert job.stdout == "held by the external node\n", job.stderr
        jobs = json.loads((await run_cli(node, "list", "-o", "json")).stdout)
        described = json.loads((await run_cli(node, "describe", jobs[0]["id"], "-o", "json")).stdout)
        result = described["executions"][-1]["result_ref"].removeprefix("ipfs://")
        assert (await rpc(lambda: jsipfs.rpc("cat", arg=f"{result}/stdout"))).content == b"held by the external node\n"
        assert (await rpc(lambda: jsipfs.rpc("cat", arg=f"{result}/outputs/o"))).content == b"x\n"
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_ipfs_connect_to_nothing_is_one_clear_line(tmp_path: Path) -> None:
    from bacalhau.testing import free_port

    res = await run_cli(None, "serve", "--ipfs-connect", f"/ip4/127.0.0.1/tcp/{free_port()}", "--port",
                        str(free_port()), "--swarm-port", str(free_port()), "--ipfs-swarm-port", "0",
                        env={"BACALHAU_DIR": str(tmp_path / "repo")}, timeout=30)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "--ipfs-connect" in res.stderr or "IPFS node at" in res.stderr, res.stderr
    bad = await run_cli(None, "serve", "--ipfs-connect", "localhost:5001", env={"BACALHAU_DIR": str(tmp_path / "r2")})
    assert bad.returncode == 2 and "/ip4/127.0.0.1/tcp/5001" in bad.stderr and "Traceback" not in bad.stderr
