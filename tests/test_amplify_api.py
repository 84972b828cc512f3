"""Amplify's /api/v0 beyond the queue: the default workflow's jobs, the commonest values of a key in the steps'
JSON stdout (typed), runs and node results per hour (oldest first); each empty list is a 200. Lineage says the
image it records is a name."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from bacalhau.amplify.store import NodeState
from bacalhau.node import Node
from tests.test_amplify import api


async def test_jobs_and_analytics_answer_200_empty_then_typed_values_and_hourly_counts(single_node: Node) -> None:
    node = single_node
    for path in ("/api/v0/analytics/results/n", "/api/v0/analytics/metrics-over-time/submissions",
                 "/api/v0/analytics/metrics-over-time/node-results"):
        answer = await api(node, "GET", path)
        assert answer.status_code == 200 and answer.json()["data"] == [], (path, answer.text)

    jobs = (await api(node, "GET", "/api/v0/jobs")).json()["data"]
    assert jobs and jobs[0]["type"] == "Job"
    one = await api(node, "GET", f"/api/v0/jobs/{jobs[-1]['id']}")
    assert one.status_code == 200 and one.json()["data"]["attributes"] == jobs[-1]["attributes"]
    assert (await api(node, "GET", "/api/v0/jobs/no-such-job")).status_code == 404

    store = node.amplify.store
    hours = {datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:00:00Z")}     # the runs' hour (or
    outputs = ['{"n": 1, "mime": {"type": "text/plain"}}', '{"n": "1"}', '{"n": true}',
               '{"n": 1}\nnot json\n{"n": 1.5}\n{"other": 2}', "plain text, no JSON", '{"n": 1}']
    for i, stdout in enumerate(outputs):
        run_id = str(uuid.uuid4())
        await store.create_run(run_id, "QmX", "jobs: []", ["a", "b"], 100)
        await store.set_node(run_id, "a", NodeState.SUCCEEDED, stdout=stdout)
        await store.set_node(run_id, "b", NodeState.FAILED if i % 2 else NodeState.SKIPPED, reason="x")

    values = (await api(node, "GET", "/api/v0/analytics/results/n")).json()["data"]
    got = [(v["attributes"]["value"], v["attributes"]["count"]) for v in values]
    assert got[0] == (1, 3) and ("1", 1) in got and (True, 1) in got and (1.5, 1) in got and len(got) == 4
    assert [type(v) for v, _ in got if v == 1] == [int, bool]       # typed: 1 and true are apart, not strings
    nested = (await api(node, "GET", "/api/v0/analytics/results/mime.type")).json()["data"]
    assert [(v["attributes"]["value"], v["attributes"]["count"]) for v in nested] == [("text/plain", 1)]
    top = (await api(node, "GET", "/api/v0/analytics/results/n", **{"page[size]": 1})).json()["data"]
    assert len(top) == 1

    hours.add(datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:00:00Z"))  # the next, at the turn)
    subs = (await api(node, "GET", "/api/v0/analytics/metrics-over-time/submissions")).json()["data"]
    assert {p["id"] for p in subs} <= hours and sum(p["attributes"]["count"] for p in subs) == len(outputs)
    results = (await api(node, "GET", "/api/v0/analytics/metrics-over-time/node-results")).json()["data"]
    assert [p["id"] for p in results] == sorted(p["id"] for p in results)           # ISO order, oldest first
    states: dict[str, int] = {}
    for p in results:
        for state, n in p["attributes"]["states"].items():
            states[state] = states.get(state, 0) + n
    assert states == {"succeeded": 6, "failed": 3, "skipped": 3}
    assert (await api(node, "GET", "/api/v0/analytics/metrics-over-time/everything")).status_code == 404
    assert (await api(node, "GET", "/api/v0/analytics/metrics-over-time/submissions", hours="0")).status_code == 400
