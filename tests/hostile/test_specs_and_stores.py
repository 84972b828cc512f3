"""Hostile specs and damaged stores: a job spec with NaN, Infinity, huge, negative or malformed values is
refused with one line (a 400 from the API), and a row that does not parse in jobs.db or compute.db is set
aside so the node starts again and serves. Each test is the attack that bricked or crashed a node before."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from bacalhau.cli.client import ApiClient
from bacalhau.compute.store import ExecutionStore
from bacalhau.errors import StateError
from bacalhau.models import JobSpec, Resources
from bacalhau.models.resources import parse_cpu, parse_size
from bacalhau.node import Node
from bacalhau.requester.store import MIGRATIONS as JOBS_DB_MIGRATIONS
from bacalhau.requester.store import JobStore
from bacalhau.signing import load_or_create_client_key, sign
from tests.conftest import run_cli

TERMINAL = ("completed", "failed", "cancelled")


def cluster_of(port: int) -> str:
    """The cluster id signatures must name (GET /api/v1/id)."""
    from bacalhau.cli.client import ApiClient

    return str(ApiClient("127.0.0.1", port).node_id()["cluster_id"])


def post_spec(port: int, spec_text: str, key: Any, *, signed: bool = True) -> tuple[int, dict[str, Any]]:
    """POST a job whose spec is raw JSON text (NaN and Infinity literals included), signed as the CLI signs."""
    import http.client

    body = '{"spec": ' + spec_text
    if signed:
        try:
            spec = json.loads(spec_text)
        except ValueError:
            spec = None
        for k, v in sign(key, {"submit": spec}, cluster_of(port)).items():
            body += f", {json.dumps(k)}: {json.dumps(v)}"
    body += "}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/api/v1/jobs", body=body.encode("utf-8", "surrogatepass"),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data)


# -- specs --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1", "-0.5m", "1025",
                                   float("nan"), float("inf"), 10**400, -3, True, None, [1], {"a": 1}])
def test_cpu_that_is_not_a_finite_bounded_amount_is_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_cpu(value)
    with pytest.raises(ValueError):
        Resources(cpu=value)


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "-1", "2Pi", "2 PiB", "9" * 400, float("nan"),
                                   float("inf"), 10**400, -1, 2 * 1024**5, True, [1]])
def test_memory_that_is_not_a_finite_bounded_size_is_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)
    with pytest.raises(ValueError):
        Resources(memory=value)


BAD_SPECS = {
    "cpu NaN": '{"engine": "noop", "resources": {"cpu": NaN}}',
    "memory Infinity": '{"engine": "noop", "resources": {"memory": Infinity}}',
    "cpu string nan": '{"engine": "noop", "resources": {"cpu": "nan"}}',
    "cpu 1e999": '{"engine": "noop", "resources": {"cpu": "1e999"}}',
    "cpu list": '{"engine": "noop", "resources": {"cpu": [1]}}',
    "memory object": '{"engine": "noop", "resources": {"memory": {"a": 1}}}',
    "memory huge int": '{"engine": "noop", "resources": {"memory": 1' + "0" * 400 + "}}",
    "timeout NaN": '{"engine": "noop", "timeout": NaN}',
    "timeout -Infinity": '{"engine": "noop", "timeout": -Infinity}',
    "timeout over a year": '{"engine": "noop", "timeout": 40000000}',
    "backoff NaN": '{"engine": "noop", "retry": {"backoff": NaN}}',
    "backoff over a day": '{"engine": "noop", "retry": {"backoff": 90000}}',
    "backoff negative": '{"engine": "noop", "retry": {"backoff": -1}}',
    "max_attempts huge": '{"engine": "noop", "retry": {"max_attempts": 1000000}}',
    "noop sleep NaN": '{"engine": "noop", "noop": {"sleep": NaN}}',
    "noop sleep Infinity": '{"engine": "noop", "noop": {"sleep": Infinity}}',
    "noop sleep negative": '{"engine": "noop", "noop": {"sleep": -1}}',
    "exit code 256": '{"engine": "noop", "noop": {"exit_code": 256}}',
    "exit code negative": '{"engine": "noop", "noop": {"exit_code": -1}}',
    "concurrency 101": '{"engine": "noop", "concurrency": 101}',
    "image NUL": '{"engine": "docker", "docker": {"image": "busybox\\u0000"}}',
    "image 2000 chars": '{"engine": "docker", "docker": {"image": "' + "a" * 2000 + '"}}',
    "2000 parameters": '{"engine": "docker", "docker": {"image": "b", "parameters": ' + json.dumps(["x"] * 2000) + "}}",
    "300 env": '{"engine": "docker", "docker": {"image": "b", "env": '
               + json.dumps({f"K{i}": "v" for i in range(300)}) + "}}",
    "label lone surrogate": '{"engine": "noop", "labels": {"\\ud800": "x"}}',
    "label key with a newline": '{"engine": "noop", "labels": {"a\\nb\\u2028c": "\\u0000"}}',
    "300 labels": '{"engine": "noop", "labels": ' + json.dumps({f"k{i}": "v" for i in range(300)}) + "}",
    "100 inputs": '{"engine": "noop", "inputs": '
                  + json.dumps([{"source": "https://x/", "path": f"/i{i}"} for i in range(100)]) + "}",
}


async def test_nan_infinity_huge_and_negative_specs_get_a_400_and_the_node_goes_on(single_node: Node) -> None:
    assert single_node.api_port is not None
    key = await trio.to_thread.run_sync(load_or_create_client_key, single_node.config.repo_dir / "client.key")
    for name, text in BAD_SPECS.items():
        status, body = await trio.to_thread.run_sync(post_spec, single_node.api_port, text, key)
        assert status == 400, (name, status, body)
        assert body["code"] == "invalid_spec", (name, body)
        assert "\n" not in body["error"] and len(body["error"]) < 400, (name, body)
    assert await single_node.requester.store.list_jobs(None) == []     # nothing bad was stored
    # the node still takes and runs a good job
    status, body = await trio.to_thread.run_sync(
        post_spec, single_node.api_port, '{"engine": "noop", "noop": {"stdout": "ok"}}', key)
    assert status == 201, body
    with trio.fail_after(20):
        while (job := await single_node.requester.store.get_job(body["id"])).state.value not in TERMINAL:
            await single_node.requester.wait_for_change(body["id"], 1)
    assert job.state.value == "completed", job.reason


@pytest.mark.parametrize("args", [
    ("--cpu", "nan"), ("--cpu", "inf"), ("--cpu", "1e999"), ("--cpu", "-1"), ("--memory", "nan"),
    ("--memory", "1e999"), ("--timeout", "nan"), ("--timeout", "inf"), ("--timeout", "-5"),
])
async def test_cli_refuses_nan_and_infinity_in_one_line(single_node: Node, args: tuple[str, ...]) -> None:
    out = await run_cli(single_node, "docker", "run", *args, "bacalhau/busybox", "--", "true")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert await single_node.requester.store.list_jobs(None) == []


# -- stores -------------------------------------------------------------------------------------------------

def _insert_job(db: Path, job_id: str, spec: str, state: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO jobs(id, spec, state, reason, client_id, created_at, updated_at)"
                     " VALUES (?,?,?,?,?,?,?)", (job_id, spec, state, "", "", time.time(), time.time()))


def _wait_state(client: ApiClient, job_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (job := client.job(job_id))["state"] not in TERMINAL and time.monotonic() < deadline:
        client.wait(job_id, since=time.time(), timeout=2)
    return job


@pytest.mark.slow
def test_broken_rows_in_jobs_db_and_compute_db_are_set_aside_and_the_node_starts_again(served) -> None:  # type: ignore[no-untyped-def]
    node = served().start()
    node.wait_ready()
    client = node.client()
    good = client.submit({"engine": "noop", "noop": {"stdout": "before"}})
    assert _wait_state(client, good)["state"] == "completed"
    node_id = client.node_id()["id"]
    assert node.stop(signal.SIGTERM) == 0

    jobs_db, compute_db = node.repo / "jobs.db", node.repo / "compute.db"
    nan_job, not_json, odd_state, bad_exec_job = (str(uuid.uuid4()) for _ in range(4))
    # what `bacalhau docker run --cpu nan` left behind before specs refused NaN
    _insert_job(jobs_db, nan_job, '{"engine": "docker", "docker": {"image": "b"}, "resources": {"cpu": NaN}}',
                "pending")
    _insert_job(jobs_db, not_json, "this is not JSON", "in_progress")
    _insert_job(jobs_db, odd_state, '{"engine": "noop"}', "haunted")
    _insert_job(jobs_db, bad_exec_job, '{"engine": "noop"}', "in_progress")
    bad_exec = str(uuid.uuid4())
    with sqlite3.connect(jobs_db) as conn:
        conn.execute("INSERT INTO executions(id, job_id, node_id, state, reason, result, created_at, updated_at)"
                     " VALUES (?,?,?,?,?,?,?,?)", (bad_exec, bad_exec_job, node_id, "running", "", "{not json",
                                                   time.time(), time.time()))
    local_bad = str(uuid.uuid4())
    with sqlite3.connect(compute_db) as conn:
        conn.execute("INSERT INTO local_executions(id, job, requester_id, state, reason, created_at, updated_at)"
                     " VALUES (?,?,?,?,?,?,?)", (local_bad, '{"id": "%s", "spec": {"timeout": NaN}}' % bad_exec_job,
                                                 node_id, "running", "", time.time(), time.time()))

    node.start()
    node.wait_ready()
    client = node.client()
    listed = {j["id"]: j for j in client.list_jobs(0)}
    assert listed[good]["state"] == "completed"
    for job_id in (nan_job, not_json, odd_state, bad_exec_job):
        assert listed[job_id]["state"] == "failed", listed[job_id]
        assert "could not be read" in listed[job_id]["reason"], listed[job_id]
        described = client.job(job_id)               # describe works: no 500
        assert described["state"] == "failed"
    assert "cpu" in listed[nan_job]["reason"]
    assert "could not be read" in client.job(bad_exec_job)["executions"][0]["reason"]
    out = node.cli("describe", nan_job[:8])
    assert out.returncode == 0 and "could not be read" in out.stdout, out.stderr
    # the raw rows are kept for the operator
    with sqlite3.connect(jobs_db) as conn:
        kept = conn.execute("SELECT tbl, row_id, raw FROM quarantine").fetchall()
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(JOBS_DB_MIGRATIONS)
    assert {(t, r) for t, r, _ in kept} == {("jobs", nan_job), ("jobs", not_json), ("jobs", odd_state),
                                            ("executions", bad_exec)}
    assert any("NaN" in raw for _, _, raw in kept)
    with sqlite3.connect(compute_db) as conn:
        assert conn.execute("SELECT row_id FROM quarantine").fetchall() == [(local_bad,)]
        assert conn.execute("SELECT state FROM local_executions WHERE id=?", (local_bad,)).fetchone() == ("failed",)
    # and the node goes on: a new job runs
    after = client.submit({"engine": "noop", "noop": {"stdout": "after"}})
    assert _wait_state(client, after)["state"] == "completed"
    # a second restart finds nothing more to set aside
    assert node.stop(signal.SIGTERM) == 0
    node.start()
    node.wait_ready()
    with sqlite3.connect(jobs_db) as conn:
        assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 4
    assert node.stop(signal.SIGTERM) == 0


# the layouts of jobs.db and compute.db before they were versioned (user_version 0), as main wrote them
UNVERSIONED_JOBS_DB = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    client_id TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX jobs_created ON jobs(created_at);
CREATE TABLE executions (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, node_id TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', result TEXT, result_ref TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX executions_job ON executions(job_id);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, time REAL NOT NULL, kind TEXT NOT NULL,
    subject TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', node_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_job ON events(job_id);
"""
UNVERSIONED_COMPUTE_DB = """
CREATE TABLE local_executions (
    id TEXT PRIMARY KEY, job TEXT NOT NULL, requester_id TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', result TEXT, result_ref TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE local_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, execution_id TEXT NOT NULL, time REAL NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT ''
);
"""


async def test_a_repo_of_the_unversioned_layout_opens_migrated_in_place(tmp_path: Path) -> None:
    job_id, ex_id = str(uuid.uuid4()), str(uuid.uuid4())
    spec = JobSpec.model_validate({"engine": "noop", "noop": {"stdout": "old"}}).model_dump_json()
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.executescript(UNVERSIONED_JOBS_DB)
        conn.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?)", (job_id, spec, "completed", "", "c", 1.0, 2.0))
        conn.execute("INSERT INTO executions VALUES (?,?,?,?,?,?,?,?,?)",
                     (ex_id, job_id, "n", "completed", "", '{"exit_code": 0}', "ipfs://x", 1.0, 2.0))
        conn.execute("INSERT INTO events(job_id, time, kind, subject, state) VALUES (?,?,?,?,?)",
                     (job_id, 1.0, "job", job_id, "completed"))
    job_json = json.dumps({"id": job_id, "spec": json.loads(spec)})
    with sqlite3.connect(tmp_path / "compute.db") as conn:
        conn.executescript(UNVERSIONED_COMPUTE_DB)
        conn.execute("INSERT INTO local_executions VALUES (?,?,?,?,?,?,?,?,?)",
                     (ex_id, job_json, "r", "completed", "", '{"exit_code": 0}', "ipfs://x", 1.0, 2.0))

    store = JobStore(tmp_path / "jobs.db")
    try:
        job = await store.get_job(job_id)
        assert job.state.value == "completed" and job.spec.noop.stdout == "old" and job.client_id == "c"
        assert job.executions[0].result_ref == "ipfs://x" and [e.state for e in job.events] == ["completed"]
        assert store.set_aside == []
    finally:
        store.close()
    compute = ExecutionStore(tmp_path / "compute.db")
    try:
        assert (await compute.get(ex_id)).job.id == job_id
    finally:
        compute.close()
    for name in ("jobs.db", "compute.db"):
        with sqlite3.connect(tmp_path / name) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == {"jobs.db": len(JOBS_DB_MIGRATIONS), "compute.db": 1}[name]
            assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
            assert conn.execute("PRAGMA synchronous").fetchone()[0] in (1, 2)   # the pragma is per connection

    # a repo written by a newer layout is refused with one clear line, not misread
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.execute("PRAGMA user_version=7")
    with pytest.raises(StateError, match="newer bacalhau"):
        JobStore(tmp_path / "jobs.db")


async def test_the_job_store_commits_with_synchronous_full(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    try:
        assert await store._db.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2   # FULL
    finally:
        store.close()


# -- retries ------------------------------------------------------------------------------------------------

async def test_a_retry_whose_backoff_outlasts_the_call_timeout_is_not_lost(tmp_path: Path) -> None:
    """The requester once slept a retry's backoff inside the handler of the compute node's failure callback:
    the call timed out, the handler was cancelled and the retry with it; the job stayed pending for ever."""
    from bacalhau.bprotocol.transport import InMemoryNetwork
    from bacalhau.config import NodeConfig
    from bacalhau.errors import ExecutorError
    from bacalhau.executors.noop import NoopExecutor
    from bacalhau.models import Engine, JobState, NodeType
    from bacalhau.node import NodeDeps

    attempts = []

    async def first_fails(execution_id: str, job: object) -> None:
        attempts.append(execution_id)
        if len(attempts) == 1:
            raise ExecutorError("the first attempt fails")

    net = InMemoryNetwork()
    async with trio.open_nursery() as nursery:
        req = await nursery.start(Node(NodeConfig(repo_dir=tmp_path / "r", serve_api=False, call_timeout=1.0,
                                                  node_types=(NodeType.REQUESTER,)), NodeDeps(network=net)).run)
        for i in range(2):
            cfg = NodeConfig(repo_dir=tmp_path / f"c{i}", node_types=(NodeType.COMPUTE,), call_timeout=1.0,
                             node_info_interval=0.2)
            await nursery.start(Node(cfg, NodeDeps(network=net, executors={
                Engine.NOOP: NoopExecutor(on_start=first_fails)})).run)
        with trio.fail_after(5):
            while len(req.requester.nodes.alive()) < 2:
                await trio.sleep(0.05)
        job = await req.requester.submit(JobSpec.model_validate(
            {"engine": "noop", "noop": {"stdout": "second time lucky"}, "retry": {"backoff": 2.0}}))
        with trio.fail_after(15):
            while not (done := await req.requester.store.get_job(job.id)).state.terminal:
                await req.requester.wait_for_change(job.id, 1)
        assert done.state == JobState.COMPLETED, done.reason
        assert len(attempts) == 2
        assert [e.state.value for e in done.executions if e.state.value in ("failed", "completed")] == \
            ["failed", "completed"]
        nursery.cancel_scope.cancel()


# -- retention ----------------------------------------------------------------------------------------------

async def test_old_results_and_unpinned_blocks_are_collected_but_pins_and_work_in_flight_stay(tmp_path: Path) -> None:
    """A node that runs for long must not grow its disk for ever: with a tiny retention, the results of a
    finished job and an unpinned block go; the published (pinned) result, and the directory and ipfs://
    input of a job still running, stay."""
    from bacalhau.bprotocol.transport import InMemoryNetwork
    from bacalhau.config import NodeConfig
    from bacalhau.executors.noop import NoopExecutor
    from bacalhau.ipfs.unixfs import add_path, cid_to_bytes
    from bacalhau.models import Engine, JobState
    from bacalhau.node import NodeDeps

    cfg = NodeConfig(repo_dir=tmp_path / "n", serve_api=False, engines=("noop",), retention=0.5)
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg, NodeDeps(network=InMemoryNetwork(),
                                                      executors={Engine.NOOP: NoopExecutor()})).run)
        (tmp_path / "stray").write_bytes(b"nobody pins this")
        (tmp_path / "input").write_bytes(b"the running job reads this")
        stray = cid_to_bytes(add_path(tmp_path / "stray", put=node.blockstore.put)[-1][0])
        held = add_path(tmp_path / "input", put=node.blockstore.put)[-1][0]

        # a noop that sleeps has a directory (one that does not is held in memory: nothing to collect)
        finished = await node.requester.submit(JobSpec.model_validate(
            {"engine": "noop", "noop": {"stdout": "x", "sleep": 0.01}}))
        with trio.fail_after(10):
            while not (done := await node.requester.store.get_job(finished.id)).state.terminal:
                await node.requester.wait_for_change(finished.id, 1)
        assert done.state == JobState.COMPLETED, done.reason
        published = cid_to_bytes(done.executions[0].result_ref.removeprefix("ipfs://"))
        finished_dir = node.compute.execution_dir(done.executions[0].id).root
        assert finished_dir.is_dir()

        running = await node.requester.submit(JobSpec.model_validate(
            {"engine": "noop", "noop": {"sleep": 60}, "inputs": [{"source": f"ipfs://{held}"}]}))
        with trio.fail_after(10):
            while not (live := [e for e in (await node.requester.store.get_job(running.id)).executions
                                if e.state.value == "running"]):
                await node.requester.wait_for_change(running.id, 1)
        running_dir = node.compute.execution_dir(live[0].id).root

        with trio.fail_after(15):
            while finished_dir.exists() or node.blockstore.has(stray):
                await trio.sleep(0.1)
        passes = node.retention.passes
        with trio.fail_after(10):
            while node.retention.passes < passes + 2:       # and a couple more passes change nothing else
                await trio.sleep(0.1)
        assert node.blockstore.has(published) and node.blockstore.has(cid_to_bytes(held))
        assert running_dir.is_dir()
        assert (await node.requester.store.get_job(running.id)).state == JobState.IN_PROGRESS
        nursery.cancel_scope.cancel()


def test_the_pins_file_is_fsynced_before_its_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pin acknowledged must survive a power cut: the new pins file reaches the disk before it replaces
    the old one, and the directory after. (os.fsync is watched: a power cut cannot be made here.)"""
    import os

    from bacalhau.ipfs.blockstore import Blockstore
    from bacalhau.ipfs.unixfs import add_path, cid_to_bytes

    store = Blockstore(tmp_path / "s")
    (tmp_path / "f").write_bytes(b"pin me")
    cid = cid_to_bytes(add_path(tmp_path / "f", put=store.put)[-1][0])
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(a: Any, b: Any) -> None:
        events.append("rename")
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.pin(cid)
    assert events == ["fsync file", "rename", "fsync dir"]
    assert store.pins() == [cid]
    store.close()


@pytest.mark.parametrize("args", [("--retention", "nan"), ("--retention", "inf"), ("--retention", "-1"),
                                  ("--limit-total-cpu", "nan"), ("--limit-total-cpu", "1e999"),
                                  ("--limit-total-memory", "inf")])
async def test_serve_refuses_nan_and_infinity_in_its_flags_in_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    out = await run_cli(None, "serve", "--repo", str(tmp_path / "r"), "--port", "0", "--swarm-port", "0",
                        "--ipfs-swarm-port", "0", *args, timeout=30)
    assert out.returncode == 2, out.stderr
    error = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in out.stderr and "pydantic" not in out.stderr, out.stderr


def test_a_damaged_pins_file_is_set_aside_and_pins_go_on(tmp_path: Path) -> None:
    """Lines of the pins file that are not CIDs failed every later pin (each publish) and gc: the node died
    at its first published result."""
    from bacalhau.ipfs.blockstore import Blockstore
    from bacalhau.ipfs.unixfs import add_path, cid_to_bytes

    store = Blockstore(tmp_path / "s")
    (tmp_path / "a").write_bytes(b"kept")
    (tmp_path / "b").write_bytes(b"pinned later")
    kept = cid_to_bytes(add_path(tmp_path / "a", put=store.put)[-1][0])
    later = cid_to_bytes(add_path(tmp_path / "b", put=store.put)[-1][0])
    store.pin(kept)
    store.close()
    pins = tmp_path / "s" / "pins"
    damaged = pins.read_text() + "not-hex\n\x00\xff\n01ff\n" + "81" * 40 + "\n"
    pins.write_text(damaged)

    store = Blockstore(tmp_path / "s")
    assert store.pins() == [kept]
    assert (tmp_path / "s" / "pins.quarantine").read_text() == damaged
    store.pin(later)
    assert store.pins() == [kept, later]
    assert store.gc() == 0 and store.has(kept) and store.has(later)
    store.close()


async def test_a_jobs_db_that_is_not_a_database_stops_serve_with_one_line(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / "jobs.db").write_bytes(b"this was a database once" * 100)
    out = await run_cli(None, "serve", "--repo", str(repo), "--port", "0", "--swarm-port", "0",
                        "--ipfs-swarm-port", "0", "--swarm-key", "5e" * 32, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    error = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "jobs.db cannot be opened" in error[0], out.stderr


async def test_a_finished_job_whose_rows_do_not_parse_still_lists_and_describes(tmp_path: Path) -> None:
    """Rows of finished jobs are not rewritten at open (the start-up does not read them); reading one that
    does not parse shows a failed job with the reason instead of failing the whole list."""
    store = JobStore(tmp_path / "jobs.db")
    store.close()
    job_id, ex_id = str(uuid.uuid4()), str(uuid.uuid4())
    _insert_job(tmp_path / "jobs.db", job_id, '{"engine": "noop", "timeout": Infinity}', "completed")
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.execute("INSERT INTO executions(id, job_id, node_id, state, reason, result, created_at, updated_at)"
                     " VALUES (?,?,?,?,?,?,?,?)", (ex_id, job_id, "n", "completed", "", "[1, 2", 1.0, 2.0))
        conn.execute("INSERT INTO events(job_id, time, kind, subject, state) VALUES (?,?,?,?,?)",
                     (job_id, "yesterday", "job", job_id, "completed"))
        conn.execute("UPDATE jobs SET reason=CAST(X'FF00FE' AS TEXT) WHERE id=?", (job_id,))   # not UTF-8
    store = JobStore(tmp_path / "jobs.db")
    try:
        assert store.set_aside == []
        [listed] = await store.list_jobs(None)
        assert listed.id == job_id and listed.state.value == "failed" and "could not be read" in listed.reason
        job = await store.get_job(await store.resolve_id(job_id[:8]))
        assert "timeout" in job.reason
        assert job.executions[0].state.value == "failed" and "could not be read" in job.executions[0].reason
        assert "could not be read" in job.events[0].reason
        json.dumps(job.model_dump(mode="json"))       # what describe sends
    finally:
        store.close()
