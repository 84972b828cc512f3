"""What `bacalhau docker run` prints once its job ends, end to end against a real node and the real Docker engine:
all of the output, stdout and stderr apart, the job's exit code; the node's own notes on stderr, counted in the
result (the CLI asks for no stderr the result says is empty); one clear line for a container that cannot start.
And the container's removal: once the node has reported the run's end, not while it does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bacalhau.config import JobLimits
from bacalhau.executors import docker
from bacalhau.executors.docker import LABEL_EXECUTION, LABEL_JOB, DockerExecutor
from bacalhau.executors.types import ExecutionDir
from bacalhau.models import DockerSpec, Job, JobSpec
from bacalhau.node import Node
from tests.conftest import run_cli

IMAGE = "bacalhau/busybox:latest"
MiB = 1024 * 1024

# the CLI in a child process, each request it makes listed on stderr (a line of JSON) before its own output
RECORDING_CLI = """
import json, sys
from bacalhau.cli.client import ApiClient
exchange = ApiClient._exchange
def recorded(self, method, path, *args, **kw):
    print(json.dumps(["request", method, path]), file=sys.stderr, flush=True)
    return exchange(self, method, path, *args, **kw)
ApiClient._exchange = recorded
opened = ApiClient._open
def recorded_open(self, method, path, *args, **kw):
    print(json.dumps(["request", method, path]), file=sys.stderr, flush=True)
    return opened(self, method, path, *args, **kw)
ApiClient._open = recorded_open
sys.argv = ["bacalhau", *sys.argv[1:]]
from bacalhau.cli.main import main
main()
"""


def result_requests(stderr: str) -> list[str]:
    """The result items the recorded CLI asked for."""
    asked = [json.loads(line)[2] for line in stderr.splitlines() if line.startswith('["request"')]
    return [path.rsplit("/", 1)[1] for path in asked if "/results/" in path]


async def recorded_run(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BACALHAU_API_HOST": "127.0.0.1", "BACALHAU_API_PORT": str(node.api_port)}
    with trio.fail_after(60):
        proc = await trio.run_process([sys.executable, "-c", RECORDING_CLI, "docker", "run", IMAGE, "--", *args],
                                      capture_stdout=True, capture_stderr=True, check=False, env=env)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.mark.docker
async def test_a_container_that_writes_a_lot_has_all_of_it_printed_apart_and_its_exit_code(single_node: Node) -> None:
    script = "head -c 3000000 /dev/zero | tr '\\0' a; echo; yes err | head -n 20000 >&2; exit 7"
    res = await run_cli(single_node, "docker", "run", IMAGE, "--", "sh", "-c", script)
    assert res.returncode == 7, res.stderr[-2000:]
    assert res.stdout_bytes == b"a" * 3_000_000 + b"\n"
    assert "err\n" * 20000 in res.stderr and "aaaa" not in res.stderr


@pytest.mark.docker
async def test_output_whole_in_the_result_is_not_asked_for_and_a_longer_one_is(single_node: Node) -> None:
    quiet = await recorded_run(single_node, "echo", "hi")
    assert quiet.returncode == 0 and quiet.stdout == "hi\n", quiet.stderr
    assert result_requests(quiet.stderr) == []      # stdout from the result's tail, stderr known empty
    loud = await recorded_run(single_node, "sh", "-c", "echo hi; echo 'on stderr' >&2; exit 3")
    assert loud.returncode == 3 and loud.stdout == "hi\n", loud.stderr
    assert result_requests(loud.stderr) == [] and loud.stderr.endswith("on stderr\n")     # its tail is all of it
    long = await recorded_run(single_node, "sh", "-c", "echo hi; yes e | head -c 3000 >&2")
    assert long.returncode == 0 and long.stdout == "hi\n", long.stderr
    assert result_requests(long.stderr) == ["stderr"] and long.stderr.endswith("e\n" * 1500)


@pytest.mark.docker
async def test_the_notes_a_node_adds_to_stderr_are_counted_in_the_result(tmp_path: Path) -> None:
    # a stream cut at the cap is said at the end of stderr: a client that trusted a stderr_bytes of 0 would
    # not print it
    ex = DockerExecutor("test-docker-run-output", limits=JobLimits(max_output=MiB))
    d = ExecutionDir(tmp_path / "e1")
    d.create()
    await ex.start("e1", Job(spec=JobSpec(docker=DockerSpec(image=IMAGE, parameters=[
        "sh", "-c", "head -c 3000000 /dev/zero"]))), d)
    result = await ex.wait("e1")
    ex.release("e1")
    assert result.exit_code == 0 and result.stdout_truncated and not result.stderr_truncated
    assert result.stderr_bytes == d.stderr.stat().st_size > 0
    assert "stdout was truncated" in d.stderr.read_text()


@pytest.mark.docker
async def test_a_container_that_cannot_start_is_one_clear_line(single_node: Node) -> None:
    res = await run_cli(single_node, "docker", "run", IMAGE, "--", "/no/such/program")
    assert res.returncode == 1 and res.stdout == ""
    last = res.stderr.splitlines()[-1]
    assert "could not run" in last and "docker could not start the container" in last, res.stderr
    assert "Traceback" not in res.stderr


def containers(label: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


async def gone(label: str) -> None:
    with trio.fail_after(20):
        while containers(label):
            await trio.sleep(0.05)


def one_run(tmp_path: Path, eid: str) -> tuple[Job, ExecutionDir]:
    d = ExecutionDir(tmp_path / eid)
    d.create()
    return Job(spec=JobSpec(docker=DockerSpec(image=IMAGE, parameters=["true"]))), d


@pytest.mark.docker
async def test_a_container_is_removed_when_released_not_when_its_run_ends(tmp_path: Path) -> None:
    ex = DockerExecutor("test-docker-run-output")
    await ex.start("r1", *one_run(tmp_path, "r1"))
    assert (await ex.wait("r1")).exit_code == 0
    assert len(containers(f"{LABEL_EXECUTION}=r1")) == 1     # its result is still being published and reported
    ex.release("r1")
    ex.release("r1")                                          # idempotent
    await gone(f"{LABEL_EXECUTION}=r1")


@pytest.mark.docker
async def test_a_container_never_released_is_removed_all_the_same(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # a requester that never answers a run's end: its containers are not kept past REMOVE_UNRELEASED_AFTER (the
    # next run's start or end removes them)
    monkeypatch.setattr(docker, "REMOVE_UNRELEASED_AFTER", 0.0)
    ex = DockerExecutor("test-docker-run-output")
    await ex.start("u1", *one_run(tmp_path, "u1"))
    await ex.wait("u1")
    await ex.start("u2", *one_run(tmp_path, "u2"))
    await gone(f"{LABEL_EXECUTION}=u1")
    await ex.wait("u2")
    ex.release("u2")
    await gone(f"{LABEL_EXECUTION}=u2")


@pytest.mark.docker
async def test_the_node_has_its_jobs_containers_removed(single_node: Node) -> None:
    for command, code in (("true", 0), ("false", 1)):
        res = await run_cli(single_node, "docker", "run", IMAGE, "--", command)    # waits for the job's end
        assert res.returncode == code, res.stderr
        job_id = res.stderr.split()[1]      # "job <id> submitted"
        assert len(containers(f"{LABEL_JOB}={job_id}")) <= 1   # (it ran here: removed now, or being removed)
        await gone(f"{LABEL_JOB}={job_id}")


@pytest.mark.docker
async def test_a_cancelled_jobs_container_is_removed(single_node: Node) -> None:
    # the node lets the execution go while the executor's wait is still ending (killed): removed all the same
    submitted = await run_cli(single_node, "docker", "run", "--id-only", IMAGE, "--", "sleep", "60")
    job_id = submitted.stdout.strip()
    with trio.fail_after(20):
        while not containers(f"{LABEL_JOB}={job_id}"):
            await trio.sleep(0.05)
    cancelled = await run_cli(single_node, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    await gone(f"{LABEL_JOB}={job_id}")
