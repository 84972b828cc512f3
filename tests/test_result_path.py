"""One result path: the API's results route, and through it the CLI's `get` and `describe`, take a job's
result over IPFS first and from the compute node that ran it when no node holds the blocks; the choice is made
in one place (api/results.py fetch_result)."""

from __future__ import annotations

import ast
import http.client
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from bacalhau.ipfs.unixfs import cid_to_bytes
from bacalhau.node import Node
from tests.conftest import run_cli

IMAGE = "bacalhau/busybox:latest"
ROOT = Path(__file__).resolve().parent.parent


class Counted:
    """Counts the calls of node.content's two sources (the real methods run: only counted)."""

    def __init__(self, node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ipfs: list[str] = []
        self.node: list[str] = []
        content = node.content
        result_tar, result_file, open_result = content.result_tar, content.result_file, content.open_result

        async def tar(cid_text: str) -> Path:
            self.ipfs.append("tar")
            return await result_tar(cid_text)

        async def file(cid_text: str, item: str) -> Path:
            self.ipfs.append(item)
            return await result_file(cid_text, item)

        def opened(node_id: str, execution_id: str, item: str) -> AsyncIterator[bytes]:
            self.node.append(item)
            return open_result(node_id, execution_id, item)

        monkeypatch.setattr(content, "result_tar", tar)
        monkeypatch.setattr(content, "result_file", file)
        monkeypatch.setattr(content, "open_result", opened)


async def _completed_job(node: Node) -> tuple[str, bytes]:
    res = await run_cli(node, "docker", "run", "--id-only", IMAGE, "--", "sh", "-c",
                        "echo kept > /outputs/note; echo hello")
    job_id = res.stdout.strip()
    assert res.returncode == 0, res.stderr
    with trio.fail_after(30):
        assert node.requester is not None
        while not (job := await node.requester.store.get_job(job_id)).state.terminal:
            await trio.sleep(0.1)
    assert job.state.value == "completed", job.reason
    return job_id, cid_to_bytes(job.executions[0].result_ref.removeprefix("ipfs://"))


async def _api_get(node: Node, path: str) -> tuple[int, dict[str, str], bytes]:
    def get() -> tuple[int, dict[str, str], bytes]:
        assert node.api_port is not None
        conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    return await trio.to_thread.run_sync(get)


@pytest.mark.docker
@pytest.mark.slow
async def test_a_result_whose_ipfs_blocks_are_gone_comes_from_its_compute_node_for_get_and_describe(
        single_node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = single_node
    job_id, root = await _completed_job(node)
    node.blockstore.unpin(root)
    assert node.blockstore.gc() > 0 and not node.blockstore.has(root)     # held by no node now
    counted = Counted(node, monkeypatch)

    got = await run_cli(node, "get", job_id, "-o", str(tmp_path))
    assert got.returncode == 0, got.stderr
    dest = Path(got.stdout.strip())
    assert (dest / "stdout").read_text() == "hello\n"
    assert (dest / "outputs" / "note").read_text() == "kept\n"
    assert (counted.ipfs, counted.node) == (["tar"], ["tar"])     # IPFS tried once, then the node, once

    described = await run_cli(node, "describe", job_id[:8], "--output", "table")
    assert described.returncode == 0, described.stderr
    assert "Stdout:\nhello\n" in described.stdout
    assert (counted.ipfs, counted.node) == (["tar", "stdout"], ["tar", "stdout"])

    status, headers, body = await _api_get(node, f"/api/v1/jobs/{job_id}/results/stdout")
    assert (status, body, headers["x-result-source"]) == (200, b"hello\n", "node")


@pytest.mark.docker
@pytest.mark.slow
async def test_a_held_result_comes_over_ipfs_and_its_node_is_not_asked(
        single_node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = single_node
    job_id, root = await _completed_job(node)
    counted = Counted(node, monkeypatch)

    got = await run_cli(node, "get", job_id, "-o", str(tmp_path))
    assert got.returncode == 0, got.stderr
    assert (Path(got.stdout.strip()) / "outputs" / "note").read_text() == "kept\n"
    described = await run_cli(node, "describe", job_id, "-o", "table")
    assert "Stdout:\nhello\n" in described.stdout, described
    for item, expected in (("stdout", b"hello\n"), ("exitCode", b"0")):
        status, headers, body = await _api_get(node, f"/api/v1/jobs/{job_id}/results/{item}")
        assert (status, body.strip(), headers["x-result-source"]) == (200, expected.strip(), "ipfs")
        assert cid_to_bytes(headers["x-result-cid"].removeprefix("ipfs://")) == root
    assert counted.node == [] and counted.ipfs == ["tar", "stdout", "stdout", "exitCode"]


async def test_an_unknown_result_item_is_one_clear_line(single_node: Node) -> None:
    assert single_node.requester is not None
    from bacalhau.models import JobSpec

    job = await single_node.requester.submit(JobSpec.model_validate({"engine": "noop"}))
    with trio.fail_after(30):
        while not (await single_node.requester.store.get_job(job.id)).state.terminal:
            await trio.sleep(0.05)
    status, _, body = await _api_get(single_node, f"/api/v1/jobs/{job.id}/results/passwd")
    assert status == 400
    assert json.loads(body) == {"error": "unknown result item 'passwd' (one of stdout, stderr, exitCode, tar)",
                                "code": "bad_request"}


def _calls(path: Path, names: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in names}


def test_the_result_source_is_chosen_in_one_place() -> None:
    """Only api/results.py reaches a result's sources; the CLI only through the API (it imports no server code)."""
    sources = {"result_tar", "result_file", "open_result"}
    callers = {str(p.relative_to(ROOT)) for p in (ROOT / "bacalhau").rglob("*.py")
               if not p.is_relative_to(ROOT / "bacalhau" / "cli") and _calls(p, sources)}
    assert callers == {"bacalhau/api/results.py"}, callers
    for module in (ROOT / "bacalhau" / "cli").glob("*.py"):
        if module.name in ("serve.py", "devstack.py"):     # these run a node; the rest are API clients
            continue
        imported = {n.module for n in ast.walk(ast.parse(module.read_text()))
                    if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in imported if m.startswith(("bacalhau.api", "bacalhau.content", "bacalhau.node"))}, \
            module


@pytest.mark.docker
async def test_stdout_of_a_result_held_elsewhere_brings_its_root_and_stdout_not_its_outputs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bacalhau.ipfs.dagpb import decode_links
    from bacalhau.models import NodeType
    from tests.conftest import node_config

    async with trio.open_nursery() as nursery:
        req = await nursery.start(Node(node_config(tmp_path / "req", node_types=(NodeType.REQUESTER,))).run)
        cfg = node_config(tmp_path / "c", node_types=(NodeType.COMPUTE,), serve_api=False, peers=(req.addrs()[0],))
        compute = await nursery.start(Node(cfg).run)
        assert req.requester is not None
        with trio.fail_after(20):
            while not req.requester.nodes.alive():
                await trio.sleep(0.05)
        job_id, root = await _completed_job(req)
        counted = Counted(req, monkeypatch)
        links = {link.name: link.cid for link in decode_links(compute.blockstore.get(root))}
        assert not req.blockstore.has(root)

        status, headers, body = await _api_get(req, f"/api/v1/jobs/{job_id}/results/stdout")
        assert (status, body, headers["x-result-source"]) == (200, b"hello\n", "ipfs")
        assert req.blockstore.has(root) and req.blockstore.has(links["stdout"])
        assert not req.blockstore.has(links["outputs"])        # the outputs stayed where they are
        assert counted.node == []
        nursery.cancel_scope.cancel()


async def test_the_api_is_given_no_node(single_node: Node) -> None:
    """What build_app gets: narrow parts, none of them the Node (it was content and identity before)."""
    import dataclasses

    deps = single_node.api_deps()
    parts = {f.name: getattr(deps, f.name) for f in dataclasses.fields(deps)}
    assert not [name for name, part in parts.items() if isinstance(part, Node)], parts
    assert deps.identity.identity() == single_node.identity()
    assert deps.identity.identity()["api_port"] == single_node.api_port is not None
