"""A `bacalhau serve` of its own for a benchmark: temporary state, free ports, stopped at the end."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bacalhau.cli.client import ApiClient
from bacalhau.testing import free_port

BIN = str(Path(sys.executable).parent / "bacalhau")
IMAGE = "bacalhau/busybox:latest"


@dataclass
class Served:
    repo: Path
    api_port: int
    env: dict[str, str]
    client: ApiClient
    pid: int = 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process (all its threads) has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serve(*extra: str, repo: Path | None = None, engine: str = "docker", command: list[str] | None = None
          ) -> Iterator[Served]:
    """`repo`: a state directory filled beforehand (removed at the end all the same); up once the node
    advertises `engine` (noop benchmarks need no Docker). `command`: what runs as `bacalhau` (the installed
    script by default)."""
    repo = repo or Path(tempfile.mkdtemp(prefix="bacalhau-bench-"))
    api_port, swarm_port = free_port(), free_port()
    env = {**os.environ, "BACALHAU_DIR": str(repo), "BACALHAU_API_HOST": "127.0.0.1",
           "BACALHAU_API_PORT": str(api_port)}
    log = open(repo / "serve.log", "wb")
    proc = subprocess.Popen([*(command or [BIN]), "serve", "--port", str(api_port), "--swarm-port", str(swarm_port),
                             "--ipfs-swarm-port", str(free_port()), *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=log)
    client = ApiClient("127.0.0.1", api_port)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if any(engine in n["engines"] for n in client.nodes()):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"bacalhau serve did not come up:\n{(repo / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield Served(repo, api_port, env, client, proc.pid)
    finally:
        stop([proc], timeout=20)
        log.close()
        shutil.rmtree(repo, ignore_errors=True)


def stop(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM to every process, then wait for each; one still up after `timeout` is killed."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def container_of(execution_id: str, timeout: float = 30) -> str:
    """The Docker container id of a bacalhau execution (found by its label)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=bacalhau.execution_id={execution_id}"],
                             capture_output=True, text=True, check=True).stdout.split()
        if out:
            return out[0]
        time.sleep(0.01)
    raise SystemExit(f"no container for execution {execution_id}")


def running_execution(client: ApiClient, job_id: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.job(job_id)
        live = [e for e in job["executions"] if e["state"] in ("bid_accepted", "running")]
        if live:
            return str(live[-1]["id"])
        time.sleep(0.01)
    raise SystemExit(f"job {job_id} did not start")


def run_noop_jobs(client: ApiClient, spec: dict[str, Any], jobs: int) -> tuple[list[str], float]:
    """Submit `jobs` jobs of `spec` from 16 threads and wait for all: their ids and the seconds it took. A job
    that does not complete ends the benchmark with its reason."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(lambda _: client.submit(spec), range(jobs)))
    pending = set(ids)
    while pending:
        for job_id in list(pending):
            job = client.wait(job_id, since=time.time() + 3600, timeout=10)
            if job["state"] in ("completed", "failed", "cancelled"):
                if job["state"] != "completed":
                    raise SystemExit(f"noop job {job_id} ended {job['state']}: {job['reason']}")
                pending.discard(job_id)
    return ids, time.perf_counter() - start
