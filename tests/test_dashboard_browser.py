"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright (scripts/setup-dashboard.sh),
against real `bacalhau serve` processes. Screenshots go to the test's tmp dir, under screenshots/:

    dashboard-start.png       the page on the first node, the three nodes listed, no job yet
    dashboard-jobs.png        after Docker, WASM and noop jobs (two failing) on two requesters
    job-page.png              a Docker job's page, its logs streamed while it ran, then its end
    dashboard-node-gone.png   the node list after the compute-only node was killed
"""

from __future__ import annotations

import base64
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.conftest import Served, join_args

pytestmark = [pytest.mark.slow, pytest.mark.docker]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
LIVE = 2000          # ms: the page shows a job's end within this of the job's end
NODE_TTL = 5.0       # serve's default: a node not heard of for this long is gone
TERMINAL = ("completed", "failed", "cancelled")


class Browser:
    def __init__(self, context: Any, shots: Path) -> None:
        self.context = context
        self.shots = shots
        self.errors: list[str] = []
        self.off_machine: list[str] = []

    def page(self) -> Any:
        page = self.context.new_page()
        page.on("console", lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        return page

    def shot(self, page: Any, name: str) -> Path:
        path = self.shots / name
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "no chromium on this machine: run scripts/setup-dashboard.sh"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        context = b.new_context(viewport={"width": 1400, "height": 1000})
        out = Browser(context, shots)

        def only_this_machine(route: Any) -> None:
            url = route.request.url
            if url.startswith("data:") or urlparse(url).hostname in ("127.0.0.1", "localhost"):
                route.continue_()
            else:
                out.off_machine.append(url)
                route.abort()

        context.route("**/*", only_this_machine)
        yield out
        context.close()
        b.close()


def cluster(served: Callable[..., Served]) -> tuple[Served, Served, Served]:
    n1 = served("n1", "--labels", "name=n1").start()
    peer, key = join_args(n1.wait_ready())
    n2 = served("n2", "--peer", peer, "--swarm-key", key, "--labels", "name=n2").start()
    n3 = served("n3", "--node-type", "compute", "--peer", peer, "--swarm-key", key, "--labels", "name=n3").start()
    n2.wait_ready()
    n3.wait_ready()
    return n1, n2, n3


def wasm_hello(text: str) -> str:
    import wasmtime

    wasi = ('(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))')
    data = "".join("\\%02x" % b for b in text.encode())
    wat = f"""(module {wasi}
      (memory (export "memory") 1)
      (data (i32.const 16) "{data}")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const {len(text)}))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""
    return "base64:" + base64.b64encode(wasmtime.wat2wasm(wat)).decode()


def wait_end(node: Served, job_id: str, timeout: float = 90) -> str:
    client = node.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = str(client.job(job_id)["state"])
        if state in TERMINAL:
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end: {client.job(job_id)}")


def node_id_of(node: Served, name: str) -> str:
    return next(n["node_id"] for n in node.client().nodes() if n["labels"].get("name") == name)


def tile(page: Any, key: str) -> str:
    return str(page.text_content(f"#t-{key}")).strip()


def test_the_open_page_follows_jobs_on_every_requester_and_nodes_leaving(served: Callable[..., Served],
                                                                         browser: Browser) -> None:
    n1, n2, n3 = cluster(served)
    page = browser.page()
    page.goto(f"http://127.0.0.1:{n1.api_port}/dashboard")
    page.wait_for_function("() => document.getElementById('live').textContent === 'live'", timeout=10_000)
    page.wait_for_function("() => document.querySelectorAll('#nodes tr[data-node]').length === 3", timeout=20_000)
    browser.shot(page, "dashboard-start.png")

    hostile = "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>"
    jobs: list[tuple[Served, dict[str, Any], str]] = [
        (n1, {"engine": "noop", "noop": {"stdout": "hi"}, "labels": {"kind": "noop"}}, "completed"),
        (n2, {"engine": "docker", "docker": {"image": "bacalhau/busybox:latest", "entrypoint": ["echo", "hi"]},
              "labels": {"kind": "docker"}}, "completed"),
        (n2, {"engine": "wasm", "wasm": {"module": wasm_hello("hello wasm\n")}, "labels": {"kind": "wasm"}},
         "completed"),
        (n1, {"engine": "noop", "noop": {"sleep": 30}, "timeout": 0.5, "labels": {"kind": "noop"}}, "failed"),
        (n2, {"engine": "docker", "docker": {"image": "bacalhau/busybox:latest", "entrypoint": ["sleep", "30"]},
              "timeout": 1, "labels": {"kind": hostile}}, "failed"),
    ]
    done = {"completed": 0, "failed": 0}
    for i, (node, spec, expected) in enumerate(jobs, start=1):
        job_id = node.client().submit(spec)
        assert wait_end(node, job_id) == expected, node.client().job(job_id)
        done[expected] += 1
        # the page on n1, not reloaded, shows it within LIVE ms of its end, whichever requester ran it
        page.wait_for_function(
            """([id, st, n, c, f]) => {
                 const r = document.querySelector(`#latest tr[data-job="${id}"]`);
                 const t = (k) => document.getElementById('t-' + k).textContent;
                 return r && r.dataset.state === st && t('jobs') === n && t('completed') === c && t('failed') === f;
               }""", arg=[job_id, expected, str(i), str(done["completed"]), str(done["failed"])], timeout=LIVE)

    engines = {r.get_attribute("data-key"): r.inner_text() for r in page.query_selector_all("#b-engine tr")}
    assert set(engines) == {"noop", "docker", "wasm"} and all(v.split()[1] == "2" for k, v in engines.items()
                                                               if k != "wasm"), engines
    states = {r.get_attribute("data-key"): r.inner_text().split()[1] for r in page.query_selector_all("#b-state tr")}
    assert states == {"completed": "3", "failed": "2"}
    assert len(page.query_selector_all("#b-reason tr")) >= 1
    assert page.query_selector(f'#b-label tr[data-key="kind={hostile}"]') is not None   # shown as text
    assert page.evaluate("window.__pwned") is None                                      # never run
    assert page.query_selector("#latest img") is None
    assert {r.get_attribute("data-engine") for r in page.query_selector_all("#durations tr[data-engine]")} == \
        {"noop", "docker", "wasm"}
    assert int(page.get_attribute("#chart", "data-total") or 0) == 5
    assert page.is_visible("#amplify")         # n1 runs Amplify (test_dashboard_amplify.py: the panel)
    browser.shot(page, "dashboard-jobs.png")

    # a job's page streams its logs while it runs
    spec = {"engine": "docker", "docker": {"image": "bacalhau/busybox:latest", "entrypoint":
            ["sh", "-c", "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.5; done"]}}
    job_id = n1.client().submit(spec)
    jp = browser.page()
    jp.goto(f"http://127.0.0.1:{n1.api_port}/dashboard/jobs/{job_id}")
    jp.wait_for_function("() => document.getElementById('job-stdout').textContent.includes('line1')", timeout=30_000)
    assert n1.client().job(job_id)["state"] not in TERMINAL      # live: seen before the job ended
    jp.wait_for_function("() => document.getElementById('job-logs-state').textContent.startsWith('ended')", timeout=30_000)
    assert "line6" in str(jp.text_content("#job-stdout"))
    jp.wait_for_function("() => document.getElementById('job-info').dataset.state === 'completed'", timeout=LIVE + 3000)
    assert '"bacalhau/busybox:latest"' in str(jp.text_content("#job-spec"))
    browser.shot(jp, "job-page.png")

    # a node killed leaves the live list within its gossip TTL
    gone = node_id_of(n1, "n3")
    n3.stop(signal.SIGKILL)
    killed = time.monotonic()
    page.wait_for_function(f"() => !document.querySelector('#nodes tr[data-node=\"{gone}\"]')",
                           timeout=(NODE_TTL + 3) * 1000)
    assert time.monotonic() - killed <= NODE_TTL + 3
    assert tile(page, "nodes") == "2"
    browser.shot(page, "dashboard-node-gone.png")
    assert browser.errors == []
    assert browser.off_machine == []
