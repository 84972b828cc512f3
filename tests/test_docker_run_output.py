"""What `bacalhau docker run` prints once its job ends, end to end against a real node and the real Docker engine:
all of the output, stdout and stderr apart, the job's exit code; the node's own notes on stderr, counted in the
result (the CLI asks for no stderr the result says is empty); one clear line for a container that cannot start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bacalhau.config import JobLimits
from bacalhau.executors.docker import DockerExecutor
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
async def test_an_empty_stderr_is_not_asked_for_and_one_with_bytes_is(single_node: Node) -> None:
    quiet = await recorded_run(single_node, "echo", "hi")
    assert quiet.returncode == 0 and quiet.stdout == "hi\n", quiet.stderr
    assert result_requests(quiet.stderr) == []      # stdout from the result's tail, stderr known empty
    loud = await recorded_run(single_node, "sh", "-c", "echo hi; echo 'on stderr' >&2")
    assert loud.returncode == 0 and loud.stdout == "hi\n", loud.stderr
    assert result_requests(loud.stderr) == ["stderr"] and loud.stderr.endswith("on stderr\n")


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
