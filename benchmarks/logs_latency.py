"""Live-log latency: a container prints a numbered line every 10 ms; `bacalhau logs -f` and `docker logs -f`
follow the same container at once, and each line's arrival time is recorded on both. Prints the median and
p99 of (bacalhau arrival - docker arrival). Target: median within 20 ms.

    .venv/bin/python benchmarks/logs_latency.py [--lines 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time

from _serve import BIN, IMAGE, container_of, running_execution, serve


def reader(cmd: list[str], env: dict[str, str], arrivals: dict[str, float], stream: str = "stdout") -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)

    def run() -> None:
        assert proc.stdout is not None
        buf = b""
        while chunk := proc.stdout.read(65536):
            now = time.perf_counter()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                arrivals.setdefault(line.decode(), now)

    threading.Thread(target=run, daemon=True).start()
    return proc


def one_run(served, lines: int) -> list[float]:  # type: ignore[no-untyped-def]
    script = f"i=0; while [ $i -lt {lines} ]; do echo line-$i; i=$((i+1)); usleep 10000; done"
    # start the job, wait for its container, then attach both followers while it is still printing
    job_id = subprocess.run([BIN, "docker", "run", "--id-only", IMAGE, "--", "sh", "-c", f"usleep 1500000; {script}"],
                            env=served.env, capture_output=True, text=True, check=True).stdout.strip()
    cid = container_of(running_execution(served.client, job_id))
    ours: dict[str, float] = {}
    theirs: dict[str, float] = {}
    p1 = reader([BIN, "logs", "-f", job_id], served.env, ours)
    p2 = reader(["docker", "logs", "-f", cid], served.env, theirs)
    p1.wait(timeout=120)
    p2.wait(timeout=120)
    time.sleep(0.1)
    common = [k for k in theirs if k in ours and k.startswith("line-")]
    if len(common) < lines * 0.9:
        raise SystemExit(f"only {len(common)} of {lines} lines seen by both followers")
    return [(ours[k] - theirs[k]) * 1000 for k in common]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with serve() as served:
        medians, p99s = [], []
        for i in range(args.runs):
            delays = sorted(one_run(served, args.lines))
            med, p99 = statistics.median(delays), delays[int(len(delays) * 0.99) - 1]
            medians.append(med)
            p99s.append(p99)
            print(f"run {i + 1}: {len(delays)} lines, bacalhau - docker delay: median {med:6.1f} ms, p99 {p99:6.1f} ms")
        print(f"median of runs: median {statistics.median(medians):.1f} ms, p99 {statistics.median(p99s):.1f} ms"
              "   (target: median within 20 ms of docker logs -f)")


if __name__ == "__main__":
    main()
