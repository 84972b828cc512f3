"""`bacalhau describe` wall time, the CLI of one source tree against another's, on one served node.

    python benchmarks/client_describe.py [--runs 20] TREE [TREE ...]

Serves a node (from this tree), runs one job with an env value and one without, then times `bacalhau describe`
of each with PYTHONPATH set to each TREE in turn, interleaved, and `python -c pass` for the floor. Prints the
median and p90 in ms. The client's key dir is fresh for each tree, and made before timing (its first use
creates the key).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._serve import BIN, IMAGE, serve  # noqa: E402


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("trees", nargs="+")
    args = ap.parse_args()
    with serve() as node:
        jobs = {}
        for name, extra in (("plain", []), ("with-env", ["-e", "TOKEN=secret"])):
            out = subprocess.run([BIN, "docker", "run", "--id-only", *extra, IMAGE, "--", "echo", "hi"],
                                 env=node.env, check=True, capture_output=True, text=True)
            jobs[name] = out.stdout.strip()
        envs = {}
        for tree in args.trees:
            state = tempfile.mkdtemp(prefix="bacalhau-client-")
            envs[tree] = {**node.env, "PYTHONPATH": tree, "BACALHAU_DIR": state}
            for job_id in jobs.values():
                timed([BIN, "describe", job_id], envs[tree])   # warm: the key made, files cached
        times: dict[tuple[str, str], list[float]] = {(t, j): [] for t in args.trees for j in jobs}
        floor = []
        for _ in range(args.runs):
            floor.append(timed([sys.executable, "-c", "pass"], os.environ.copy()))
            for tree in args.trees:
                for name, job_id in jobs.items():
                    times[tree, name].append(timed([BIN, "describe", job_id], envs[tree]))
        print(f"python -c pass: median {statistics.median(floor):.1f} ms")
        for (tree, name), ts in times.items():
            ts.sort()
            print(f"{tree} describe {name}: median {statistics.median(ts):.1f} ms, p90 {ts[int(len(ts) * 0.9) - 1]:.1f} ms"
                  f" ({len(ts)} runs)")


if __name__ == "__main__":
    main()
