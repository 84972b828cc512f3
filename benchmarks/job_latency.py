"""Job start-to-finish latency against plain `docker run`, and control-plane throughput.

Starts its own `bacalhau serve` (temporary state dir, free ports), then:
  1. runs `docker run --rm bacalhau/busybox echo hi` and `bacalhau docker run bacalhau/busybox -- echo hi`
     N times each, interleaved, and prints both medians and their ratio (target: ratio <= 1.5);
  2. submits 50 noop jobs at once through the API and prints jobs completed per second (target >= 50/s).

    .venv/bin/python benchmarks/job_latency.py [--runs 20] [--noop-jobs 50] [--noop-only]

Durable commits (synchronous=FULL), measured with --noop-only --noop-jobs 100 on a shared 2-core machine,
interleaved with the code before them, medians: one fsync per transaction 36.2 jobs/s against 53.6 before
(4 runs each); grouped commits 68.5 against 57.0, then 44.1 against 45.1 (5 runs each, two sessions).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from _serve import BIN, IMAGE, run_noop_jobs, serve

from bacalhau.cli.client import ApiClient


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if out.returncode != 0 or b"hi" not in out.stdout:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--noop-jobs", type=int, default=50)
    parser.add_argument("--noop-only", action="store_true", help="Only the noop throughput (part 2).")
    args = parser.parse_args()

    with serve() as served:
        env, client = served.env, served.client
        if not args.noop_only:
            docker_latency(env, args.runs)
        noop_throughput(client, args.noop_jobs)


def docker_latency(env: dict[str, str], runs: int) -> None:
    docker_cmd = ["docker", "run", "--rm", "--network", "none", IMAGE, "echo", "hi"]
    ours_cmd = [BIN, "docker", "run", IMAGE, "--", "echo", "hi"]
    timed(docker_cmd, env), timed(ours_cmd, env)  # warm both paths once
    docker_times, ours_times = [], []
    for _ in range(runs):
        docker_times.append(timed(docker_cmd, env))
        ours_times.append(timed(ours_cmd, env))
    d, o = statistics.median(docker_times), statistics.median(ours_times)
    print(f"docker run --rm          median {d * 1000:7.1f} ms  (n={runs})")
    print(f"bacalhau docker run      median {o * 1000:7.1f} ms  (n={runs})")
    print(f"ratio bacalhau/docker    {o / d:.2f}   (target <= 1.5)")


def noop_throughput(client: ApiClient, jobs: int) -> None:
    spec = {"engine": "noop", "noop": {"stdout": "hi\n"}}
    _, elapsed = run_noop_jobs(client, spec, jobs)
    print(f"noop jobs: {jobs} submitted at once, all completed in {elapsed:.2f}s "
          f"= {jobs / elapsed:.1f} jobs/s   (target >= 50/s)")


if __name__ == "__main__":
    main()
