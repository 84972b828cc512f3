"""Amplify as an attacker uses it: workflows built to hang the engine (a cycle, a YAML alias bomb, a huge file,
a predicate with catastrophic backtracking), mount paths that climb out of the job's directories, ids that are
paths, run requests with bodies, ids, CIDs and pages out of bounds, and a race on one run id."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import trio

from bacalhau.amplify.actions import cancel_action, run_action
from bacalhau.amplify.workflow import WorkflowError, parse_workflow, predicate_matches
from bacalhau.node import Node
from tests.test_amplify import signed

IMAGE = "bacalhau/busybox:latest"
CID = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"   # the empty directory


def wf(graph: str, jobs: str = "") -> str:
    return (f"jobs:\n- id: root-job\n  type: internal\n- id: sh\n  image: {IMAGE}\n{jobs}"
            f"graph:\n- id: root-node\n  job_id: root-job\n  inputs: [{{root: true}}]\n{graph}")


CYCLE = wf("- id: a\n  job_id: sh\n  inputs: [{node_id: root-node, path: /r}, {node_id: c, path: /c}]\n"
           "- id: b\n  job_id: sh\n  inputs: [{node_id: a, path: /a}]\n"
           "- id: c\n  job_id: sh\n  inputs: [{node_id: b, path: /b}]\n")


async def api(node: Node, method: str, path: str, body: Any = None, content: bytes | None = None,
              **params: Any) -> httpx.Response:
    headers = {"Content-Type": "application/json"} if content is not None else None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.api_port}", timeout=30) as client:
        return await client.request(method, path, json=body, content=content, headers=headers,
                                    params=params or None)


def put_body(workflow: str | None = None, cid: str = CID) -> dict[str, Any]:
    attrs: dict[str, Any] = {"inputs": [{"cid": cid}]}
    if workflow is not None:
        attrs["workflow"] = workflow
    return {"data": {"attributes": attrs}}


def signed_put(node: Node, run_id: str, workflow: str | None = None, cid: str = CID,
               key_name: str = "client.key") -> dict[str, Any]:
    return {**put_body(workflow, cid), **signed(node, run_action(run_id, cid, workflow), key_name)}


async def parse_in_thread(text: str) -> WorkflowError:
    """parse_workflow off the event loop, given 5 s: a parser that hangs fails the test instead of it."""
    def parse() -> WorkflowError:
        try:
            parse_workflow(text)
        except WorkflowError as exc:
            return exc
        raise AssertionError("the workflow was accepted")

    with trio.fail_after(5):
        return await trio.to_thread.run_sync(parse, abandon_on_cancel=True)


async def test_a_cycle_is_refused_at_submit_naming_a_node_and_the_engine_goes_on(single_node: Node) -> None:
    with trio.fail_after(10):     # the original's graph builder looped for ever on a cycle
        run_id = str(uuid.uuid4())
        answer = await api(single_node, "PUT", f"/api/v0/queue/{run_id}", signed_put(single_node, run_id, CYCLE))
    assert answer.status_code == 400
    assert "in a cycle (a <- c <- b <- a)" in answer.json()["error"]
    listed = await api(single_node, "GET", "/api/v0/queue")
    assert listed.status_code == 200 and listed.json()["data"] == []


async def test_a_yaml_alias_bomb_is_refused_before_it_expands() -> None:
    # 100 KiB of text that is 100 jobs of 1024 parameters of 100 KiB each once aliases are expanded: 10 GiB of
    # job specs (a naive loader shares the strings, then checking and submitting them takes for ever)
    value = "v" * 100 * 1024
    text = (f"x-value: &v {value}\nx-params: &p [{', '.join(['*v'] * 1024)}]\njobs:\n- id: root-job\n"
            "  type: internal\n" + "".join(f"- id: j{i}\n  image: {IMAGE}\n  parameters: *p\n" for i in range(100))
            + "graph:\n- id: root-node\n  job_id: root-job\n  inputs: [{root: true}]\n")
    assert len(text) < 256 * 1024
    err = await parse_in_thread(text)
    assert "YAML aliases (*name) are not allowed" in str(err) and "line 2" in str(err)


async def test_a_huge_workflow_is_refused_by_its_size_and_a_huge_graph_by_its_count(single_node: Node) -> None:
    huge = wf("".join(f"- id: n{i}\n  job_id: sh\n  inputs: [{{node_id: root-node, path: /i}}]\n"
                      for i in range(6000)))
    assert len(huge) > 256 * 1024
    run_id = str(uuid.uuid4())
    answer = await api(single_node, "PUT", f"/api/v0/queue/{run_id}", signed_put(single_node, run_id, huge))
    assert answer.status_code == 400 and "over the 262144 a workflow may be" in answer.json()["error"]
    many = wf("".join(f"- id: n{i}\n  job_id: sh\n  inputs: [{{node_id: root-node, path: /i}}]\n"
                      for i in range(300)))
    err = await parse_in_thread(many)
    assert "graph" in str(err) and "at most 200" in str(err)


async def test_a_predicate_with_catastrophic_backtracking_matches_in_linear_time() -> None:
    stdout = "a" * 64 * 1024 + "!"            # what a parent's stdout may hold (64 KiB are kept)
    with trio.fail_after(5):                  # Python's re takes 2**n steps on this: it would never end
        matched = await trio.to_thread.run_sync(predicate_matches, "(a+)+$", stdout, abandon_on_cancel=True)
    assert matched is False
    with trio.fail_after(5):
        matched = await trio.to_thread.run_sync(predicate_matches, "(a|aa)+!", stdout, abandon_on_cancel=True)
    assert matched is True


async def test_a_backreference_predicate_is_refused_at_load_naming_the_node() -> None:
    err = await parse_in_thread(wf("- id: gate\n  job_id: sh\n  inputs: [{node_id: root-node, path: /i, "
                                   "predicate: '(a*)*\\1$'}]\n"))
    assert str(err).startswith("workflow: node gate inputs.0.predicate: predicate")


@pytest.mark.parametrize("path", ["/inputs/../../etc", "../../etc", "/", "//etc", "/inputs/./x", "inputs",
                                  "/in\x00puts", "/a//b", "/outputs", "/outputs/x", "/outputs/"])
async def test_a_mount_path_that_climbs_or_is_not_plain_is_refused_naming_the_node(path: str) -> None:
    text = wf(f"- id: climber\n  job_id: sh\n  inputs: [{{node_id: root-node, path: {path!r}}}]\n"
              .replace("'", '"'))
    err = await parse_in_thread(text)
    assert "node climber" in str(err) and "path" in str(err), str(err)


async def test_an_output_path_other_than_outputs_is_refused() -> None:
    err = await parse_in_thread(wf("- id: w\n  job_id: sh\n  inputs: [{node_id: root-node, path: /i}]\n"
                                   "  outputs: [{path: /etc}]\n"))
    assert "node w outputs.0.path" in str(err) and "/outputs" in str(err)


@pytest.mark.parametrize("bad_id", ["../../x", "a b", "a\nb", "", "x" * 65])
async def test_a_node_id_that_is_not_a_plain_name_is_refused(bad_id: str) -> None:
    err = await parse_in_thread(wf(f"- id: {bad_id!r}\n  job_id: sh\n  inputs: [{{node_id: root-node, path: /i}}]\n"
                                   .replace("'", '"')))
    assert "id" in str(err)


async def test_run_requests_out_of_bounds_get_one_line_and_a_4xx(single_node: Node) -> None:
    node = single_node
    ids = [str(uuid.uuid4()) for _ in range(3)]
    cases = [
        ("PUT", "/api/v0/queue/1%27%3B%20DROP%20TABLE%20runs", put_body(), 400, "is not a UUID"),
        ("PUT", f"/api/v0/queue/{uuid.uuid4()}", put_body(cid="../../etc/passwd"), 400, "is not a sha2-256 CID"),
        ("PUT", f"/api/v0/queue/{uuid.uuid4()}", {"data": {"attributes": {"inputs": [{"cid": CID}] * 2}}}, 400,
         "exactly one"),
        ("PUT", f"/api/v0/queue/{uuid.uuid4()}", [1, 2], 400, "the body must be"),
        ("PUT", f"/api/v0/queue/{ids[0]}", signed_put(node, ids[0], "jobs: [1"), 400, "is not YAML"),
        ("PUT", f"/api/v0/queue/{ids[1]}", put_body(), 400, "the request is not signed"),
        ("GET", "/api/v0/queue?page[size]=1000000", None, 400, "page[size] must be between 1 and 100"),
        ("GET", "/api/v0/queue?page[number]=x", None, 400, "whole number"),
        ("GET", f"/api/v0/lineage/{CID}?depth=1000", None, 400, "depth must be between 1 and 20"),
        ("GET", "/api/v0/lineage/QmNotACid", None, 400, "is not a sha2-256 CID"),
        ("POST", f"/api/v0/queue/{ids[2]}/cancel", signed(node, cancel_action(ids[2])), 404, "no amplify run"),
    ]
    for method, path, body, status, text in cases:
        answer = await api(node, method, path, body)
        assert answer.status_code == status, (path, answer.text)
        assert text in answer.json()["error"], (path, answer.text)
        assert "\n" not in answer.json()["error"]
    big = b'{"data": {"attributes": {"inputs": [{"cid": "' + b"Q" * (600 * 1024) + b'"}]}}}'
    answer = await api(node, "PUT", f"/api/v0/queue/{uuid.uuid4()}", content=big)
    assert answer.status_code in (400, 413) and "over" in answer.json()["error"]
    assert (await api(node, "GET", "/api/v0/queue")).json()["meta"]["count"] == 0


async def test_one_run_id_raced_by_two_requests_is_one_run_and_another_cid_under_it_is_refused(
        single_node: Node) -> None:
    node = single_node
    run_id = str(uuid.uuid4())
    statuses: list[int] = []
    text = wf("- id: a\n  job_id: sh\n  inputs: [{node_id: root-node, path: /i}]\n")

    async def put() -> None:
        statuses.append((await api(node, "PUT", f"/api/v0/queue/{run_id}", signed_put(node, run_id, text))).status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(put)
    assert sorted(statuses) == [200, 200, 200, 202]
    other = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
    conflict = await api(node, "PUT", f"/api/v0/queue/{run_id}", signed_put(node, run_id, text, other))
    assert conflict.status_code == 409 and "another CID" in conflict.json()["error"]
    assert (await api(node, "GET", "/api/v0/queue")).json()["meta"]["count"] == 1
    await api(node, "POST", f"/api/v0/queue/{run_id}/cancel", signed(node, cancel_action(run_id)))


async def test_only_the_client_that_requested_a_run_cancels_it_and_a_signature_is_used_once(
        single_node: Node) -> None:
    node = single_node
    run_id = str(uuid.uuid4())
    text = wf("- id: a\n  job_id: nap\n  inputs: [{node_id: root-node, path: /i}]\n",
              f"- id: nap\n  image: {IMAGE}\n  entrypoint: [sh, -c, 'sleep 60']\n")   # still running at the cancel
    body = signed_put(node, run_id, text)
    assert (await api(node, "PUT", f"/api/v0/queue/{run_id}", body)).status_code == 202
    replayed = await api(node, "PUT", f"/api/v0/queue/{run_id}", body)
    assert replayed.status_code in (400, 409) and "already used once" in replayed.json()["error"]
    taken = await api(node, "PUT", f"/api/v0/queue/{run_id}", signed_put(node, run_id, text, key_name="other.key"))
    assert taken.status_code == 409 and "another client" in taken.json()["error"]
    other = await api(node, "POST", f"/api/v0/queue/{run_id}/cancel",
                      signed(node, cancel_action(run_id), "other.key"))
    assert other.status_code == 403 and "only the client" in other.json()["error"]
    # a signature for another run's request does not pass for this one
    stolen = signed(node, cancel_action(str(uuid.uuid4())))
    assert (await api(node, "POST", f"/api/v0/queue/{run_id}/cancel", stolen)).status_code == 400
    mine = await api(node, "POST", f"/api/v0/queue/{run_id}/cancel", signed(node, cancel_action(run_id)))
    assert mine.status_code == 200 and mine.json()["data"]["meta"]["status"] == "cancelled"
