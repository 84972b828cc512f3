"""Attacks on Amplify's memo, analytics, triggers and watcher: a step whose stdout is JSON nested past the parser's
depth does not break analytics for everyone; no_cache cannot be slipped into a request signed without it; a
symlink dropped into a watched directory is not uploaded."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from bacalhau.amplify.actions import run_action
from bacalhau.amplify.store import NodeState
from bacalhau.node import Node
from tests.conftest import run_cli
from tests.hostile.test_amplify import api as raw_api
from tests.test_amplify import add_dir, api, signed


async def test_a_step_stdout_nested_past_the_json_parsers_depth_leaves_analytics_answering(
        single_node: Node) -> None:
    store = single_node.amplify.store
    for stdout in ("[" * 200_000, '{"k": ' * 50_000, '{"k": "fine"}'):
        run_id = str(uuid.uuid4())
        await store.create_run(run_id, "QmX", "jobs: []", ["a"], 100)
        await store.set_node(run_id, "a", NodeState.SUCCEEDED, stdout=stdout)
    answer = await api(single_node, "GET", "/api/v0/analytics/results/k")
    assert answer.status_code == 200, answer.text
    assert [(v["attributes"]["value"], v["attributes"]["count"]) for v in answer.json()["data"]] == [("fine", 1)]


async def test_no_cache_added_to_a_request_signed_without_it_is_refused(single_node: Node, tmp_path: Path) -> None:
    cid = add_dir(single_node, tmp_path / "d", {"a": "a"})
    run_id = str(uuid.uuid4())
    body = {"data": {"attributes": {"inputs": [{"cid": cid}], "no_cache": True}},
            **signed(single_node, run_action(run_id, cid, None))}
    answer = await api(single_node, "PUT", f"/api/v0/queue/{run_id}", body)
    assert answer.status_code in (400, 401, 403), answer.text
    assert (await single_node.amplify.store.list_runs(10, 0))[1] == 0
    bad = await api(single_node, "PUT", f"/api/v0/queue/{run_id}",
                    {"data": {"attributes": {"inputs": [{"cid": cid}], "no_cache": "yes"}}})
    assert bad.status_code == 400 and "no_cache" in bad.json()["error"]


async def test_a_symlink_dropped_into_a_watched_directory_is_not_uploaded(single_node: Node, tmp_path: Path) -> None:
    watched = tmp_path / "in"
    watched.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's secret")
    os.symlink(secret, watched / "innocent.txt")
    (watched / "sub").mkdir()
    out = await run_cli(single_node, "amplify", "watch", str(watched), "--once", "--settle", "0",
                        "--interval", "0.1", env={"BACALHAU_DIR": str(tmp_path / "client")})
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and (await single_node.amplify.store.list_runs(10, 0))[1] == 0


async def test_a_run_request_nested_past_the_parsers_depth_gets_one_line_and_a_400(single_node: Node) -> None:
    """JSON or YAML nested deeper than the parsers recurse raised RecursionError, answered as a 500."""
    for body in (b"[" * 100_000, b'{"data": ' * 50_000):
        answer = await raw_api(single_node, "PUT", f"/api/v0/queue/{uuid.uuid4()}", content=body)
        assert answer.status_code == 400, answer.text
        assert "nested" in answer.json()["error"] and "\n" not in answer.json()["error"]
    cid = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    block = "jobs:\n" + "".join(" " * i + "- \n" for i in range(1, 700))     # nested by indentation, under the cap
    for workflow in ("[" * 20_000, "jobs: " + "{b: " * 5_000, block):
        run_id = str(uuid.uuid4())
        body = {"data": {"attributes": {"inputs": [{"cid": cid}], "workflow": workflow}},
                **signed(single_node, run_action(run_id, cid, workflow))}
        answer = await api(single_node, "PUT", f"/api/v0/queue/{run_id}", body)
        assert answer.status_code == 400, answer.text
        assert "nested" in answer.json()["error"] and "\n" not in answer.json()["error"]
    assert (await single_node.amplify.store.list_runs(10, 0))[1] == 0
    assert (await api(single_node, "GET", "/api/v0/queue")).status_code == 200
