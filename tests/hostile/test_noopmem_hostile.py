"""A noop execution that does not sleep makes no file: its result is held in memory (executors/types.py
KnownOutput), published from there, and served from there (logs, the compute node's result fallback) while it
runs, after it ended and after a restart. Its result must stay the one its files would have made: the same CID,
the same bytes, the same checks."""

from __future__ import annotations

import http.client
import io
import tarfile
from pathlib import Path

import pytest
import trio

from bacalhau.bprotocol import messages as m
from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.executors.noop import NoopExecutor
from bacalhau.executors.types import ExecutionDir, KnownOutput
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.publish import publish_result, publish_results
from bacalhau.ipfs.unixfs import add_path, cid_to_bytes
from bacalhau.log_frames import STDOUT, Data, Ended
from bacalhau.models import Engine, Job, JobSpec, JobState, NoopSpec
from bacalhau.node import Node, NodeDeps
from tests.conftest import node_config
from tests.test_flow_inmemory import wait_terminal

BIG = "é" * 300_000     # 600,000 bytes: three chunks, a file node with links


@pytest.mark.parametrize(("stdout", "exit_code"), [("", 0), ("hello\n", 0), ("héllo\nno newline", 3), (BIG, 255)])
async def test_a_result_held_in_memory_has_the_cid_of_the_same_files_imported_from_disk(
        tmp_path: Path, stdout: str, exit_code: int) -> None:
    # the files as the noop executor writes them when given a directory (a noop that sleeps still does)
    job = Job(spec=JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout=stdout, exit_code=exit_code)))
    exec_dir = ExecutionDir(tmp_path / "files")
    exec_dir.create()
    executor = NoopExecutor()
    await executor.start("e", job, exec_dir)
    await executor.wait("e")
    on_disk = publish_result(exec_dir.root, Blockstore(tmp_path / "disk"))
    assert add_path(exec_dir.root)[-1][0] == on_disk          # and `ipfs add -r` of that directory agrees

    known = KnownOutput(stdout, exit_code)
    await executor.start("m", job, ExecutionDir(tmp_path / "never", known))
    await executor.wait("m")
    assert known.ran and not (tmp_path / "never").exists()
    store = Blockstore(tmp_path / "memory")
    [in_memory] = publish_results([known.tree], store)
    assert in_memory == on_disk
    assert store.pins() == [cid_to_bytes(on_disk)]


async def test_a_noop_execution_leaves_no_directory_and_publishes_what_its_files_would(tmp_path: Path) -> None:
    cfg = node_config(tmp_path / "node", engines=("noop",), serve_api=False)
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg, NodeDeps(network=InMemoryNetwork())).run)
        assert node.requester is not None and node.compute is not None
        jobs = [await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout=f"job {i}\n")))
                for i in range(3)]
        for job in jobs:
            await wait_terminal(node, job.id)
        results = cfg.repo_dir / "results"
        assert not results.exists() or not list(results.iterdir())
        for i, job in enumerate(jobs):
            done = await node.requester.store.get_job(job.id)
            assert done.state == JobState.COMPLETED, done.reason
            files = ExecutionDir(tmp_path / str(i))
            files.create()
            files.stdout.write_text(f"job {i}\n")
            files.exit_code.write_text("0")
            assert done.executions[0].result_ref == f"ipfs://{add_path(files.root)[-1][0]}"
        nursery.cancel_scope.cancel()


async def test_a_noop_result_is_capped_by_the_nodes_max_result_size_as_files_are(tmp_path: Path) -> None:
    cfg = node_config(tmp_path / "node", engines=("noop",), serve_api=False, max_result_size=1000)
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg, NodeDeps(network=InMemoryNetwork())).run)
        assert node.requester is not None
        job = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="x" * 1001)))
        await wait_terminal(node, job.id)
        done = await node.requester.store.get_job(job.id)
        assert done.state == JobState.FAILED
        assert "1002 bytes (apparent size), over this node's limit of 1000" in done.reason   # stdout + exitCode
        fits = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="x" * 999)))
        await wait_terminal(node, fits.id)
        assert (await node.requester.store.get_job(fits.id)).state == JobState.COMPLETED
        nursery.cancel_scope.cancel()


async def test_what_a_node_holds_in_memory_goes_when_its_execution_ends_however_it_ends(tmp_path: Path) -> None:
    """Completed, failed at start, cancelled while starting, failed on its exit code: none is held after, none
    made a directory, and the one that ran still shows its log from its record."""
    from bacalhau.errors import ExecutorError

    async def hook(execution_id: str, job: Job) -> None:
        assert job.spec.noop is not None
        if job.spec.noop.stdout == "boom":
            raise ExecutorError("engine exploded")
        if job.spec.noop.stdout == "block":
            await trio.sleep_forever()

    cfg = node_config(tmp_path / "node", engines=("noop",), serve_api=False)
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg, NodeDeps(network=InMemoryNetwork(),
                                                      executors={Engine.NOOP: NoopExecutor(on_start=hook)})).run)
        assert node.requester is not None and node.compute is not None
        ok = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="ok")))
        boom = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="boom")))
        exits = await node.requester.submit(JobSpec.model_validate(
            {"engine": "noop", "noop": {"stdout": "exits 7", "exit_code": 7}, "retry": {"on_nonzero_exit": True}}))
        block = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout="block")))
        with trio.fail_after(10):
            while len(node.compute._held) < 1 or not (await node.requester.store.get_job(block.id)).executions:  # noqa: SLF001
                await trio.sleep(0.01)
        await node.requester.cancel(block.id)
        states = {}
        for job in (ok, boom, exits, block):
            await wait_terminal(node, job.id)
            states[job.id] = (await node.requester.store.get_job(job.id)).state
        assert [states[j.id] for j in (ok, boom, exits, block)] == \
            [JobState.COMPLETED, JobState.FAILED, JobState.FAILED, JobState.CANCELLED]
        with trio.fail_after(10):
            while len(node.compute._held):  # noqa: SLF001  (the cancelled one is let go as its task ends)
                await trio.sleep(0.01)
        results = cfg.repo_dir / "results"
        assert not results.exists() or not list(results.iterdir())
        for job, printed in ((exits, b"exits 7"), (boom, b"")):     # the second never ran
            [ex] = (await node.requester.store.get_job(job.id)).executions
            stdout, ended = await _log(node, job.id, ex.id)
            assert (stdout, ended.state) == (printed, "failed")
        nursery.cancel_scope.cancel()


def _api_get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("X-Result-Source") or "", resp.read()
    finally:
        conn.close()


async def _log(node: Node, job_id: str, execution_id: str = "") -> tuple[bytes, Ended]:
    assert node.requester is not None
    stdout = b""
    async for event in node.requester.read_logs(job_id, execution_id=execution_id, follow=False):
        if isinstance(event, Data) and event.kind == STDOUT:
            assert event.offset == len(stdout)
            stdout += event.data
        elif isinstance(event, Ended):
            return stdout, event
    raise AssertionError("the log ended without an end")


async def test_logs_and_results_of_noop_jobs_are_served_after_a_restart_with_or_without_a_directory(
        tmp_path: Path) -> None:
    """One job ran by this code (no directory), one as an earlier version left it (its files on disk): after a
    restart both logs show their stdout, and with their blocks gone the compute node serves their results,
    the bytes IPFS gave before; retention and remove_result take what there is and find no error."""
    cfg = node_config(tmp_path / "node", engines=("noop",))    # real libp2p: the node keeps its id
    texts = {"memory": "made in memory\n", "files": "héllo from an earlier version\n"}
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg).run)
        assert node.requester is not None
        jobs = {}
        for name, text in texts.items():
            job = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout=text, exit_code=4)))
            await wait_terminal(node, job.id)
            jobs[name] = await node.requester.store.get_job(job.id)
            assert jobs[name].state == JobState.COMPLETED, jobs[name].reason
        before = {(name, item): await trio.to_thread.run_sync(
            _api_get, node.api_port, f"/api/v1/jobs/{job.id}/results/{item}")
            for name, job in jobs.items() for item in ("stdout", "stderr", "exitCode")}
        assert before[("memory", "stdout")] == (200, "ipfs", texts["memory"].encode())
        assert before[("memory", "exitCode")] == (200, "ipfs", b"4")
        nursery.cancel_scope.cancel()

    old = ExecutionDir(cfg.repo_dir / "results" / jobs["files"].executions[0].id)   # the earlier layout
    old.create()
    old.stdout.write_text(texts["files"])
    old.exit_code.write_text("4")

    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg).run)
        assert node.requester is not None and node.compute is not None
        for name, job in jobs.items():
            stdout, ended = await _log(node, job.id)
            assert (stdout, ended.state, ended.exit_code) == (texts[name].encode(), "completed", 4)
            root = cid_to_bytes(job.executions[0].result_ref.removeprefix("ipfs://"))
            node.blockstore.unpin(root)
        assert node.blockstore.gc() > 0
        for name, job in jobs.items():
            for item in ("stdout", "stderr", "exitCode"):
                status, source, body = await trio.to_thread.run_sync(
                    _api_get, node.api_port, f"/api/v1/jobs/{job.id}/results/{item}")
                assert (status, source, body) == (before[(name, item)][0], "node", before[(name, item)][2])
            status, source, body = await trio.to_thread.run_sync(
                _api_get, node.api_port, f"/api/v1/jobs/{job.id}/results/tar")
            assert (status, source) == (200, "node")
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                assert tar.getnames() == ["exitCode", "outputs", "stderr", "stdout"]
                out = tar.extractfile("stdout")
                assert out is not None and out.read() == texts[name].encode()
                assert tar.getmember("outputs").isdir()

        node.retention.retention = 1e-9      # everything finished counts as old
        results, _ = await node.retention.collect()
        assert results == 1 and not old.root.exists()    # the earlier layout's directory, and no error
        for job in jobs.values():
            await node.compute.remove_result(job.executions[0].id)     # nothing there: not an error
        stdout, _ = await _log(node, jobs["memory"].id)
        assert stdout == texts["memory"].encode()
        nursery.cancel_scope.cancel()


async def test_a_peer_that_never_answers_a_run_complete_pins_no_noop_output_in_memory(tmp_path: Path) -> None:
    """A cluster peer acting as a requester asks for noop jobs of 1M characters of stdout, accepts the bids and
    never answers the run-complete (no result-accepted, no result-rejected): nothing on the compute node ends
    those executions. Capacity is given back once each has run, so the peer can leave any number of them; the
    output each one printed must not stay held in memory for it (its record says it from then on), and the
    peer still reads it as the owner."""
    from bacalhau.bprotocol.p2p_transport import P2PTransport
    from bacalhau.bprotocol.proxies import ComputeProxy
    from bacalhau.models import ExecutionState, new_id
    from tests.hostile.test_rogue_peer import rogue_peer

    big = "x" * (1024 * 1024)      # MAX_NOOP_STDOUT_CHARS
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path / "node", engines=("noop",))).run)
        assert node.compute is not None
        async with rogue_peer(nursery, tmp_path, node) as rogue:
            proxy = ComputeProxy(P2PTransport(rogue), 30)
            ids = []
            for i in range(4):
                execution_id = new_id()
                ask = m.AskForBidRequest(execution_id=execution_id, requester_id=rogue.peer_id, job=Job(
                    spec=JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout=big[:-1] + str(i)))))
                await proxy.ask_for_bid(node.node_id, ask)
                del ask
                await proxy.bid_accepted(node.node_id, execution_id)
                ids.append(execution_id)
            with trio.fail_after(15):
                for execution_id in ids:
                    while (status := await proxy.execution_status(node.node_id, execution_id)).result is None:
                        await trio.sleep(0.02)
                    assert status.state == ExecutionState.RUNNING    # ran; awaiting an answer that never comes
            assert len(node.compute._held) == 0  # noqa: SLF001
            async with proxy.get_result(node.node_id, ids[-1], "stdout") as chunks:
                assert b"".join([chunk async for chunk in chunks]) == (big[:-1] + "3").encode()
        nursery.cancel_scope.cancel()


async def test_a_stored_execution_that_no_longer_parses_still_serves_the_files_it_left(tmp_path: Path) -> None:
    """An execution whose stored job does not parse any more (a spec an earlier version took) is read with a
    stand-in job, a noop one: it must not be taken for a noop held in memory, which never ran, hiding the
    stdout and the result its directory holds."""
    import sqlite3

    cfg = node_config(tmp_path / "node", engines=("noop",))    # real libp2p: the node keeps its id
    text = "written to files by an earlier version\n"
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg).run)
        assert node.requester is not None
        # a noop that sleeps writes its files, as every engine's execution did before this session
        job = await node.requester.submit(JobSpec(engine=Engine.NOOP, noop=NoopSpec(stdout=text, sleep=0.01)))
        await wait_terminal(node, job.id)
        [ex] = (await node.requester.store.get_job(job.id)).executions
        assert ex.state.value == "completed"
        nursery.cancel_scope.cancel()
    assert (cfg.repo_dir / "results" / ex.id / "stdout").read_text() == text
    with sqlite3.connect(cfg.repo_dir / "compute.db") as conn:
        conn.execute("UPDATE local_executions SET job=? WHERE id=?",
                     ('{"id": "%s", "spec": {"engine": "noop", "timeout": NaN}}' % job.id, ex.id))

    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg).run)
        stdout, _ = await _log(node, job.id)
        assert stdout == text.encode()
        got = b"".join([chunk async for chunk in node.content.open_result(node.node_id, ex.id, "stdout")])
        assert got == text.encode()
        nursery.cancel_scope.cancel()


async def test_a_follower_of_a_queued_noop_job_reads_no_stored_row_each_poll(tmp_path: Path) -> None:
    """Any client can submit a noop job of 1M characters of stdout to a busy node and follow its log: while it
    waits for room, nothing is printed, and its follower must not read and parse its stored job (megabytes of
    JSON) every POLL_INTERVAL to learn so (a few followers kept the node's CPU busy); once it runs, the
    follower gets all of its stdout."""
    from bacalhau.models import Resources

    async def hook(execution_id: str, job: Job) -> None:
        assert job.spec.noop is not None
        if job.spec.noop.stdout == "block":
            await trio.sleep_forever()

    one_cpu = {"cpu": 1, "memory": 1024**2}
    big = "y" * (1024 * 1024)
    cfg = node_config(tmp_path / "node", engines=("noop",), serve_api=False,
                      capacity=Resources(cpu=1, memory=1024**3))
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(cfg, NodeDeps(network=InMemoryNetwork(),
                                                      executors={Engine.NOOP: NoopExecutor(on_start=hook)})).run)
        assert node.requester is not None and node.compute is not None
        compute = node.compute
        blocker = await node.requester.submit(JobSpec.model_validate(
            {"engine": "noop", "noop": {"stdout": "block"}, "resources": one_cpu}))
        queued = await node.requester.submit(JobSpec.model_validate(
            {"engine": "noop", "noop": {"stdout": big}, "resources": one_cpu}))
        with trio.fail_after(10):
            while compute.capacity.queued < 1:
                await trio.sleep(0.01)
        store = compute._store  # noqa: SLF001
        reads = 0
        real_get = store.get

        async def counted_get(execution_id: str):  # type: ignore[no-untyped-def]
            nonlocal reads
            reads += 1
            return await real_get(execution_id)

        store.get = counted_get  # type: ignore[method-assign]   # the real store, its reads counted
        got: list[tuple[bytes, Ended]] = []

        async def follow() -> None:
            stdout = b""
            async for event in node.requester.read_logs(queued.id, follow=True):  # type: ignore[union-attr]
                if isinstance(event, Data) and event.kind == STDOUT:
                    stdout += event.data
                elif isinstance(event, Ended):
                    got.append((stdout, event))
                    return

        nursery.start_soon(follow)
        await trio.sleep(0.5)       # a window of ~200 polls: what the follower costs while the job waits
        assert reads <= 5, f"{reads} reads of the stored execution in 0.5 s of following a queued job"
        await node.requester.cancel(blocker.id)
        with trio.fail_after(15):
            while not got:
                await trio.sleep(0.01)
        assert got[0][0] == big.encode() and got[0][1].state == "completed"
        nursery.cancel_scope.cancel()
