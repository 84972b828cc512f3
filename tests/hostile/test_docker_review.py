"""The review of the docker-start changes (dc21852, d3f0f90, 8d865d4), as attacks:

- a container whose execution the node never releases (a requester that never answers the run's end) was
  removed only at the next run's start or end: on a node that gets no further job, kept for its life;
- a wait given up (the node shutting down, its task cancelled) left its container running, in the list of
  those to release, where nothing would release it: a `sleep 3600` ran on after the node stopped;
- a flood of short runs never released kept every container REMOVE_UNRELEASED_AFTER (each one's writable
  layer on the disk): now at most MAX_UNRELEASED;
- a run's exit code outside 0..255 as a node reports it (a hostile one: the model does not bound it) became the
  CLI's: `sys.exit(256)` exits 0, so a job that failed, or exited 256, was a success to the user's shell (also
  through `docker run -f`, the logs' verdict).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

from bacalhau.executors import docker
from bacalhau.executors.docker import LABEL_EXECUTION, DockerExecutor
from bacalhau.executors.types import ExecutionDir
from bacalhau.models import DockerSpec, Job, JobSpec

IMAGE = "bacalhau/busybox:latest"
NODE = "test-docker-review"


def containers(label: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


def remove(label: str) -> None:
    for cid in containers(label):
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


async def gone(label: str, within: float) -> bool:
    with trio.move_on_after(within):
        while containers(label):
            await trio.sleep(0.05)
        return True
    return False


def one_run(tmp_path: Path, eid: str, *command: str) -> tuple[Job, ExecutionDir]:
    d = ExecutionDir(tmp_path / eid)
    d.create()
    return Job(spec=JobSpec(docker=DockerSpec(image=IMAGE, parameters=list(command)))), d


@pytest.mark.docker
async def test_a_container_never_released_is_removed_when_no_other_run_comes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the node's last run: its requester never answers, no run starts or ends after it
    monkeypatch.setattr(docker, "REMOVE_UNRELEASED_AFTER", 0.5)
    ex = DockerExecutor(NODE)
    eid = "rev-unreleased-1"
    try:
        await ex.start(eid, *one_run(tmp_path, eid, "true"))
        assert (await ex.wait(eid)).exit_code == 0
        assert containers(f"{LABEL_EXECUTION}={eid}")     # kept while its result is reported
        assert await gone(f"{LABEL_EXECUTION}={eid}", within=8.0), "kept past REMOVE_UNRELEASED_AFTER"
    finally:
        remove(f"{LABEL_EXECUTION}={eid}")


@pytest.mark.docker
async def test_a_running_container_whose_wait_is_given_up_is_removed(tmp_path: Path) -> None:
    # the node shutting down cancels the execution's task (after its grace): nothing releases it after that
    ex = DockerExecutor(NODE)
    eid = "rev-given-up-1"
    try:
        await ex.start(eid, *one_run(tmp_path, eid, "sleep", "3600"))
        with trio.move_on_after(0.5) as scope:
            await ex.wait(eid)
        assert scope.cancelled_caught
        assert await gone(f"{LABEL_EXECUTION}={eid}", within=8.0), "left running"
    finally:
        remove(f"{LABEL_EXECUTION}={eid}")


@pytest.mark.parametrize(("state", "code"), [("completed", 256), ("failed", 256), ("completed", 512),
                                             ("failed", -256)])
def test_a_nodes_exit_code_past_a_byte_does_not_make_the_cli_exit_0(state: str, code: int,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The API's reply is given as data (what a hostile node's result becomes; no node of ours lies): its output
    is whole in the result, so the CLI asks nothing more (no client). The shell sees the status's low byte."""
    from bacalhau.cli.waiting import finish

    result = {"exit_code": code, "stdout_bytes": 3, "stdout_tail": "ok\n", "stderr_bytes": 4, "stderr_tail": "bad\n"}
    job = {"id": "0" * 36, "state": state, "reason": "ran", "executions": [{"state": "completed", "result": result}]}
    status = finish(None, job)  # type: ignore[arg-type]
    assert status & 0xFF != 0, status
    out = capsys.readouterr()
    assert out.out == "ok\n" and "bad\n" in out.err


@pytest.mark.parametrize(("state", "code"), [("completed", 256), ("failed", 256), ("cancelled", -256)])
def test_a_nodes_exit_code_past_a_byte_does_not_make_a_followed_run_exit_0(state: str, code: int) -> None:
    from bacalhau.cli.logs import _verdict
    from bacalhau.log_frames import Ended

    status = _verdict(Ended(state=state, exit_code=code, reason="ran"), follow=True)
    assert status & 0xFF != 0, status


@pytest.mark.docker
async def test_a_flood_of_runs_never_released_keeps_at_most_max_unreleased_containers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a requester that answers no run's end, its jobs short: each exited container (its writable layer on the
    # disk, whatever the job wrote there) was kept REMOVE_UNRELEASED_AFTER, however many ended meanwhile
    monkeypatch.setattr(docker, "MAX_UNRELEASED", 2, raising=False)   # (not there before the fix)
    node = f"{NODE}-flood"
    ex = DockerExecutor(node)
    try:
        for i in range(5):
            eid = f"rev-flood-{i}"
            await ex.start(eid, *one_run(tmp_path, eid, "true"))
            await ex.wait(eid)
        with trio.move_on_after(8.0):
            while len(containers(f"bacalhau.node_id={node}")) > 2:
                await trio.sleep(0.05)
        kept = containers(f"bacalhau.node_id={node}")
        assert len(kept) <= 2, kept
        assert containers(f"{LABEL_EXECUTION}=rev-flood-4")     # the newest is still kept for its release
    finally:
        remove(f"bacalhau.node_id={node}")
