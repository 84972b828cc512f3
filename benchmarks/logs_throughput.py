"""Log throughput: a job writes 200 MB to stdout; MB/s through `bacalhau logs -f` against `docker logs -f`
of a container writing the same bytes. Target: at least 0.5x.

    .venv/bin/python benchmarks/logs_throughput.py [--mb 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from _serve import BIN, IMAGE, serve


def drain(cmd: list[str], env: dict[str, str]) -> tuple[int, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    proc.wait()
    return total, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.mb * 1024 * 1024
    script = f"dd if=/dev/zero bs=1M count={args.mb} 2>/dev/null | tr '\\0' a"
    with serve() as served:
        ours, theirs = [], []
        for i in range(args.runs):
            job_id = subprocess.run([BIN, "docker", "run", "--id-only", IMAGE, "--", "sh", "-c", script],
                                    env=served.env, capture_output=True, text=True, check=True).stdout.strip()
            got, secs = drain([BIN, "logs", "-f", job_id], served.env)
            if got != size:
                raise SystemExit(f"bacalhau logs -f gave {got} bytes, expected {size}")
            ours.append(size / secs / 1e6)
            name = f"bench-logs-{time.time_ns()}"
            subprocess.run(["docker", "run", "-d", "--name", name, "--network", "none", IMAGE, "sh", "-c", script],
                           check=True, capture_output=True)
            got, secs = drain(["docker", "logs", "-f", name], served.env)
            subprocess.run(["docker", "rm", "-f", name], check=True, capture_output=True)
            if got != size:
                raise SystemExit(f"docker logs -f gave {got} bytes, expected {size}")
            theirs.append(size / secs / 1e6)
            print(f"run {i + 1}: bacalhau logs -f {ours[-1]:7.1f} MB/s, docker logs -f {theirs[-1]:7.1f} MB/s")
        o, d = statistics.median(ours), statistics.median(theirs)
        print(f"median: bacalhau {o:.1f} MB/s, docker {d:.1f} MB/s, ratio {o / d:.2f}   (target >= 0.5)")


if __name__ == "__main__":
    main()
