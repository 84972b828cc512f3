"""`bacalhau list` and `bacalhau describe` against a store of --jobs finished jobs, timed as a user runs them
(a new process each), against a bare `python -c pass` in the same run (target: <= 50 ms median each).

    .venv/bin/python benchmarks/client_commands.py [--jobs 10000] [--runs 15]

The store is filled through the requester's JobStore before `bacalhau serve` opens it (each job completed,
with one completed execution and its events), so filling takes seconds, not the minutes that submitting
through the API would. Prints medians and each command's import time (`python -X importtime`, the top
modules), where a client command's start goes.

Measured on the shared 2-core machine (load 8-10), 10,000 jobs, medians of 9, wall (CPU):
  main:  python -c pass 45 ms (13); list 429 ms (96); describe 476 ms (119); the API's list 1.5 ms, describe 1.6 ms
  perf:  python -c pass 51 ms (14); list 244 ms (69); describe 513 ms (110); the API's list 1.9 ms, describe 7.4 ms
The server answers in milliseconds with 10,000 jobs (an index for each lookup); a command's time is its
interpreter's start and imports (click, and for describe PyYAML and the signing key), far from 50 ms here.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from _serve import BIN, serve

from bacalhau.models import ExecutionState, Job, JobSpec, JobState
from bacalhau.models.job import Execution
from bacalhau.requester.store import JobStore

SPEC = {"engine": "noop", "noop": {"stdout": "hi\n"}}


async def fill(path: Path, jobs: int) -> list[str]:
    store = JobStore(path)
    ids: list[str] = []
    spec = JobSpec.model_validate(SPEC)
    limit = trio.Semaphore(256)

    async def one() -> None:
        async with limit:
            job = Job(spec=spec, state=JobState.COMPLETED)
            ids.append(job.id)
            await store.create_job(job)
            await store.create_execution(Execution(job_id=job.id, node_id="QmBenchNode",
                                                   state=ExecutionState.COMPLETED), "result published")

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(jobs):
                nursery.start_soon(one)
    finally:
        store.close()
    return ids


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds, and the CPU seconds of the process (steadier than wall on a shared machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.decode()[-500:]}")
    return elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def import_top(cmd: list[str], env: dict[str, str], top: int = 8) -> str:
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "bacalhau.cli.main", *cmd[1:]],
                         capture_output=True, text=True, env=env, check=False)
    rows = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = (p.strip() for p in line[len("import time:"):].split("|"))
            if name.count(".") == 0 or name.startswith("bacalhau"):
                rows.append((int(cumulative), name.strip()))
    total = sum(c for c, n in rows if not n.startswith(" "))
    rows.sort(reverse=True)
    return f"imports ~{total / 1000:.0f} ms; top: " + ", ".join(f"{n} {c / 1000:.1f}" for c, n in rows[:top])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    repo = Path(tempfile.mkdtemp(prefix="bacalhau-bench-cli-"))
    start = time.perf_counter()
    ids = trio.run(fill, repo / "jobs.db", args.jobs)
    print(f"store filled with {args.jobs} completed jobs in {time.perf_counter() - start:.1f}s")
    with serve(repo=repo, engine="noop") as served:
        # as installed: compiled bytecode cached (a session with PYTHONDONTWRITEBYTECODE compiled every changed
        # module from source at each start), in a directory of this run's own
        env = {k: v for k, v in served.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(repo / "pycache")
        target = ids[len(ids) // 2]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "bacalhau list": [BIN, "list"],
            "bacalhau describe": [BIN, "describe", target],
        }
        for cmd in commands.values():
            timed(cmd, env)       # warm the page cache and the bytecode cache
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                times[name].append(timed(cmd, env))
        base = statistics.median(w for w, _ in times["python -c pass"])
        for name, values in times.items():
            med = statistics.median(w for w, _ in values)
            cpu = statistics.median(c for _, c in values)
            print(f"{name:20s} median {med * 1000:6.1f} ms wall, {cpu * 1000:6.1f} ms CPU  ({med / base:.2f}x python "
                  f"-c pass; n={args.runs})" + ("   (target <= 50 ms)" if name != "python -c pass" else ""))
        client = served.client
        for name, call in (("API list", lambda: client.list_jobs(10)), ("API describe", lambda: client.job(target))):
            call()
            samples = []
            for _ in range(args.runs):
                t = time.perf_counter()
                call()
                samples.append(time.perf_counter() - t)
            print(f"{name:20s} median {statistics.median(samples) * 1000:6.1f} ms wall (the request alone, "
                  "kept-alive connection)")
        for name in ("bacalhau list", "bacalhau describe"):
            print(f"{name}: {import_top(commands[name], env)}")


if __name__ == "__main__":
    main()
