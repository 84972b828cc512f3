"""What the job box costs: latency of a trivial job in the default job size against one that asks for plenty,
stdout throughput under the output cap, and what an endless output flood past the cap costs the node.

Starts its own `bacalhau serve --max-job-output 64Mi` (temporary state dir, free ports), then:
  1. `bacalhau docker run bacalhau/busybox -- echo hi` N times with no --cpu/--memory (the node's default job
     size: 0.1 CPU, 100 MB) interleaved with N times `--cpu 1 --memory 1Gi`; prints both medians;
  2. a job writing 60 MB of stdout (under the cap) with --cpu 1: MB/s from submit to end;
  3. `yes` for 10 s (--timeout 10) with --cpu 1: the bytes it had dropped (from the note on its stderr), and
     the CPU seconds the serve process and dockerd spent meanwhile (read from /proc).

    .venv/bin/python benchmarks/job_box.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

from _serve import BIN, IMAGE, serve

CAP = 64 * 1024**2


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_pid(api_port: int) -> int:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in args and b"--port" in args and args[args.index(b"--port") + 1] == str(api_port).encode():
                return int(proc.name)
    raise SystemExit("serve process not found")


def run(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    start = time.perf_counter()
    out = subprocess.run([BIN, "docker", "run", *args], capture_output=True, env=env, check=False)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    with serve("--max-job-output", f"{CAP}") as served:
        env = served.env
        small, big = [], []
        run(env, IMAGE, "--", "echo", "hi")
        for _ in range(args.runs):
            small.append(run(env, IMAGE, "--", "echo", "hi")[0])
            big.append(run(env, "--cpu", "1", "--memory", "1Gi", IMAGE, "--", "echo", "hi")[0])
        print(f"echo hi, default job size (0.1 CPU, 100 MB)  median {statistics.median(small) * 1000:7.1f} ms")
        print(f"echo hi, --cpu 1 --memory 1Gi               median {statistics.median(big) * 1000:7.1f} ms")

        size = 60_000_000
        elapsed, out = run(env, "--cpu", "1", IMAGE, "--", "head", "-c", str(size), "/dev/zero")
        assert len(out.stdout) == size, out.stderr[-500:]
        print(f"60 MB of stdout (under the cap), submit to printed: {size / elapsed / 1e6:6.1f} MB/s")

        pids = {"serve": serve_pid(served.api_port), "dockerd": int(Path("/var/run/docker.pid").read_text())}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        elapsed, out = run(env, "--cpu", "1", "--timeout", "10", IMAGE, "--", "yes")
        spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        m = re.search(rb"(\d+) more bytes were dropped", out.stderr)
        assert m and len(out.stdout) == CAP, out.stderr[-500:]
        dropped = int(m.group(1))
        print(f"yes for 10 s: kept {CAP / 1e6:.0f} MB, dropped {dropped / 1e6:.0f} MB "
              f"({(CAP + dropped) / 10 / 1e6:.0f} MB/s read); CPU meanwhile: serve {spent['serve']:.1f} s, "
              f"dockerd {spent['dockerd']:.1f} s (of {elapsed:.1f} s)")


if __name__ == "__main__":
    main()
