"""The official Bacalhau Python clients, unchanged, against a real `bacalhau serve`: bacalhau-sdk 1.0.3 (with its
pinned bacalhau-apiclient 1.0.0) and bacalhau-apiclient 1.0.3, from the venvs scripts/setup-bacalhau-sdk.sh
makes (pins in scripts/bacalhau-sdk/). They need Python < 3.12 and act at import (the SDK reads its env and
makes its key then), so each runs in a subprocess with BACALHAU_API_HOST/PORT and BACALHAU_DIR set."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Served

pytestmark = [pytest.mark.slow, pytest.mark.docker]

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools" / "bacalhau-sdk"
PINS = ROOT / "scripts" / "bacalhau-sdk"
IMAGE = "bacalhau/busybox:latest"


def _pinned(name: str) -> dict[str, str]:
    lines = (PINS / f"{name}.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def _python(venv: str) -> Path:
    python = TOOLS / venv / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: run scripts/setup-bacalhau-sdk.sh")
    return python


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # one serve for the module (each SDK script is a few seconds; a serve per test would double that)
    served = Served(tmp_path_factory.mktemp("bapi") / "node").start()
    served.wait_ready()
    yield served
    if served.proc is not None and served.proc.poll() is None:
        served.stop()


def run_client(venv: str, node: Served, script: str, client_dir: Path, timeout: float = 120) -> dict[str, Any]:
    """Run `script` with a client's Python; it prints one JSON line last, which is returned."""
    client_dir.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", ""), "BACALHAU_API_HOST": "127.0.0.1",
           "BACALHAU_API_PORT": str(node.api_port), "BACALHAU_DIR": str(client_dir), "HOME": str(client_dir)}
    proc = subprocess.run([str(_python(venv)), "-c", script], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


SDK_PRELUDE = """
import json, sys, time
from bacalhau_sdk.api import submit, states, results, list as list_jobs, events
from bacalhau_sdk.config import get_client_id
from bacalhau_apiclient.models.deal import Deal
from bacalhau_apiclient.models.job_spec_docker import JobSpecDocker
from bacalhau_apiclient.models.job_spec_wasm import JobSpecWasm
from bacalhau_apiclient.models.publisher_spec import PublisherSpec
from bacalhau_apiclient.models.spec import Spec
from bacalhau_apiclient.models.storage_spec import StorageSpec
TERMINAL = {"Completed", "Error", "Cancelled", "CompletedPartially"}

def run(spec):
    job = submit(dict(APIVersion="V1beta1", ClientID=get_client_id(), Spec=spec)).job
    job_id = job.metadata.id
    assert job.metadata.client_id == get_client_id()
    seen = []
    deadline = time.time() + 90
    while True:
        st = states(job_id).state
        seen.append(st.state)
        if st.state in TERMINAL: break
        assert time.time() < deadline, seen
        time.sleep(0.2)
    done = [e for e in st.executions or [] if e.state == "Completed"]
    out = dict(job_id=job_id, state=st.state, seen=seen, client_id=get_client_id())
    if done:
        out.update(stdout=done[0].run_output.stdout, exit_code=done[0].run_output.exit_code,
                   stderr=done[0].run_output.stderr, stderr_truncated=done[0].run_output.stderrtruncated,
                   published=done[0].published_results.cid, node_id=done[0].node_id,
                   verified=[done[0].verification_result.complete, done[0].verification_result.result])
    out["cids"] = [r.data.cid for r in results(job_id).results]
    out["listed"] = [j.job.metadata.id for j in list_jobs().jobs]
    out["events"] = [(e.type, (e.job_state or e.execution_state).new) for e in events(job_id).events]
    return out
"""

DOCKER_JOB = SDK_PRELUDE + """
spec = Spec(engine="Docker", verifier="Noop", publisher_spec=PublisherSpec(type="IPFS"),
            docker=JobSpecDocker(image=%r, entrypoint=["sh", "-c", "echo Hello from the SDK; echo $GREETING; "
                                                                   "cat /inputs/note.txt"],
                                 environment_variables=["GREETING=hola"]),
            inputs=[StorageSpec(storage_source="Inline", url="data:,an%%20inline%%20input", path="/inputs/note.txt")],
            timeout=300, deal=Deal(concurrency=1, confidence=0, min_bids=0),
            outputs=[StorageSpec(storage_source="IPFS", name="outputs", path="/outputs")])
print(json.dumps(run(spec)))
"""


def test_sdk_runs_a_docker_job_to_completed_and_its_result_cid_holds_stdout(node: Served, tmp_path: Path) -> None:
    out = run_client("sdk", node, DOCKER_JOB % IMAGE, tmp_path / "client")
    assert out["state"] == "Completed", out
    assert out["stdout"] == "Hello from the SDK\nhola\nan inline input" and out["exit_code"] == 0
    assert (out["stderr"], out["stderr_truncated"]) == ("", False)
    assert out["verified"] == [True, True]
    assert out["cids"] == [out["published"]] and out["published"].startswith(("Qm", "bafy"))
    assert out["job_id"] in out["listed"]
    assert ("JobLevel", "Completed") in [tuple(e) for e in out["events"]]
    assert ("ExecutionLevel", "Completed") in [tuple(e) for e in out["events"]]
    # the SDK's key is Bacalhau's: user_id.pem, PKCS#1, private
    key = tmp_path / "client" / "user_id.pem"
    assert key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")

    # our own CLI sees the same job: one job model, no second store
    got = node.cli("ipfs", "get", out["cids"][0], "-o", str(tmp_path / "result"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "result" / "stdout").read_text() == "Hello from the SDK\nhola\nan inline input"
    listed = node.cli("list", "--wide")
    assert out["job_id"] in listed.stdout, listed.stdout + listed.stderr
    described = node.cli("describe", out["job_id"], "--output", "json")
    assert described.returncode == 0, described.stderr
    job = json.loads(described.stdout)
    assert job["client_id"] == out["client_id"] and job["state"] == "completed"
    assert job["spec"]["docker"]["image"] == IMAGE


STDERR_JOB = SDK_PRELUDE + """
spec = Spec(engine="Docker", verifier="Noop", publisher_spec=PublisherSpec(type="IPFS"),
            docker=JobSpecDocker(image=%r, entrypoint=["sh", "-c", "echo partial; "
                                                                   "echo 'cannot open /inputs/x: no such file' >&2; "
                                                                   "exit 3"]),
            timeout=300, deal=Deal(concurrency=1), outputs=[StorageSpec(name="outputs", path="/outputs")])
print(json.dumps(run(spec)))
"""


def test_sdk_users_see_the_error_text_a_job_wrote_on_stderr_and_so_does_describe(node: Served, tmp_path: Path) -> None:
    """RunOutput's stderr was always "": a user of the SDK saw an exit code and no word of what went wrong."""
    out = run_client("sdk", node, STDERR_JOB % IMAGE, tmp_path / "client")
    assert out["exit_code"] == 3 and out["stdout"] == "partial\n", out
    assert (out["stderr"], out["stderr_truncated"]) == ("cannot open /inputs/x: no such file\n", False)
    described = node.cli("describe", out["job_id"], "--output", "table")
    assert described.returncode == 0, described.stderr
    assert "Stderr of execution" in described.stdout, described.stdout
    assert "\ncannot open /inputs/x: no such file\n" in described.stdout, described.stdout
    as_json = json.loads(node.cli("describe", out["job_id"], "--output", "json").stdout)
    [ex] = as_json["executions"]
    assert ex["result"]["stderr_tail"] == "cannot open /inputs/x: no such file\n"


WASM_JOB = SDK_PRELUDE + """
module = "data:application/wasm;base64,%s"
spec = Spec(engine="Wasm", verifier="Noop", publisher_spec=PublisherSpec(type="IPFS"),
            wasm=JobSpecWasm(entry_module=StorageSpec(storage_source="Inline", url=module), entry_point="_start",
                             parameters=[], environment_variables={"K": "V"}),
            timeout=120, deal=Deal(concurrency=1),
            outputs=[StorageSpec(name="outputs", path="/outputs")])
print(json.dumps(run(spec)))
"""


def _hello_module(text: str) -> bytes:
    from tests.executors.test_wasm import hello

    return hello(text)


def test_sdk_runs_a_wasm_job_given_as_an_inline_module(node: Served, tmp_path: Path) -> None:
    module = base64.b64encode(_hello_module("hello from wasm via the SDK\n")).decode()
    out = run_client("sdk", node, WASM_JOB % module, tmp_path / "client")
    assert out["state"] == "Completed", out
    assert out["stdout"] == "hello from wasm via the SDK\n"
    assert out["cids"] == [out["published"]]
    got = node.cli("ipfs", "get", out["cids"][0], "-o", str(tmp_path / "r"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "r" / "stdout").read_text() == "hello from wasm via the SDK\n"


TAMPERED = """
import json
import bacalhau_sdk.api as api
from bacalhau_sdk.config import get_client_id
from bacalhau_apiclient.rest import ApiException
from bacalhau_apiclient.models.deal import Deal
from bacalhau_apiclient.models.job_spec_docker import JobSpecDocker
from bacalhau_apiclient.models.publisher_spec import PublisherSpec
from bacalhau_apiclient.models.spec import Spec
sign = api.sign_for_client
# the payload is signed as the SDK does, then changed on the way (an image swapped)
api.sign_for_client = lambda raw: sign(raw.replace(b"evil/image", b"%s"))
spec = Spec(engine="Docker", verifier="Noop", publisher_spec=PublisherSpec(type="IPFS"),
            docker=JobSpecDocker(image="evil/image", entrypoint=["true"]), deal=Deal(concurrency=1))
try:
    api.submit(dict(APIVersion="V1beta1", ClientID=get_client_id(), Spec=spec))
    print(json.dumps({"status": 200}))
except ApiException as e:
    print(json.dumps({"status": e.status, "body": e.body.decode() if isinstance(e.body, bytes) else e.body}))
"""


def test_sdk_submission_with_a_tampered_payload_gets_400(node: Served, tmp_path: Path) -> None:
    out = run_client("sdk", node, TAMPERED % IMAGE, tmp_path / "client")
    assert out["status"] == 400, out
    body = json.loads(out["body"])
    assert body["Code"] == "error-unknown-server-error"
    assert "client's signature is invalid" in body["Message"]


APICLIENT = """
import json, time
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15
import base64, hashlib
import bacalhau_apiclient
from bacalhau_apiclient.api import job_api, misc_api, utils_api
from bacalhau_apiclient.rest import ApiException
from bacalhau_apiclient.models import *

conf = bacalhau_apiclient.Configuration()
conf.host = "http://127.0.0.1:%s/"   # a trailing slash: the client then asks for //requester/...
client = bacalhau_apiclient.ApiClient(conf)
jobs = job_api.JobApi(client)

def identity():
    key = RSA.generate(2048)
    n = key.n.to_bytes((key.n.bit_length() + 7) // 8, "big")
    pub = base64.b64encode(key.publickey().export_key("DER")[24:]).decode()   # PKCS#1 from SPKI, as the SDK
    return key, hashlib.sha256(n).hexdigest(), pub

def signed(key, pub, payload_model):
    raw = json.dumps(client.sanitize_for_serialization(payload_model))
    sig = base64.b64encode(pkcs1_15.new(key).sign(SHA256.new(raw.encode()))).decode()
    return dict(client_public_key=pub, payload=payload_model, signature=sig)

owner, owner_id, owner_pub = identity()
other, other_id, other_pub = identity()
spec = Spec(engine="Docker", verifier="Noop", publisher_spec=PublisherSpec(type="IPFS"),
            docker=JobSpecDocker(image=%r, entrypoint=["sleep", "60"]), deal=Deal(concurrency=1),
            timeout=120)
job = jobs.submit(SubmitRequest(**signed(owner, owner_pub, JobCreatePayload(
    api_version="V1beta1", client_id=owner_id, spec=spec)))).job
out = {"job_id": job.metadata.id}
try:
    jobs.cancel(CancelRequest(**signed(other, other_pub, JobCancelPayload(client_id=other_id,
                                                                         job_id=job.metadata.id))))
    out["other"] = 200
except ApiException as e:
    out["other"] = e.status
out["other_then"] = jobs.states(StateRequest(client_id=other_id, job_id=job.metadata.id)).state.state
state = jobs.cancel(CancelRequest(**signed(owner, owner_pub, JobCancelPayload(
    client_id=owner_id, job_id=job.metadata.id, reason="changed my mind"))))
out["owner"] = state.state.state
try:
    jobs.cancel(CancelRequest(**signed(owner, owner_pub, JobCancelPayload(
        client_id=owner_id, job_id="00000000-0000-0000-0000-000000000000"))))
except ApiException as e:
    out["unknown"] = e.status
version = misc_api.MiscApi(client).api_serverversion(VersionRequest(client_id=owner_id)).build_version_info
out["version"] = [version.major, version.minor, version.gitversion]
utils = utils_api.UtilsApi(client)
health = utils.healthz()
out["free"] = health.free_space.root.free
info = utils.node_info()
out["peer"] = info.peer_info.id
out["node_type"] = info.node_type
out["id"] = utils.id()
out["livez"] = utils.livez()
print(json.dumps(out))
"""


def test_apiclient_cancel_by_owner_and_not_by_another_and_version_healthz_node_info(
        node: Served, tmp_path: Path) -> None:
    assert _pinned("apiclient") == {"bacalhau-apiclient": "1.0.3"}
    out = run_client("apiclient", node, APICLIENT % (node.api_port, IMAGE), tmp_path / "client")
    assert out["other"] == 401
    assert out["other_then"] in ("New", "InProgress")     # the non-owner's cancel changed nothing
    assert out["owner"] == "Cancelled"
    assert out["unknown"] == 404
    assert out["version"][:2] == ["1", "0"] and re.match(r"v1\.0\.\d+$", out["version"][2])
    assert out["free"] > 0
    node_id = node.client().node_id()["id"]
    assert out["peer"] == node_id and out["id"] == node_id
    assert out["node_type"] == 1
    assert "OK" in out["livez"]     # the apiclient hands a text body over as the repr of its bytes


def test_the_sdk_pins_are_what_the_venv_holds() -> None:
    pins = _pinned("sdk")
    assert pins == {"bacalhau-sdk": "1.0.3", "bacalhau-apiclient": "1.0.0"}
    proc = subprocess.run([str(_python("sdk")), "-c", "import importlib.metadata as m; print(m.version("
                           "'bacalhau-sdk'), m.version('bacalhau-apiclient'))"], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.split() == ["1.0.3", "1.0.0"]
    assert sys.version_info >= (3, 11)


IPFS_WASM_JOB = SDK_PRELUDE + """
from bacalhau_apiclient.rest import ApiException
def spec(cid):
    return Spec(engine="Wasm", verifier="Noop", publisher_spec=PublisherSpec(type="IPFS"),
                wasm=JobSpecWasm(entry_module=StorageSpec(storage_source="IPFS", cid=cid), entry_point="_start"),
                timeout=120, deal=Deal(concurrency=1))
out = run(spec(%r))
try:
    submit(dict(APIVersion="V1beta1", ClientID=get_client_id(), Spec=spec(%r)))
    out["too_big"] = 200
except ApiException as e:
    out["too_big"] = e.status
    out["too_big_body"] = e.body.decode() if isinstance(e.body, bytes) else e.body
print(json.dumps(out))
"""


def test_sdk_runs_a_wasm_module_given_by_ipfs_cid_and_an_oversized_one_is_refused(node: Served, tmp_path: Path) -> None:
    from bacalhau.api.bacalhau_v1.mappers import MAX_MODULE_BYTES

    module = tmp_path / "hello.wasm"
    module.write_bytes(_hello_module("hello from an IPFS module\n"))
    big = tmp_path / "big.wasm"
    big.write_bytes(b"\0asm" + b"\0" * MAX_MODULE_BYTES)
    cids = []
    for path in (module, big):
        added = node.cli("ipfs", "add", "-q", str(path))
        assert added.returncode == 0, added.stderr
        cids.append(added.stdout.strip())
    out = run_client("sdk", node, IPFS_WASM_JOB % tuple(cids), tmp_path / "client")
    assert out["state"] == "Completed" and out["stdout"] == "hello from an IPFS module\n", out
    assert out["too_big"] == 400 and "Spec.Wasm.EntryModule" in out["too_big_body"], out


TOKEN_JOB = SDK_PRELUDE + """
import bacalhau_sdk.api as api
from bacalhau_apiclient.rest import ApiException
spec = Spec(engine="Docker", verifier="Noop", publisher_spec=PublisherSpec(type="IPFS"),
            docker=JobSpecDocker(image=%r, entrypoint=["echo", "with a token"]), deal=Deal(concurrency=1))
out = {}
try:
    submit(dict(APIVersion="V1beta1", ClientID=get_client_id(), Spec=spec))
    out["without"] = 200
except ApiException as e:
    out["without"] = e.status
api.client.set_default_header("Authorization", "Bearer %s")
out.update(run(spec))
print(json.dumps(out))
"""


def _own_address() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 9))     # no packet is sent: this only picks the outgoing address
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else str(address)


def test_beyond_loopback_the_sdk_needs_the_api_token_as_a_default_header(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    served = Served(tmp_path_factory.mktemp("bapi-remote") / "node", "--host", "0.0.0.0").start()
    try:
        served.wait_ready()
        token = (served.repo / "api.token").read_text().strip()
        client_dir = tmp_path / "client"
        client_dir.mkdir()
        env = {"PATH": os.environ.get("PATH", ""), "BACALHAU_API_HOST": address,
               "BACALHAU_API_PORT": str(served.api_port), "BACALHAU_DIR": str(client_dir), "HOME": str(client_dir)}
        proc = subprocess.run([str(_python("sdk")), "-c", TOKEN_JOB % (IMAGE, token)], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["without"] == 401
        assert out["state"] == "Completed" and out["stdout"] == "with a token\n"
    finally:
        if served.proc is not None and served.proc.poll() is None:
            served.stop()
