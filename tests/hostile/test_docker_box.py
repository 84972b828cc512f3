"""Jobs stay in their box: each test is an attack a job (or its submitter) makes on the node, against the real
Docker engine; it fails on a node without the limit it names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from bacalhau.compute.capacity import Capacity
from bacalhau.config import JobLimits
from bacalhau.errors import ExecutorError
from bacalhau.executors.docker import JOB_CAPABILITIES, LABEL_EXECUTION, DockerExecutor
from bacalhau.executors.types import ExecutionDir
from bacalhau.models import DockerSpec, Job, JobSpec, Resources, RunResult
from bacalhau.node import Node
from tests.conftest import node_config, run_cli

IMAGE = "bacalhau/busybox:latest"
NODE = "test-docker-box"
MiB = 1024**2
# Linux capability numbers (include/uapi/linux/capability.h) of the set a job keeps
CAP_NUMBERS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7,
               "NET_BIND_SERVICE": 10}


def job(*cmd: str, **kw: object) -> Job:
    return Job(spec=JobSpec(docker=DockerSpec(image=IMAGE, parameters=list(cmd)), **kw))  # type: ignore[arg-type]


async def start(tmp_path: Path, j: Job, eid: str, limits: JobLimits) -> tuple[DockerExecutor, ExecutionDir]:
    ex = DockerExecutor(NODE, limits=limits)
    d = ExecutionDir(tmp_path / eid)
    d.create()
    await ex.start(eid, j, d)
    return ex, d


async def run(tmp_path: Path, j: Job, limits: JobLimits, eid: str) -> tuple[RunResult, ExecutionDir]:
    ex, d = await start(tmp_path, j, eid, limits)
    try:
        with trio.fail_after(60):
            return await ex.wait(eid), d
    finally:
        ex.release(eid)


async def containers_of(eid: str) -> list[str]:
    out = await trio.run_process(["docker", "ps", "-aq", "--filter", f"label={LABEL_EXECUTION}={eid}"],
                                 capture_stdout=True)
    return out.stdout.decode().split()


async def container_id(eid: str) -> str:
    with trio.fail_after(10):
        while True:
            out = await trio.run_process(["docker", "ps", "-q", "--no-trunc", "--filter", f"label={LABEL_EXECUTION}={eid}"],
                                         capture_stdout=True)
            if out.stdout.strip():
                return out.stdout.decode().split()[0]
            await trio.sleep(0.05)


def pids_in_cgroup(cid: str) -> int | None:
    """Processes in the container's cgroup right now, read on the host (cgroup v1 or v2 layouts)."""
    for path in (f"/sys/fs/cgroup/pids/docker/{cid}/pids.current", f"/sys/fs/cgroup/docker/{cid}/pids.current",
                 f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/pids.current"):
        try:
            return int(Path(path).read_text())
        except (OSError, ValueError):
            continue
    return None


@asynccontextmanager
async def open_node(tmp_path: Path, **limits: object) -> AsyncIterator[Node]:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", job_limits=JobLimits(**limits))).run)  # type: ignore[arg-type]
        yield node
        nursery.cancel_scope.cancel()


# -- the container itself ------------------------------------------------------------------------------------

@pytest.mark.docker
async def test_a_job_keeps_only_the_chosen_capabilities_and_cannot_gain_privileges(tmp_path: Path) -> None:
    # a user namespace would give the job every capability back inside it: the engine's seccomp profile stays on
    result, d = await run(tmp_path, job("sh", "-c", "grep -E '^(CapPrm|CapEff|CapBnd|NoNewPrivs|Seccomp):' "
                                                    "/proc/self/status; unshare -U -r id || echo no-userns"),
                          JobLimits(), "box-caps")
    lines = d.stdout.read_text().splitlines()
    status = dict(line.split(":\t") for line in lines if ":\t" in line)
    chosen = sum(1 << CAP_NUMBERS[name] for name in JOB_CAPABILITIES)
    assert {k: int(v, 16) for k, v in status.items() if k.startswith("Cap")} == \
        {"CapPrm": chosen, "CapEff": chosen, "CapBnd": chosen}
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert lines[-1] == "no-userns"


@pytest.mark.docker
async def test_mknod_of_a_host_disk_in_outputs_is_refused(tmp_path: Path) -> None:
    # a block device node for loop0 in /outputs would be published with the results and readable on the host
    result, d = await run(tmp_path, job("sh", "-c", "mknod /outputs/dev b 7 0; echo rc=$?"), JobLimits(), "box-mknod")
    assert "rc=1" in d.stdout.read_text()
    assert "Operation not permitted" in d.stderr.read_text()
    assert not (d.outputs / "dev").exists()


@pytest.mark.docker
async def test_the_container_is_limited_to_what_capacity_counts_for_a_job_that_asks_nothing(tmp_path: Path) -> None:
    limits = JobLimits(default_cpu=0.25, default_memory=48 * MiB, pids=100)
    capacity = Capacity(Resources(cpu=1, memory=1024 * MiB), limits)
    async with capacity.reserve(Resources()):
        counted = capacity.used
    ex, d = await start(tmp_path, job("sleep", "30"), "box-size", limits)
    try:
        out = await trio.run_process(["docker", "inspect", "--format",
                                      "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} "
                                      "{{.HostConfig.PidsLimit}} {{.HostConfig.LogConfig.Type}} "
                                      "{{.HostConfig.SecurityOpt}}", await container_id("box-size")], capture_stdout=True)
    finally:
        await ex.cancel("box-size")
        await ex.wait("box-size")
        ex.release("box-size")
    assert out.stdout.decode().split() == [str(int(counted.cpu * 1e9)), str(counted.memory), str(counted.memory),
                                           "100", "none", "[no-new-privileges]"]


# -- resource attacks ----------------------------------------------------------------------------------------

@pytest.mark.docker
async def test_a_fork_bomb_stays_under_the_pids_limit_and_ends_as_one_killed_job(tmp_path: Path) -> None:
    limit = 64
    ex, d = await start(tmp_path, job("sh", "-c", "while true; do sleep 100 & done", timeout=4.0), "box-bomb",
                        JobLimits(pids=limit))
    cid = await container_id("box-bomb")
    seen: list[int] = []

    async def watch() -> None:
        while True:
            n = pids_in_cgroup(cid)
            if n is not None:
                seen.append(n)
            await trio.sleep(0.05)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            result = await ex.wait("box-bomb")
            ex.release("box-bomb")
            nursery.cancel_scope.cancel()
    # busybox sh gives up (exit 2) when it cannot fork; a shell that kept trying would meet the timeout
    assert result.exit_code == 2 or result.error == "timed out after 4s", result
    assert "can't fork" in d.stderr.read_text()          # the bomb hit the wall
    assert not seen or max(seen) <= limit
    assert (await trio.run_process(["true"], check=False)).returncode == 0   # and the host can still fork


@pytest.mark.docker
async def test_a_job_that_asks_no_memory_is_killed_at_the_default_and_told_so(tmp_path: Path) -> None:
    # sort holds all it reads; 100 MB of it cannot fit in the node's 32 MiB default job size
    async with open_node(tmp_path, default_memory=32 * MiB) as node:
        res = await run_cli(node, "docker", "run", "--cpu", "1", IMAGE, "--",
                            "sh", "-c", "head -c 100000000 /dev/zero | tr '\\0' a | sort >/dev/null")
    assert res.returncode == 137, res.stderr
    assert "bacalhau: the container was killed: out of memory: killed at its limit of 33554432 bytes" in res.stderr
    assert "failed: out of memory" in res.stderr


@pytest.mark.docker
async def test_an_output_flood_is_cut_at_the_cap_and_the_job_told(tmp_path: Path) -> None:
    result, d = await run(tmp_path, job("sh", "-c", "yes | head -c 20000000; echo done >&2"),
                          JobLimits(max_output=MiB), "box-flood")
    assert result.exit_code == 0 and not result.error
    assert d.stdout.stat().st_size == result.stdout_bytes == MiB and result.stdout_truncated
    assert d.stdout.read_bytes() == b"y\n" * (MiB // 2)
    assert not result.stderr_truncated
    assert d.stderr.read_text() == (f"done\n\nbacalhau: stdout was truncated at {MiB} bytes (this node's "
                                    f"--max-job-output); {20000000 - MiB} more bytes were dropped\n")


@pytest.mark.docker
@pytest.mark.slow
async def test_an_endless_flood_fails_alone_and_the_node_serves_on(tmp_path: Path) -> None:
    async with open_node(tmp_path, max_output=MiB) as node:
        flood = await run_cli(node, "docker", "run", "--timeout", "3", IMAGE, "--", "yes")
        after = await run_cli(node, "docker", "run", IMAGE, "--", "echo", "alive")
    assert flood.returncode != 0
    assert len(flood.stdout_bytes) == MiB
    assert f"bacalhau: stdout was truncated at {MiB} bytes" in flood.stderr
    assert "failed: timed out after 3s" in flood.stderr
    assert after.returncode == 0 and after.stdout == "alive\n"


# -- what a job may ask ----------------------------------------------------------------------------------------

@pytest.mark.docker
async def test_host_network_is_refused_without_the_operators_opt_in(tmp_path: Path) -> None:
    async with open_node(tmp_path) as node:
        res = await run_cli(node, "docker", "run", "--network", "host", IMAGE, "--", "ls", "/sys/class/net")
    assert res.returncode == 1 and res.stdout == ""
    assert "host networking, which this node does not allow" in res.stderr
    assert "--allow-host-network" in res.stderr


@pytest.mark.docker
async def test_the_executor_itself_refuses_host_network_without_the_opt_in(tmp_path: Path) -> None:
    # the last gate, should a bid ever be accepted past the bidder
    with pytest.raises(ExecutorError, match="host networking is not allowed on this node"):
        await start(tmp_path, job("true", network="host"), "box-host", JobLimits())
    assert await containers_of("box-host") == []


@pytest.mark.docker
async def test_a_timeout_over_the_node_maximum_is_refused(tmp_path: Path) -> None:
    async with open_node(tmp_path, max_timeout=60.0) as node:
        res = await run_cli(node, "docker", "run", "--timeout", "120", IMAGE, "--", "echo", "hi")
    assert res.returncode == 1 and res.stdout == ""
    assert "the job's timeout of 120s is over this node's maximum of 60s" in res.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_serve_flags_reach_the_node(served) -> None:  # type: ignore[no-untyped-def]
    node = served("node", "--allow-host-network", "--max-job-timeout", "1900", "--job-pids-limit", "32").start()
    node.wait_ready()
    net = node.cli("docker", "run", "--network", "host", IMAGE, "--", "ls", "/sys/class/net")
    assert net.returncode == 0, net.stderr
    assert len(net.stdout.split()) > 1          # more than lo: the host's network
    long = node.cli("docker", "run", "--timeout", "1901", IMAGE, "--", "echo", "hi")
    assert long.returncode == 1 and "over this node's maximum of 1900s" in long.stderr
    pids = node.cli("docker", "run", IMAGE, "--", "cat", "/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max")
    assert "32" in pids.stdout.split()


async def test_serve_refuses_a_default_job_size_its_capacity_could_never_hold(tmp_path: Path) -> None:
    # every job asking nothing would be refused with "more than this node has", naming nothing the user asked
    res = await run_cli(None, "serve", "--repo", str(tmp_path / "r"), "--limit-total-cpu", "1",
                        "--default-job-cpu", "2", timeout=20)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "the default job size (2 CPU, 100000000 bytes) is more than this node offers (1 CPU" in res.stderr


def test_a_result_stored_before_the_truncation_flags_still_parses() -> None:
    old = '{"exit_code": 0, "error": "", "stdout_bytes": 3, "stderr_bytes": 0, "stdout_tail": "hi\\n"}'
    result = RunResult.model_validate_json(old)
    assert (result.stdout_truncated, result.stderr_truncated) == (False, False)
