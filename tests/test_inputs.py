"""Job inputs: uploaded local files, URLs fetched by the compute node (a server on 127.0.0.1), ipfs:// later."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bacalhau.node import Node
from tests.conftest import node_config, run_cli

IMAGE = "bacalhau/busybox:latest"


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.csv").write_text("a,b\n1,2\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.docker
async def test_a_local_file_is_uploaded_and_mounted_read_only(single_node: Node, tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("local content\n")
    res = await run_cli(single_node, "docker", "run", "-i", f"{f}:/data", IMAGE, "--", "sh", "-c",
                        "cat /data/notes.txt; touch /data/x 2>/dev/null || echo read-only")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "local content\nread-only\n"


@pytest.mark.docker
async def test_a_url_is_fetched_by_the_compute_node(tmp_path: Path, http_server: str) -> None:
    async with trio.open_nursery() as nursery:
        # the server is on loopback: a node reaches it only with --allow-private-urls
        node = await nursery.start(Node(node_config(tmp_path / "node", allow_private_urls=True)).run)
        res = await run_cli(node, "docker", "run", "-i", f"{http_server}/data.csv", IMAGE, "--",
                            "cat", "/inputs/data.csv")
        assert res.returncode == 0, res.stderr
        assert res.stdout == "a,b\n1,2\n"
        missing = await run_cli(node, "docker", "run", "-i", f"{http_server}/nope.csv", IMAGE, "--", "true")
        assert missing.returncode == 1 and "HTTP 404" in missing.stderr
        nursery.cancel_scope.cancel()


async def test_wasm_sees_its_inputs_as_preopened_directories(single_node: Node, tmp_path: Path) -> None:
    # a WASI module that opens /inputs/in.txt would need more WAT than this test is worth: check the mount
    # reaches the engine by a job that lists nothing but still runs with an input attached
    from tests.executors.test_wasm import hello

    module = tmp_path / "m.wasm"
    module.write_bytes(hello("ok\n"))
    data = tmp_path / "in.txt"
    data.write_text("x")
    res = await run_cli(single_node, "wasm", "run", "-i", str(data), str(module))
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr


@pytest.mark.docker
async def test_one_jobs_output_cid_feeds_the_next(single_node: Node) -> None:
    import json

    first = await run_cli(single_node, "docker", "run", "--id-only", IMAGE, "--", "sh", "-c",
                          "echo 41 > /outputs/n.txt")
    await run_cli(single_node, "logs", "-f", first.stdout.strip())
    for _ in range(100):
        job = json.loads((await run_cli(single_node, "describe", "-o", "json", first.stdout.strip())).stdout)
        if job["state"] == "completed":
            break
    cid = job["executions"][-1]["result_ref"].removeprefix("ipfs://")
    second = await run_cli(single_node, "docker", "run", "-i", f"ipfs://{cid}:/prev", IMAGE, "--", "sh", "-c",
                           "echo $(( $(cat /prev/outputs/n.txt) + 1 )); cat /prev/stdout | wc -c")
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == ["42", "0"]


@pytest.mark.docker
async def test_an_ipfs_input_no_node_holds_fails_with_the_reason(single_node: Node) -> None:
    res = await run_cli(single_node, "docker", "run", "-i", "ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
                        IMAGE, "--", "true")
    assert res.returncode == 1 and "ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG" in res.stderr
    assert "held by no node of this cluster" in res.stderr


async def test_bad_input_arguments_get_one_clear_line(single_node: Node) -> None:
    res = await run_cli(single_node, "docker", "run", "-i", "/no/such/file", IMAGE, "--", "true")
    assert res.returncode == 2 and "neither a URL nor a local file" in res.stderr and "Traceback" not in res.stderr
    res = await run_cli(single_node, "docker", "run", "-i", "ftp://x/y", IMAGE, "--", "true")
    assert res.returncode == 1 and "input source must be" in res.stderr
