"""CPU time per noop job: in the `bacalhau serve` process (requester and compute in one) and in the benchmark's
own client (16 threads submitting through bacalhau.cli.client), read from /proc and getrusage, so the figure
holds on a machine shared with other work where wall-clock rates do not.

    .venv/bin/python benchmarks/job_cpu.py [--jobs 1000] [--runs 3] [--profile 30]

Each run starts its own serve (temporary state), warms it with 100 jobs, then submits --jobs from 16 threads
and waits for all: prints serve CPU ms/job, client CPU ms/job, jobs/s and submit p50/p99 (wall: noisy, compare
within a run only). --profile N samples the serve process with py-spy over the timed batch and prints the N
functions with the most own CPU time (and their share), the view the optimisations were chosen from.

Measured on the shared 2-core machine (load 6-10 from other work), 1000 jobs, this branch and main alternated:
  main:  serve 13.2-15.4 ms CPU/job (8.3-9.0 in its event loop), client 1.42-1.68 ms, 21-44 jobs/s
  perf:  serve  8.6-11.7 ms CPU/job (5.1-6.6 in its event loop), client 0.74-1.14 ms, 32-78 jobs/s
and later at load 5-6: main 9.5-10.2 ms (5.8-5.9 in the loop), client 1.1-1.2 ms, 76-101 jobs/s; this
7.1-8.4 ms (3.5-4.0 in the loop), client 0.4-0.45 ms, 90-115 jobs/s.
What the event loop's samples (py-spy) showed, and what was done: SQLite savepoints around every call (two
statements of five), a second read and parse after each update, a parsed row to check a callback's sender;
resolving the results directory on every use (~10%); the noop executor creating files on the loop while
the stores fsync (~10%); a new TCP connection and an accept for every API call of the client. What remains
on the loop: thread hand-offs (trio's to_thread, ~15%: SQLite calls of three stores, an execution's
directory, its result scan and publish), socket sends of hypercorn (~11%, three writes an answer), and the
JSON a local bprotocol call still goes through.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _serve import serve

from bacalhau.cli.client import ApiClient

SPEC = {"engine": "noop", "noop": {"stdout": "hi\n"}}
CLK = os.sysconf("SC_CLK_TCK")
AREAS = ["bacalhau/", "trio/", "hypercorn/", "h11/", "starlette/", "pydantic", "libp2p/", "json/", "logging/",
         "threading", "socket", "pathlib", "posixpath", "contextlib", "asyncio", "outcome", "cryptography"]


def serve_pid(api_port: int) -> int:
    out = subprocess.run(["pgrep", "-f", f"serve --port {api_port} "], capture_output=True, text=True).stdout
    return int(out.split()[0])


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK   # utime, stime


def main_thread_cpu(pid: int) -> float:
    """The event loop's thread alone (the rest of the process: SQLite and other worker threads)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_sys(pid: int) -> float:
    """The kernel's share (stime): syscalls, fsync among them."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / CLK


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def batch(client: ApiClient, jobs: int) -> list[float]:
    """Submit `jobs` from 16 threads, wait for all to complete; the submit latencies."""
    def one(_: int) -> tuple[str, float]:
        t = time.perf_counter()
        job_id = client.submit(SPEC)
        return job_id, time.perf_counter() - t

    with ThreadPoolExecutor(max_workers=16) as pool:
        done = list(pool.map(one, range(jobs)))
    for job_id, _ in done:
        while True:
            job = client.wait(job_id, since=time.time() + 3600, timeout=30)
            if job["state"] in ("completed", "failed", "cancelled"):
                if job["state"] != "completed":
                    raise SystemExit(f"noop job {job_id} ended {job['state']}: {job['reason']}")
                break
    return [t for _, t in done]


def profile_top(path: Path, top: int) -> None:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        if not any("serve (" in f for f in frames):
            continue    # the event loop's thread only: the workers' samples include their idle waits
        total += n
        own[frames[-1]] += n
        leaf = frames[-1].split("(")[-1]
        area = next((name for name in AREAS if name in leaf), "other " + leaf.split("/")[0])
        areas[area] += n
        for frame in {f.split(" (")[0] + " " + f.split("/")[-1] for f in frames if "bacalhau/" in f}:
            inclusive[frame] += n
    print(f"  py-spy: {total} samples in the event loop's thread; own time by package:")
    for area, n in areas.most_common(top):
        print(f"   {100 * n / total:5.1f}%  {area}")
    print("  own time by function:")
    for frame, n in own.most_common(top):
        print(f"   {100 * n / total:5.1f}%  {frame[:150]}")
    print("  time under our functions (inclusive):")
    for frame, n in inclusive.most_common(top):
        print(f"   {100 * n / total:5.1f}%  {frame[:150]}")


def one_run(jobs: int, profile: int) -> dict[str, float]:
    with serve(engine="noop") as served:
        client = served.client
        pid = serve_pid(served.api_port)
        batch(client, 100)
        spy = None
        if profile:
            raw = Path(tempfile.mkdtemp()) / "profile.txt"
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-r", "200",
                                    "--format", "raw", "-o", str(raw), "--nonblocking", "--threads"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        s0, m0, k0, c0, w0 = proc_cpu(pid), main_thread_cpu(pid), proc_sys(pid), self_cpu(), time.perf_counter()
        lat = batch(client, jobs)
        s1, m1, k1, c1, w1 = proc_cpu(pid), main_thread_cpu(pid), proc_sys(pid), self_cpu(), time.perf_counter()
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
            profile_top(raw, profile)
    lat.sort()
    return {"serve_ms": (s1 - s0) * 1000 / jobs, "loop_ms": (m1 - m0) * 1000 / jobs, "sys_ms": (k1 - k0) * 1000 / jobs, "client_ms": (c1 - c0) * 1000 / jobs, "rate": jobs / (w1 - w0),
            "p50": lat[len(lat) // 2] * 1000, "p99": lat[int(len(lat) * 0.99)] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    args = parser.parse_args()
    results = []
    for i in range(args.runs):
        r = one_run(args.jobs, args.profile)
        results.append(r)
        print(f"run {i + 1}: serve {r['serve_ms']:.2f} ms CPU/job ({r['loop_ms']:.2f} in its event loop, {r['sys_ms']:.2f} in the kernel), client {r['client_ms']:.2f} ms CPU/job, "
              f"{r['rate']:.1f} jobs/s, submit p50 {r['p50']:.0f} ms p99 {r['p99']:.0f} ms", flush=True)
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"median of {args.runs}: serve {med['serve_ms']:.2f} ms CPU/job ({med['loop_ms']:.2f} in its event loop, {med['sys_ms']:.2f} in the kernel), client {med['client_ms']:.2f} ms CPU/job, "
          f"{med['rate']:.1f} jobs/s, submit p50 {med['p50']:.0f} ms p99 {med['p99']:.0f} ms")


if __name__ == "__main__":
    main()
