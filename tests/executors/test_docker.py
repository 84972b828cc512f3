"""The Docker executor against the real engine (CI installs and starts it; no engine is a failure)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import trio

from bacalhau.config import JobLimits
from bacalhau.errors import ExecutorError
from bacalhau.executors.docker import LABEL_EXECUTION, LABEL_NODE, DockerExecutor
from bacalhau.executors.types import ExecutionDir
from bacalhau.models import DockerSpec, Job, JobSpec, RunResult

IMAGE = "bacalhau/busybox:latest"
NODE = "test-docker-executor"


def job(*cmd: str, **kw: object) -> Job:
    docker_kw = {k: kw.pop(k) for k in ("env", "working_dir", "entrypoint", "image") if k in kw}
    docker_kw.setdefault("image", IMAGE)
    return Job(spec=JobSpec(docker=DockerSpec(parameters=list(cmd), **docker_kw), **kw))  # type: ignore[arg-type]


def containers(label: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True, check=True)
    return out.stdout.split()


async def run(tmp_path: Path, j: Job, execution_id: str = "e1",
              limits: JobLimits | None = None) -> tuple[RunResult, ExecutionDir]:
    ex = DockerExecutor(NODE, limits=limits)
    d = ExecutionDir(tmp_path / execution_id)
    d.create()
    await ex.start(execution_id, j, d)
    result = await ex.wait(execution_id)
    ex.release(execution_id)
    await removed(execution_id)
    return result, d


async def removed(execution_id: str) -> None:
    """Containers are always removed once released (in the background, off the job's critical path)."""
    with trio.fail_after(20):
        while containers(f"{LABEL_EXECUTION}={execution_id}"):
            await trio.sleep(0.05)


@pytest.mark.docker
async def test_engine_is_installed_here() -> None:
    assert await DockerExecutor(NODE).is_installed()


@pytest.mark.docker
async def test_env_workdir_and_entrypoint(tmp_path: Path) -> None:
    result, d = await run(tmp_path, job("-c", 'echo "$GREETING from $(pwd)"', env={"GREETING": "hello"},
                                        working_dir="/tmp", entrypoint=["/bin/sh"]))
    assert result.exit_code == 0 and not result.error
    assert d.stdout.read_text() == "hello from /tmp\n"
    assert d.exit_code.read_text() == "0"


@pytest.mark.docker
async def test_stdout_and_stderr_are_kept_apart_and_exit_code_is_reported(tmp_path: Path) -> None:
    result, d = await run(tmp_path, job("sh", "-c", "echo out; echo err >&2; exit 3"))
    assert result.exit_code == 3
    assert d.stdout.read_bytes() == b"out\n" and d.stderr.read_bytes() == b"err\n"


@pytest.mark.docker
@pytest.mark.slow
async def test_large_binary_stdout_is_kept_in_full(tmp_path: Path) -> None:
    result, d = await run(tmp_path, job("sh", "-c", "head -c 30000000 /dev/urandom | tee /outputs/copy"))
    data = d.stdout.read_bytes()
    assert len(data) == result.stdout_bytes == 30_000_000
    assert hashlib.sha256(data).digest() == hashlib.sha256((d.outputs / "copy").read_bytes()).digest()


@pytest.mark.docker
async def test_outputs_written_by_the_job_appear_on_the_host(tmp_path: Path) -> None:
    _, d = await run(tmp_path, job("sh", "-c", "mkdir -p /outputs/sub && echo r > /outputs/sub/r.txt"))
    assert (d.outputs / "sub" / "r.txt").read_text() == "r\n"


@pytest.mark.docker
async def test_network_is_none_unless_asked(tmp_path: Path) -> None:
    _, d = await run(tmp_path, job("sh", "-c", "ls /sys/class/net"))
    assert d.stdout.read_text().split() == ["lo"]
    _, d = await run(tmp_path, job("sh", "-c", "ls /sys/class/net", network="host"), "e2",
                     JobLimits(allow_host_network=True))
    assert len(d.stdout.read_text().split()) > 1


@pytest.mark.docker
@pytest.mark.slow
async def test_memory_limit_is_enforced(tmp_path: Path) -> None:
    # sort must hold its whole input (one 200 MB line): it cannot fit in a 32 MiB container
    result, d = await run(tmp_path, job("sh", "-c", "head -c 200000000 /dev/zero | tr '\\0' a | sort >/dev/null",
                                        resources={"memory": "32Mi"}))
    assert result.exit_code == 137
    assert "out of memory" in d.stderr.read_text()


@pytest.mark.docker
async def test_cpu_limit_reaches_the_cgroup(tmp_path: Path) -> None:
    _, d = await run(tmp_path, job("sh", "-c", "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu.max "
                                   "2>/dev/null; true", resources={"cpu": 0.5}))
    assert "50000" in d.stdout.read_text()


@pytest.mark.docker
async def test_timeout_kills_the_container(tmp_path: Path) -> None:
    with trio.fail_after(20):
        result, _ = await run(tmp_path, job("sleep", "60", timeout=1.0))
    assert result.exit_code == -1 and result.error == "timed out after 1s"


@pytest.mark.docker
async def test_cancel_kills_the_container_and_wait_returns(tmp_path: Path) -> None:
    ex = DockerExecutor(NODE)
    d = ExecutionDir(tmp_path / "c1")
    d.create()
    await ex.start("c1", job("sleep", "60"), d)
    results: list[RunResult] = []

    async def waiter() -> None:
        results.append(await ex.wait("c1"))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(0.3)
            await ex.cancel("c1")
    assert results[0].error == "cancelled"
    ex.release("c1")
    await removed("c1")


@pytest.mark.docker
async def test_missing_image_is_a_clear_executor_error(tmp_path: Path) -> None:
    ex = DockerExecutor(NODE)
    d = ExecutionDir(tmp_path / "m1")
    d.create()
    with pytest.raises(ExecutorError, match="'nope/missing:1' is not available on this node"):
        await ex.start("m1", job("true", image="nope/missing:1"), d)


@pytest.mark.docker
async def test_cleanup_orphans_removes_what_an_earlier_run_left() -> None:
    node = "orphan-test-node"
    await trio.run_process(["docker", "create", "--label", f"{LABEL_NODE}={node}", IMAGE, "true"],
                           capture_stdout=True)
    assert len(containers(f"{LABEL_NODE}={node}")) == 1
    assert await DockerExecutor(node).cleanup_orphans() == 1
    assert containers(f"{LABEL_NODE}={node}") == []
