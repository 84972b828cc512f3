"""The dashboard's Amplify panel in a real browser (Debian's Chromium through Playwright, as
test_dashboard_browser.py) against a real `bacalhau serve`: a workflow of busybox Docker jobs submitted with
`bacalhau amplify run` appears in the open page, its nodes' states move without a reload, a node's output CID
shows its lineage, and a node run with --no-amplify leaves the panel out. Screenshot: screenshots/amplify.png."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Served
from tests.test_dashboard_browser import Browser, browser  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.slow, pytest.mark.docker]
IMAGE = "bacalhau/busybox:latest"
HOSTILE = "<img src=x onerror=window.__pwned=1>"
WORKFLOW = f"""
jobs:
- id: root-job
  type: internal
- id: list
  image: {IMAGE}
  entrypoint: [sh, -c, 'sleep 3; ls /inputs > /outputs/list.txt; echo listed']
- id: count
  image: {IMAGE}
  entrypoint: [sh, -c, 'wc -l < /parent/list.txt > /outputs/count.txt']
graph:
- id: root-node
  job_id: root-job
  inputs: [{{root: true}}]
- id: list-node
  job_id: list
  inputs: [{{node_id: root-node, path: /inputs}}]
- id: count-node
  job_id: count
  inputs: [{{node_id: list-node, path: /parent}}]
- id: gated-node
  job_id: count
  inputs: [{{node_id: list-node, predicate: '{HOSTILE}'}}, {{node_id: list-node, path: /parent}}]
"""
STATE = "([run, node]) => document.querySelector(`#amplify [data-run='${run}'] g[data-node='${node}']`)?.dataset.state"


def test_the_amplify_panel_follows_a_run_live_and_shows_a_cids_lineage(served: Callable[..., Served],
                                                                        browser: Browser,  # noqa: F811
                                                                        tmp_path: Path) -> None:
    node = served("amp", "--labels", "name=amp").start()
    off = served("off", "--no-amplify", "--labels", "name=off").start()
    node.wait_ready()
    off.wait_ready()
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (data / name).write_text(name)
    added = node.cli("ipfs", "add", "-q", "-r", str(data))
    assert added.returncode == 0, added.stderr
    cid = added.stdout.strip().splitlines()[-1]

    page = browser.page()
    page.goto(f"http://127.0.0.1:{node.api_port}/dashboard")
    page.evaluate("window.__loaded = 1")            # still set at the end: the page was never reloaded
    page.wait_for_function("() => !document.getElementById('amplify').hidden && "
                           "document.getElementById('amplify-runs').textContent.includes('No run yet')", timeout=10_000)

    wf_file = tmp_path / "wf.yaml"
    wf_file.write_text(WORKFLOW)
    run_id = str(uuid.uuid4())
    out = node.cli("amplify", "run", cid, "-f", str(wf_file), "--id", run_id)
    assert out.returncode == 0, out.stderr

    # the run appears with its list step still going (it sleeps 3 s), then ends, in the same page
    page.wait_for_function(f"(a) => ['queued', 'running'].includes(({STATE})(a))", arg=[run_id, "list-node"],
                           timeout=30_000)
    assert page.evaluate(STATE, [run_id, "count-node"]) == "queued"
    page.wait_for_function(f"() => document.querySelector(`#amplify [data-run='{run_id}']`).dataset.status "
                           "!== 'running'", timeout=60_000)
    run = node.client().request("GET", f"/api/v0/queue/{run_id}")["data"]
    graph = {n["id"]: n["attributes"] for n in run["attributes"]["graph"]}
    assert graph["count-node"]["state"] == "succeeded", graph
    shown = {n: page.evaluate(STATE, [run_id, n]) for n in graph}
    assert shown == {n: a["state"] for n, a in graph.items()}           # every node, as the API says
    assert shown["gated-node"] == "skipped"
    assert page.get_attribute(f"#amplify [data-run='{run_id}']", "data-status") == run["meta"]["status"]
    # the skip's reason names the hostile predicate: shown as text, never run as markup
    reason = page.text_content(f"#amplify [data-run='{run_id}'] tr[data-node='gated-node']")
    assert HOSTILE in str(reason)
    assert page.evaluate("window.__pwned") is None and page.query_selector("#amplify img") is None

    # a node's output CID, clicked, shows what it was made from (two levels up: list's output, then the input)
    list_out, count_out = graph["list-node"]["output_cid"], graph["count-node"]["output_cid"]
    page.click(f"#amplify [data-run='{run_id}'] tr[data-node='count-node'] a.cid")
    page.wait_for_function(f"() => document.getElementById('lineage-out').dataset.cid === '{count_out}'",
                           timeout=5_000)
    lineage = page.text_content("#lineage-out") or ""
    assert "count-node" in lineage and IMAGE in lineage
    assert page.query_selector(f"#lineage-out tr[data-cid='{list_out}'][data-depth='1']") is not None
    assert page.query_selector(f"#lineage-out tr[data-cid='{cid}'][data-depth='2']") is not None
    assert page.evaluate("window.__loaded") == 1
    browser.shot(page, "amplify.png")

    # a node without Amplify leaves the panel out, and asks nothing of /api/v0
    asked: list[str] = []
    other = browser.page()
    other.on("request", lambda r: asked.append(r.url) if "/api/v0" in r.url else None)
    other.goto(f"http://127.0.0.1:{off.api_port}/dashboard")
    other.wait_for_function("() => document.getElementById('live').textContent === 'live'", timeout=10_000)
    assert other.is_hidden("#amplify") and asked == []
    assert browser.errors == []
    assert browser.off_machine == []
