"""Amplify: workflow validation, a real run of Docker jobs on one node (a CID passed down two levels, a skipped
branch, a failing node retried), per-file routing, the queue's limits, cancel, lineage both ways."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bacalhau.amplify.actions import cancel_action, run_action
from bacalhau.amplify.store import NodeState
from bacalhau.amplify.workflow import WorkflowError, parse_workflow
from bacalhau.ipfs.unixfs import add_path, cid_str, cid_to_bytes
from bacalhau.node import Node
from tests.conftest import node_config, run_cli

IMAGE = "bacalhau/busybox:latest"
ROOT = """
- id: root-job
  type: internal
"""


def wf(jobs: str, graph: str) -> str:
    return f"jobs:{ROOT}{jobs}\ngraph:\n- id: root-node\n  job_id: root-job\n  inputs: [{{root: true}}]\n{graph}"


SH = f"""
- id: sh
  image: {IMAGE}
  entrypoint: [sh, -c, 'ls /inputs; echo x > /outputs/x']
"""


@pytest.mark.parametrize(("graph", "jobs", "expected"), [
    ("- id: a\n  job_id: sh\n  inputs: [{node_id: nowhere, path: /inputs}]", SH,
     "node a: parent 'nowhere' is not a node of the graph"),
    ("- id: a\n  job_id: sh\n  inputs: [{node_id: root-node, path: /inputs}]\n"
     "- id: a\n  job_id: sh\n  inputs: [{node_id: root-node, path: /inputs}]", SH, "node a: the id is used twice"),
    ("- id: a\n  job_id: sh\n  inputs: [{node_id: root-node, path: /inputs}]", SH + SH, "job sh: the id is used twice"),
    ("- id: a\n  job_id: sh\n  inputs: [{node_id: b, path: /inputs}]\n"
     "- id: b\n  job_id: sh\n  inputs: [{node_id: a, path: /inputs}]", SH, "it is in a cycle (a <- b <- a)"),
    ("- id: a\n  job_id: nojob\n  inputs: [{node_id: root-node, path: /inputs}]", SH,
     "node a: job 'nojob' is not among the jobs"),
    ("- id: a\n  job_id: sh\n  inputs: [{node_id: root-node, path: /inputs}]\n  when: {mime: 'image'}", SH,
     "node a when.mime: mime 'image' is not a pattern like image/* or text/csv"),
    ("- id: a\n  job_id: sh\n  inputs: [{node_id: root-node, path: /inputs}]\n  when: {mime: '*/png'}", SH,
     "node a when.mime"),
    ("- id: a\n  job_id: sh\n  inputs: [{node_id: root-node, path: /inputs, predicate: '(x'}]", SH,
     "node a inputs.0.predicate: predicate '(x' is not a regular expression"),
    ("- id: a\n  job_id: sh\n  inputs: [{node_id: root-node, path: /inputs}]\n  on_parent_failure: maybe", SH,
     "node a on_parent_failure"),
])
def test_a_workflow_mistake_is_one_line_naming_the_node(graph: str, jobs: str, expected: str) -> None:
    with pytest.raises(WorkflowError) as err:
        parse_workflow(wf(jobs, graph))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_a_workflow_without_a_root_input_is_refused() -> None:
    text = f"jobs:{SH}\ngraph:\n- id: a\n  job_id: sh\n  inputs: [{{node_id: b, path: /inputs}}]\n" \
           "- id: b\n  job_id: sh\n  inputs: [{node_id: a}]\n"
    with pytest.raises(WorkflowError, match="no node takes the run's CID"):
        parse_workflow(text)


async def test_validate_command_prints_one_line_for_a_mistake_and_the_order_when_valid(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(wf(SH, "- id: a\n  job_id: sh\n  inputs: [{node_id: a, path: /inputs}]"))
    out = await run_cli(None, "amplify", "validate", str(bad))
    assert out.returncode == 1
    assert "node a: it is its own parent" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    good = tmp_path / "good.yaml"
    good.write_text(wf(SH, "- id: a\n  job_id: sh\n  inputs: [{node_id: root-node, path: /inputs}]"))
    out = await run_cli(None, "amplify", "validate", str(good))
    assert out.returncode == 0, out.stderr
    assert "root-node -> a" in out.stderr


# -- real runs --------------------------------------------------------------------------------------------

def add_dir(node: Node, root: Path, files: dict[str, str]) -> str:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    lines = add_path(root, put=node.blockstore.put)
    node.blockstore.pin(cid_to_bytes(lines[-1][0]))
    return lines[-1][0]


def cat_file(node: Node, dir_cid: str, name: str) -> str:
    from bacalhau.ipfs.dagpb import decode
    from bacalhau.ipfs.exporter import cat

    links = {link.name: link.cid for link in decode(node.blockstore.get(cid_to_bytes(dir_cid)))[1]}
    return b"".join(cat(links[name], node.blockstore)).decode()


async def api(node: Node, method: str, path: str, body: Any = None, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.api_port}", timeout=30) as client:
        return await client.request(method, path, json=body, params=params or None)


def signed(node: Node, action: Any, key_name: str = "client.key") -> dict[str, Any]:
    """`action` signed for `node`'s cluster by a client: the default one keeps its key where the CLI run with
    BACALHAU_DIR=the node's repo does; another `key_name` is another client."""
    from bacalhau.signing import load_client_key, sign

    state = node.config.repo_dir if key_name == "client.key" else node.config.repo_dir / key_name
    state.mkdir(exist_ok=True)
    return sign(load_client_key(state), action, node.cluster_id)


async def submit(node: Node, cid: str, workflow: str | None, run_id: str | None = None,
                 key_name: str = "client.key", no_cache: bool = False) -> httpx.Response:
    run_id = run_id or str(uuid.uuid4())
    attrs: dict[str, Any] = {"inputs": [{"cid": cid}]}
    if workflow is not None:
        attrs["workflow"] = workflow
    if no_cache:
        attrs["no_cache"] = True
    action = run_action(run_id, cid, workflow, no_cache)
    return await api(node, "PUT", f"/api/v0/queue/{run_id}",
                     {"data": {"attributes": attrs}, **signed(node, action, key_name)})


async def cancel(node: Node, run_id: str, key_name: str = "client.key") -> httpx.Response:
    return await api(node, "POST", f"/api/v0/queue/{run_id}/cancel", signed(node, cancel_action(run_id), key_name))


async def wait_run(node: Node, run_id: str, timeout: float = 90) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            data = (await api(node, "GET", f"/api/v0/queue/{run_id}")).json()["data"]
            if data["meta"]["status"] in ("succeeded", "failed", "cancelled"):
                return data  # type: ignore[no-any-return]
            await trio.sleep(0.2)


def nodes_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["id"]: n["attributes"] for n in data["attributes"]["graph"]}


TWO_LEVELS = wf(f"""
- id: list
  image: {IMAGE}
  entrypoint: [sh, -c, 'ls /inputs > /outputs/list.txt; echo listed']
- id: count
  image: {IMAGE}
  entrypoint: [sh, -c, 'wc -l < /parent/list.txt | tr -d " " > /outputs/count.txt; echo counted']
- id: flaky
  image: {IMAGE}
  entrypoint: [sh, -c, 'echo trying; exit 3']
""", """
- id: list-node
  job_id: list
  inputs: [{node_id: root-node, path: /inputs}]
- id: count-node
  job_id: count
  inputs: [{node_id: list-node, path: /parent, predicate: 'list(ed)+'}]
- id: gated-node
  job_id: count
  inputs: [{node_id: list-node, predicate: '^never$'}, {node_id: list-node, path: /parent}]
- id: after-gated
  job_id: count
  inputs: [{node_id: gated-node, path: /parent}]
- id: flaky-node
  job_id: flaky
  retries: 1
  backoff: 0.1
  inputs: [{node_id: root-node, path: /inputs}]
- id: after-flaky
  job_id: count
  on_parent_failure: fail
  inputs: [{node_id: flaky-node, path: /parent}]
""")


@pytest.mark.docker
@pytest.mark.slow
async def test_a_workflow_of_docker_jobs_passes_cids_down_skips_a_branch_and_retries_a_failing_node(
        single_node: Node, tmp_path: Path) -> None:
    node = single_node
    cid = add_dir(node, tmp_path / "data", {"a.txt": "a", "b.csv": "x,y\n", "c.json": "{}"})
    run_id = str(uuid.uuid4())
    answer = await submit(node, cid, TWO_LEVELS, run_id)
    assert answer.status_code == 202, answer.text
    assert (await submit(node, cid, TWO_LEVELS, run_id)).status_code == 200     # the same run, not a second
    data = await wait_run(node, run_id)
    nodes = nodes_of(data)
    assert nodes["root-node"]["state"] == "succeeded" and nodes["root-node"]["output_cid"] == cid
    assert nodes["list-node"]["state"] == "succeeded", nodes["list-node"]["reason"]
    assert cat_file(node, nodes["list-node"]["output_cid"], "list.txt") == "a.txt\nb.csv\nc.json\n"
    # two levels down: count read what list wrote, through list's output CID
    assert nodes["count-node"]["state"] == "succeeded", nodes["count-node"]
    assert cat_file(node, nodes["count-node"]["output_cid"], "count.txt") == "3\n"
    # the gate's predicate did not match: skipped, and so is its child, neither with a job
    assert nodes["gated-node"]["state"] == "skipped" and "does not match" in nodes["gated-node"]["reason"]
    assert nodes["after-gated"]["state"] == "skipped"
    assert nodes["gated-node"]["jobs"] == [] and nodes["after-gated"]["jobs"] == []
    # retried once, then failed; its child (on_parent_failure: fail) failed without a job
    assert nodes["flaky-node"]["state"] == "failed"
    assert len(nodes["flaky-node"]["jobs"]) == 2 and "exited with code 3" in nodes["flaky-node"]["reason"]
    assert nodes["after-flaky"]["state"] == "failed" and nodes["after-flaky"]["jobs"] == []
    assert data["meta"]["status"] == "failed" and "flaky-node" in data["meta"]["reason"]
    # the jobs are ordinary cluster jobs, labelled with the run
    job = await node.requester.store.get_job(nodes["count-node"]["job_id"])
    assert job.spec.labels == {"amplify": run_id, "amplify-node": "count-node", "amplify-attempt": "1"}
    assert job.client_id == signed(node, "x")["client_id"]      # the run's jobs are its submitter's
    assert job.spec.inputs[0].source == f"ipfs://{nodes['list-node']['output_cid']}"

    # lineage both ways, by CID
    count_out = nodes["count-node"]["output_cid"]
    list_out = nodes["list-node"]["output_cid"]
    up = (await api(node, "GET", f"/api/v0/lineage/{count_out}", direction="up", depth=2)).json()["data"]
    made = up["produced_by"][0]
    assert (made["run_id"], made["node_id"], made["job_id"]) == (run_id, "count-node", job.id)
    assert made["image"] == IMAGE and made["compute_node"] == node.node_id and len(made["spec_hash"]) == 64
    assert made["image_is"] == "name" and made["image_digest"] == ""     # no execution reports a digest
    assert {(e["input"], e["depth"]) for e in up["up"]} >= {(list_out, 1), (cid, 2)}
    down = (await api(node, "GET", f"/api/v0/lineage/{cid}", direction="down", depth=2)).json()["data"]
    assert {(e["output"], e["depth"]) for e in down["down"]} >= {(list_out, 1), (count_out, 2)}
    out = await run_cli(node, "amplify", "lineage", count_out, "--up")
    assert out.returncode == 0 and list_out in out.stdout and "a name: no digest recorded" in out.stdout

    out = await run_cli(node, "amplify", "describe", run_id)
    assert out.returncode == 0 and "count-node" in out.stdout and "skipped" in out.stdout
    listed = await run_cli(node, "amplify", "list")
    assert run_id in listed.stdout and " 100% " in listed.stdout


@pytest.mark.docker
@pytest.mark.slow
async def test_per_file_routing_mounts_only_matching_files_and_skips_a_node_with_none(
        single_node: Node, tmp_path: Path) -> None:
    # content.py (content detection, another engineer's) is stood in for by a selector that keeps the .txt
    # files of a directory as a new directory made of the parent's links
    from bacalhau.ipfs.dagpb import decode
    from bacalhau.ipfs.unixfs import Importer, _Node

    async def select(content: Any, cid: bytes, mime: str) -> bytes | None:
        links = decode(content.blockstore.get(cid))[1]
        keep = [(link.name, _Node(link.cid, link.tsize, 0)) for link in links
                if mime in ("text/*", "text/plain") and link.name.endswith(".txt")]
        if not keep:
            return None
        return Importer(content.blockstore.put).add_dir(keep).cid

    node = single_node
    node.amplify._select = select
    cid = add_dir(node, tmp_path / "data", {"a.txt": "a", "b.csv": "x,y\n", "c.txt": "c"})
    text = wf(f"""
- id: ls
  image: {IMAGE}
  entrypoint: [sh, -c, 'ls /inputs > /outputs/seen']
""", """
- id: texts
  job_id: ls
  when: {mime: 'text/*'}
  inputs: [{node_id: root-node, path: /inputs}]
- id: images
  job_id: ls
  when: {mime: 'image/*'}
  inputs: [{node_id: root-node, path: /inputs}]
""")
    run_id = str(uuid.uuid4())
    assert (await submit(node, cid, text, run_id)).status_code == 202
    data = await wait_run(node, run_id)
    nodes = nodes_of(data)
    assert nodes["texts"]["state"] == "succeeded", nodes["texts"]["reason"]
    assert cat_file(node, nodes["texts"]["output_cid"], "seen") == "a.txt\nc.txt\n"
    assert nodes["images"]["state"] == "skipped" and nodes["images"]["reason"] == "no file matches image/*"
    assert nodes["images"]["jobs"] == []
    assert data["meta"]["status"] == "succeeded"


SLEEPY = wf(f"""
- id: sleep
  image: {IMAGE}
  entrypoint: [sh, -c, 'sleep 60']
""", """
- id: sleeper
  job_id: sleep
  inputs: [{node_id: root-node, path: /inputs}]
""")


@pytest.mark.docker
@pytest.mark.slow
async def test_a_full_queue_answers_429_and_cancelling_a_run_cancels_its_job(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", amplify_max_running=1,
                                                    amplify_max_waiting=1)).run)
        cid = add_dir(node, tmp_path / "data", {"a": "a"})
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        assert (await submit(node, cid, SLEEPY, first)).status_code == 202
        with trio.fail_after(30):
            while nodes_of((await api(node, "GET", f"/api/v0/queue/{first}")).json()["data"])[
                    "sleeper"]["job_id"] == "":
                await trio.sleep(0.1)
        assert (await submit(node, cid, SLEEPY, second)).status_code == 202
        full = await submit(node, cid, SLEEPY)
        assert full.status_code == 429 and "queue is full" in full.json()["error"]
        wf_file = tmp_path / "w.yaml"
        wf_file.write_text(SLEEPY)
        out = await run_cli(node, "amplify", "run", cid, "-f", str(wf_file))
        assert out.returncode == 1 and "queue is full" in out.stderr and "Traceback" not in out.stderr

        job_id = nodes_of((await api(node, "GET", f"/api/v0/queue/{first}")).json()["data"])["sleeper"]["job_id"]
        out = await run_cli(node, "amplify", "cancel", first, env={"BACALHAU_DIR": str(node.config.repo_dir)})
        assert out.returncode == 0, out.stderr
        assert (await node.requester.store.get_job(job_id)).state.value == "cancelled"
        data = (await api(node, "GET", f"/api/v0/queue/{first}")).json()["data"]
        assert data["meta"]["status"] == "cancelled" and nodes_of(data)["sleeper"]["state"] == "cancelled"
        # the waiting run starts in its place
        with trio.fail_after(30):
            while (await api(node, "GET", f"/api/v0/queue/{second}")).json()["data"]["meta"]["status"] != "running":
                await trio.sleep(0.1)
        assert (await cancel(node, second)).status_code == 200
        again = await cancel(node, second)
        assert again.status_code == 409
        nursery.cancel_scope.cancel()


async def test_an_empty_queue_lists_as_200_and_pages_are_counted(single_node: Node) -> None:
    answer = await api(single_node, "GET", "/api/v0/queue")
    assert answer.status_code == 200
    assert answer.json()["data"] == [] and answer.json()["meta"] == {"count": 0, "totalPages": 1}
    missing = await api(single_node, "GET", f"/api/v0/queue/{uuid.uuid4()}")
    assert missing.status_code == 404


async def test_no_amplify_turns_the_engine_off(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", amplify=False)).run)
        assert node.amplify is None
        answer = await api(node, "GET", "/api/v0/queue")
        assert answer.status_code == 503 and "--no-amplify" in answer.json()["error"]
        nursery.cancel_scope.cancel()


def test_node_states_are_the_six_the_issue_names() -> None:
    assert {s.value for s in NodeState} == {"queued", "running", "succeeded", "failed", "skipped", "cancelled"}
    assert cid_str(cid_to_bytes("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn")).startswith("Qm")


@pytest.mark.docker
@pytest.mark.slow
async def test_a_wasm_step_gates_a_docker_step_by_its_stdout(single_node: Node, tmp_path: Path) -> None:
    from bacalhau.executors.wasm import encode_module
    from tests.executors.test_wasm import hello

    node = single_node
    cid = add_dir(node, tmp_path / "data", {"a.txt": "a"})
    module = encode_module(hello("wasm says go\n"))
    text = wf(f"""
- id: say
  engine: wasm
  wasm_module: {module}
- id: ls
  image: {IMAGE}
  entrypoint: [sh, -c, 'ls /inputs']
""", """
- id: wasm-node
  job_id: say
  inputs: [{node_id: root-node, path: /inputs}]
- id: go-node
  job_id: ls
  inputs: [{node_id: wasm-node, predicate: '(?m)says go$'}, {node_id: root-node, path: /inputs}]
- id: stop-node
  job_id: ls
  inputs: [{node_id: wasm-node, predicate: 'says stop'}, {node_id: root-node, path: /inputs}]
""")
    run_id = str(uuid.uuid4())
    assert (await submit(node, cid, text, run_id)).status_code == 202
    nodes = nodes_of(await wait_run(node, run_id))
    assert nodes["wasm-node"]["state"] == "succeeded", nodes["wasm-node"]
    job = await node.requester.store.get_job(nodes["wasm-node"]["job_id"])
    assert job.spec.engine.value == "wasm"
    assert nodes["go-node"]["state"] == "succeeded", nodes["go-node"]
    assert nodes["stop-node"]["state"] == "skipped" and nodes["stop-node"]["jobs"] == []


@pytest.mark.docker
async def test_a_job_submitted_just_before_a_crash_is_found_by_its_labels_not_submitted_again(
        tmp_path: Path) -> None:
    """The window a kill -9 can hit: the attempt is written down, the job submitted, its id not yet written.
    The state is made as that crash leaves it (the job exists, the node row has no job id), then the node starts
    again on the same repo."""
    from bacalhau.amplify.store import NodeState as S
    from bacalhau.models import DockerSpec, JobSpec, StorageSpec

    text = wf(f"""
- id: write
  image: {IMAGE}
  entrypoint: [sh, -c, 'echo made > /outputs/x']
""", """
- id: a
  job_id: write
  inputs: [{node_id: root-node, path: /inputs}]
""")
    run_id = str(uuid.uuid4())
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node")).run)
        cid = add_dir(node, tmp_path / "data", {"a.txt": "a"})
        job = await node.requester.submit(JobSpec(
            docker=DockerSpec(image=IMAGE, entrypoint=["sh", "-c", "echo made > /outputs/x"]),
            inputs=[StorageSpec(source=f"ipfs://{cid}", path="/inputs")],
            labels={"amplify": run_id, "amplify-node": "a", "amplify-attempt": "1"}))
        store = node.amplify.store
        await store.create_run(run_id, cid, text, ["root-node", "a"], 100)
        await store.set_node(run_id, "root-node", S.SUCCEEDED, output_cid=cid)
        await store.set_node(run_id, "a", S.RUNNING, attempt=1, job_id="")
        with trio.fail_after(60):     # let it end here: a job cut short by the restart is the cluster's matter
            while not (await node.requester.store.get_job(job.id)).state.terminal:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node")).run)
        data = await wait_run(node, run_id)
        nodes = nodes_of(data)
        assert data["meta"]["status"] == "succeeded", (data["meta"], nodes["a"]["reason"], nodes["a"]["jobs"])
        assert nodes["a"]["jobs"] == [job.id]           # found, waited for, not submitted again
        assert cat_file(node, nodes["a"]["output_cid"], "x") == "made\n"
        nursery.cancel_scope.cancel()
