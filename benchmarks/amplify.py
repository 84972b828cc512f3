"""Amplify's costs, against one `bacalhau serve` of its own:
  1. overhead: a workflow of N chained steps (busybox `true`, each mounting its parent's output) against the
     same N jobs submitted by hand one after another (each waited for, each mounting the previous result), in
     the same serve, alternated; prints both times and their ratio;
  2. throughput: K small CIDs (a text, a CSV, a PNG each) through the shipped default workflow at once;
     prints runs per minute and the jobs they ran (needs bacalhau/amplify:latest, scripts/setup-amplify.sh).

    .venv/bin/python benchmarks/amplify.py [--steps 10] [--rounds 3] [--cids 100] [--overhead-only]

Measured on the shared 2-core machine (load 9-18): 10 chained steps, medians of 3, by hand 8.58 s against 10.11
s as a workflow (ratio 1.18; 9.32 against 11.01 s in another run), about 0.15 s a step; 100 CIDs through the
default workflow in 318.9 s, 18.8 runs/min, 500 jobs (1.57 jobs/s), all succeeded.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _serve import BIN, IMAGE, serve

from bacalhau.amplify.actions import run_action
from bacalhau.cli.client import ApiClient


def add(env: dict[str, str], path: Path) -> str:
    out = subprocess.run([BIN, "ipfs", "add", "-q", "-r", str(path)], capture_output=True, text=True, env=env,
                         check=True)
    return out.stdout.strip().splitlines()[-1]


def chain(steps: int) -> str:
    graph = ["- id: root-node\n  job_id: root-job\n  inputs: [{root: true}]\n"]
    parent = "root-node"
    for i in range(steps):
        graph.append(f"- id: s{i}\n  job_id: nothing\n  inputs: [{{node_id: {parent}, path: /inputs}}]\n")
        parent = f"s{i}"
    return (f"jobs:\n- id: root-job\n  type: internal\n- id: nothing\n  image: {IMAGE}\n  entrypoint: [\"true\"]\n"
            f"graph:\n{''.join(graph)}")


def put(client: ApiClient, cid: str, workflow: str | None) -> str:
    run_id = str(uuid.uuid4())
    attrs: dict[str, Any] = {"inputs": [{"cid": cid}]}
    if workflow is not None:
        attrs["workflow"] = workflow
    client.request("PUT", f"/api/v0/queue/{run_id}",
                   {"data": {"attributes": attrs}, **client._sign(run_action(run_id, cid, workflow))})  # noqa: SLF001
    return run_id


def wait_runs(client: ApiClient, run_ids: list[str]) -> list[dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    while len(done) < len(run_ids):
        for run_id in run_ids:
            if run_id not in done:
                data = client.request("GET", f"/api/v0/queue/{run_id}")["data"]
                if data["meta"]["status"] in ("succeeded", "failed", "cancelled"):
                    done[run_id] = data
        time.sleep(0.1)
    return [done[r] for r in run_ids]


def by_hand(client: ApiClient, cid: str, steps: int) -> float:
    start = time.perf_counter()
    source = cid
    for _ in range(steps):
        job_id = client.submit({"engine": "docker", "docker": {"image": IMAGE, "entrypoint": ["true"]},
                                "inputs": [{"source": f"ipfs://{source}", "path": "/inputs"}]})
        while True:
            job = client.wait(job_id, since=time.time() + 3600, timeout=10)
            if job["state"] in ("completed", "failed", "cancelled"):
                break
        if job["state"] != "completed":
            raise SystemExit(f"job {job_id} {job['state']}: {job['reason']}")
        source = next(e["result_ref"] for e in job["executions"] if e["state"] == "completed").removeprefix("ipfs://")
    return time.perf_counter() - start


def as_workflow(client: ApiClient, cid: str, steps: int) -> float:
    start = time.perf_counter()
    data = wait_runs(client, [put(client, cid, chain(steps))])[0]
    if data["meta"]["status"] != "succeeded":
        raise SystemExit(f"the chain run {data['meta']['status']}: {data['meta']['reason']}")
    return time.perf_counter() - start


def throughput(client: ApiClient, env: dict[str, str], cids: int) -> None:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        roots = []
        for i in range(cids):
            root = Path(tmp) / f"c{i}"
            root.mkdir()
            (root / "notes.txt").write_text(f"Sample {i}. The sea is wide.\nThe boats are small.\n")
            (root / "table.csv").write_text(f"k,v\n{i},{i * 2}\n")
            Image.new("RGB", (32, 24), (i % 256, 30, 30)).save(root / "pic.png")
            roots.append(add(env, root))
    start = time.perf_counter()
    runs = [put(client, cid, None) for cid in roots]
    results = wait_runs(client, runs)
    elapsed = time.perf_counter() - start
    ok = sum(1 for r in results if r["meta"]["status"] == "succeeded")
    jobs = sum(len(n["attributes"].get("jobs", [])) for r in results
               for n in client.request("GET", f"/api/v0/queue/{r['id']}")["data"]["attributes"]["graph"])
    print(f"default workflow: {cids} CIDs in {elapsed:.1f} s ({60 * cids / elapsed:.1f} runs/min), "
          f"{ok} succeeded, {jobs} jobs ({jobs / elapsed:.2f} jobs/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cids", type=int, default=100)
    parser.add_argument("--overhead-only", action="store_true")
    args = parser.parse_args()
    with serve() as node, tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "d").mkdir()
        (Path(tmp) / "d" / "x.txt").write_text("x")
        cid = add(node.env, Path(tmp) / "d")
        hand, flow = [], []
        for _ in range(args.rounds):
            hand.append(by_hand(node.client, cid, args.steps))
            flow.append(as_workflow(node.client, cid, args.steps))
        h, f = statistics.median(hand), statistics.median(flow)
        print(f"{args.steps} chained steps, medians of {args.rounds}: by hand {h:.2f} s, as a workflow {f:.2f} s, "
              f"ratio {f / h:.2f}")
        if not args.overhead_only:
            throughput(node.client, node.env, args.cids)


if __name__ == "__main__":
    main()
