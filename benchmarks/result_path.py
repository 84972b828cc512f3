"""A job's stdout through api/results.py fetch_result, on one node (requester and compute): over IPFS (the
blocks held here: root checked, the stdout entry walked and copied out) against straight from the compute node
(the path every item but `tar` took before), interleaved, with outputs of --mb MB beside it; and what a
whole-DAG fetch of that result costs with every block held (it reads and hashes the outputs too), which an
entry read avoids. Median ms of --runs reads each (10 walks).

    .venv/bin/python benchmarks/result_path.py [--mb 50] [--runs 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import trio

from bacalhau.api.results import FROM_IPFS, fetch_result, result_execution
from bacalhau.config import NodeConfig
from bacalhau.executors.noop import NoopExecutor
from bacalhau.ipfs.result_ref import parse_result_ref
from bacalhau.models import Engine, Job, JobSpec
from bacalhau.node import Node, NodeDeps


async def _read(chunks) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join([c async for c in chunks])


async def main(mb: int, runs: int) -> None:
    nodes: list[Node] = []

    async def fill(execution_id: str, job: Job) -> None:
        assert nodes[0].compute is not None
        outputs = nodes[0].compute.execution_dir(execution_id).outputs
        await trio.to_thread.run_sync(lambda: (outputs.mkdir(parents=True, exist_ok=True),
                                               (outputs / "big").write_bytes(os.urandom(mb * 1024 * 1024))))

    with tempfile.TemporaryDirectory() as tmp:
        config = NodeConfig(repo_dir=Path(tmp), api_port=0, swarm_host="127.0.0.1", swarm_port=0, ipfs_swarm_port=0,
                            serve_api=False)
        async with trio.open_nursery() as nursery:
            node = Node(config, NodeDeps(executors={Engine.NOOP: NoopExecutor(fill)}))
            nodes.append(node)
            await nursery.start(node.run)
            assert node.requester is not None
            job = await node.requester.submit(JobSpec.model_validate({"engine": "noop", "noop": {"stdout": "hello\n"}}))
            while not (job := await node.requester.store.get_job(job.id)).state.terminal:
                await node.requester.wait_for_change(job.id, 1)
            ex = result_execution(job)
            assert ex.result_ref.startswith("ipfs://"), job
            times: dict[str, list[float]] = {"ipfs": [], "node": [], "walk": []}
            root = parse_result_ref(ex.result_ref)
            for _ in range(runs):
                start = time.perf_counter()
                result = await fetch_result(node.content, job, "stdout")
                assert result.source == FROM_IPFS and await _read(result.chunks) == b"hello\n"
                times["ipfs"].append(time.perf_counter() - start)
                start = time.perf_counter()
                assert await _read(node.content.open_result(ex.node_id, ex.id, "stdout")) == b"hello\n"
                times["node"].append(time.perf_counter() - start)
                if len(times["walk"]) < 10:     # what a whole-DAG fetch of the result costs, blocks held
                    start = time.perf_counter()
                    await node.content.fetch_cid(root)
                    times["walk"].append(time.perf_counter() - start)
            for name, ts in times.items():
                print(f"{name:5s} median {statistics.median(ts) * 1000:.2f} ms  p90 "
                      f"{sorted(ts)[int(len(ts) * 0.9)] * 1000:.2f} ms")
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    trio.run(main, args.mb, args.runs)
