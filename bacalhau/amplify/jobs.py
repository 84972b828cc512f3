"""How a graph node becomes a cluster job, and what its finished job gives back: the spec (the step's job with
the parents' output CIDs mounted, labelled with the run and node), why a job did not succeed, and the output CID
and stdout of its published result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bacalhau.amplify.workflow import JobDef
from bacalhau.models import DockerSpec, Engine, JobSpec, JobState, StorageSpec, WasmSpec

if TYPE_CHECKING:
    from bacalhau.models import Execution, Job

LABEL_RUN = "amplify"
LABEL_NODE = "amplify-node"
LABEL_ATTEMPT = "amplify-attempt"


def job_failure(job: Job) -> tuple[str, Execution | None]:
    """Why the job did not succeed ("" when it did) and its completed execution."""
    if job.state == JobState.CANCELLED:
        return f"the job was cancelled ({job.reason})", None
    if job.state != JobState.COMPLETED:
        return job.reason or f"the job {job.state.value}", None
    done = [e for e in job.executions if e.state.value == "completed" and e.result_ref.startswith("ipfs://")]
    if not done:
        return "the job completed without a published result", None
    ex = done[0]
    code = ex.result.exit_code if ex.result is not None else 0
    if code != 0:
        return f"exited with code {code}", ex
    return "", ex


def read_result(result: bytes, blocks: Any) -> tuple[str, str]:
    from bacalhau.amplify.store import MAX_STDOUT_KEPT
    from bacalhau.ipfs.dagpb import decode
    from bacalhau.ipfs.exporter import cat
    from bacalhau.ipfs.result_ref import check_result_root
    from bacalhau.ipfs.unixfs import cid_str

    check_result_root(result, blocks)
    links = {link.name: link.cid for link in decode(blocks.get(result))[1]}
    output = cid_str(links["outputs"]) if "outputs" in links else cid_str(result)
    stdout = b""
    if "stdout" in links:
        for chunk in cat(links["stdout"], blocks):
            stdout += chunk
            if len(stdout) >= MAX_STDOUT_KEPT:
                break
    return output, stdout[:MAX_STDOUT_KEPT].decode("utf-8", "replace")


def job_spec(job: JobDef, mounts: list[tuple[str, str]], run_id: str, node_id: str) -> JobSpec:
    inputs = [StorageSpec(source=f"ipfs://{cid}", path=path) for cid, path in mounts]
    labels = {LABEL_RUN: run_id, LABEL_NODE: node_id}
    if job.engine == "wasm":
        assert job.wasm_module is not None
        return JobSpec(engine=Engine.WASM, wasm=WasmSpec(module=job.wasm_module, entry_point=job.entry_point,
                                                         parameters=job.parameters, env=job.env),
                       resources=job.resources(), timeout=job.timeout, inputs=inputs, labels=labels)
    assert job.image is not None
    return JobSpec(engine=Engine.DOCKER, docker=DockerSpec(image=job.image, entrypoint=job.entrypoint,
                                                           parameters=job.parameters, env=job.env),
                   resources=job.resources(), timeout=job.timeout, inputs=inputs, labels=labels)
