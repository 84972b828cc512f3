"""What one API request costs the node: CPU of the `bacalhau serve` process (all threads, from /proc) per request,
and the client's latency, for the requests the throughput load makes (issue 14): a long-poll wait on a job that
has ended (the HTTP stack, one job read, its JSON), a bare GET /api/v1/version (the HTTP stack alone), and a
signed submit of a noop job (its run included: the node then runs the job).

    .venv/bin/python benchmarks/api_requests.py [--requests 3000] [--threads 8] [--kinds version wait submit]

The same-run baseline is another tree's code: PYTHONPATH=/path/to/tree.

Measured on the shared 2-core machine (load average ~10 from others' benchmarks), 2000 requests, 8 threads,
interleaved with the branch point's code (1054790), two runs each, node CPU a request:
  version  main 460, 595 us; an answer in one write and one idle watcher a connection: 380, 350 us
  wait     main 785, 730 us; the same: 580, 530 us
Then a long poll that names its job in full skips the store's id look-up (a worker-thread hand-off), load
average ~13: wait main 1490, 1695 us; this 615, 590 us (version 705, 705 against 690, 485).
Then a write the socket takes at once is made without the send lock, scopes and scheduler round trips, three
runs each against the tree before it: version 353, 453, 360 -> 290, 303, 273 us.
(a GET's CPU is nearly all Python: perf put the kernel at 13% of the process, the socket writes a small part.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

from _serve import cpu_seconds, serve

from bacalhau.cli.client import ApiClient

SPEC = {"engine": "noop", "noop": {"stdout": "hi\n"}}


def hammer(client: ApiClient, kind: str, job_id: str, requests: int, threads: int) -> list[float]:
    """`requests` requests of `kind` from `threads` threads, each on its kept-alive connection: latencies."""
    left = [requests]
    lock = threading.Lock()
    took: list[float] = []

    def worker() -> None:
        mine = ApiClient(client.host, client.port)
        mine._cluster_id = client._cluster_id
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            start = time.perf_counter()
            if kind == "version":
                mine.version()
            elif kind == "wait":
                mine.wait(job_id, since=0, timeout=1)
            else:
                mine.submit(SPEC)
            took.append(time.perf_counter() - start)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--kinds", nargs="+", default=["version", "wait", "submit"])
    args = parser.parse_args()
    os.environ.setdefault("BACALHAU_DIR", tempfile.mkdtemp(prefix="bacalhau-bench-client-"))
    with serve(engine="noop") as node:
        client = node.client
        job_id = client.submit(SPEC)
        while client.wait(job_id, since=time.time() + 3600, timeout=10)["state"] != "completed":
            pass
        for kind in args.kinds:
            hammer(client, kind, job_id, args.requests // 10, args.threads)    # warm up
            cpu = cpu_seconds(node.pid)
            took = hammer(client, kind, job_id, args.requests, args.threads)
            used = cpu_seconds(node.pid) - cpu
            cuts = statistics.quantiles(took, n=100)
            print(f"{kind}: node CPU {used * 1e6 / len(took):.0f} us a request; latency p50 {cuts[49] * 1000:.2f} ms, "
                  f"p99 {cuts[98] * 1000:.2f} ms ({len(took)} requests, {args.threads} threads)", flush=True)


if __name__ == "__main__":
    main()
