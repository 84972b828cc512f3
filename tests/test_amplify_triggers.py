"""Amplify's triggers: a cluster job with the chosen label (serve --amplify-trigger-label) that completes queues
a run over its outputs, once; a job without it, or one labelled as an Amplify step, does not."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import trio

from bacalhau.amplify.engine import TRIGGER_RUNS
from bacalhau.models import DockerSpec, Engine, JobSpec, JobState
from bacalhau.node import Node
from tests.conftest import node_config
from tests.test_amplify import IMAGE, nodes_of, wait_run, wf

COPY = wf(f"""
- id: cat
  image: {IMAGE}
  entrypoint: [sh, -c, 'cat /inputs/made.txt > /outputs/seen.txt; echo seen']
""", """
- id: step
  job_id: cat
  inputs: [{node_id: root-node, path: /inputs}]
""")


def job(labels: dict[str, str]) -> JobSpec:
    return JobSpec(engine=Engine.DOCKER, labels=labels, docker=DockerSpec(
        image=IMAGE, entrypoint=["sh", "-c", "echo made > /outputs/made.txt"]))


async def finished(node: Node, job_id: str) -> None:
    with trio.fail_after(60):
        while not (await node.requester.store.get_job(job_id)).state.terminal:
            await node.requester.wait_for_change(job_id, 0.5)
    assert (await node.requester.store.get_job(job_id)).state == JobState.COMPLETED


@pytest.mark.docker
@pytest.mark.slow
async def test_a_completed_job_with_the_trigger_label_queues_one_run_and_others_none(tmp_path: Path) -> None:
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(COPY)
    config = node_config(tmp_path / "node", amplify_trigger_label="pipeline=images", amplify_workflow=workflow)
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(config).run)
        store = node.amplify.store
        plain = await node.requester.submit(job({"pipeline": "other"}))
        # a job dressed as a step of a run (the loop guard) carries the label but is never a trigger
        dressed = await node.requester.submit(job({"pipeline": "images", "amplify": str(uuid.uuid4())}))
        labelled = await node.requester.submit(job({"pipeline": "images"}), client_id="someone")
        for j in (plain, dressed, labelled):
            await finished(node, j.id)
        run_id = str(uuid.uuid5(TRIGGER_RUNS, labelled.id))
        with trio.fail_after(30):
            while (await store.list_runs(10, 0))[1] == 0:
                await trio.sleep(0.1)
        data = await wait_run(node, run_id)
        assert data["meta"]["status"] == "succeeded", data["meta"]
        step = nodes_of(data)["step"]
        assert step["state"] == "succeeded"
        # the run's step jobs completed too, and its own run was the only one queued: no loop, no other job's
        for step_job in step["jobs"]:
            await finished(node, step_job)
        node.amplify.job_changed(labelled.id)          # told again: the same run, not a second
        node.amplify.job_changed(step["jobs"][0])
        # the trigger takes jobs in order: once a later labelled job's run is queued, those two were looked at
        later = await node.requester.submit(job({"pipeline": "images"}), client_id="someone")
        await finished(node, later.id)
        later_run = str(uuid.uuid5(TRIGGER_RUNS, later.id))
        with trio.fail_after(30):
            while later_run not in {r.id for r in (await store.list_runs(10, 0))[0]}:
                await trio.sleep(0.1)
        runs, total = await store.list_runs(10, 0)
        assert total == 2 and {r.id for r in runs} == {run_id, later_run}
        assert {r.client_id for r in runs} == {"someone"}
        assert (await node.requester.store.get_job(step["jobs"][0])).client_id == "someone"
        nursery.cancel_scope.cancel()


@pytest.mark.docker
@pytest.mark.slow
def test_serve_amplify_trigger_label_runs_the_workflow_over_a_labelled_cli_job(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(COPY)
    node = served("node", "--amplify-trigger-label", "pipeline", "--amplify-workflow", str(workflow)).start()
    node.wait_ready()
    out = node.cli("docker", "run", "-l", "pipeline=any", "--entrypoint", "sh", IMAGE, "--", "-c",
                   "echo made > /outputs/made.txt")
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = node.cli("amplify", "list")
        if " succeeded " in listed.stdout:
            break
        time.sleep(0.3)
    assert " succeeded " in listed.stdout, (listed.stdout, node.log.read_text()[-2000:])
