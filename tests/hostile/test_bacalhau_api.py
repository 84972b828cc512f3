"""Attacks on the Bacalhau 1.0 API (api/bacalhau_v1): forged and malformed signed envelopes, keys Go would
refuse, hostile job specs. Each test is the attack; it fails on a naive version (noted per test)."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from bacalhau.api.bacalhau_v1.envelope import BadRequest, parse_signed
from bacalhau.rsa_identity import client_id_of, load_or_create, public_key_b64, sign_payload, verify_payload

_KEYS: dict[str, Any] = {}


def key(name: str = "a") -> Any:
    # RSA-2048 generation costs ~0.1 s: one key per name for the whole module
    if name not in _KEYS:
        from cryptography.hazmat.primitives.asymmetric import rsa

        _KEYS[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS[name]


def payload_text(client_id: str, **extra: Any) -> str:
    return json.dumps({"APIVersion": "V1beta1", "ClientID": client_id, **extra})


def envelope(text: str, k: Any = None, *, payload_key: str = "payload", public_key: str | None = None,
             signature: str | None = None) -> bytes:
    """A body as the SDK builds it: the signed payload text embedded verbatim."""
    k = k or key()
    sig = signature if signature is not None else sign_payload(k, text.encode())
    pk = public_key if public_key is not None else public_key_b64(k.public_key())
    return ('{"client_public_key": %s, "%s": %s, "signature": %s}' % (
        json.dumps(pk), payload_key, text, json.dumps(sig))).encode()


def test_the_key_file_is_pkcs1_and_private_from_the_start_and_pkcs8_loads(tmp_path: Path) -> None:
    path = tmp_path / "user_id.pem"
    k = load_or_create(path)
    assert path.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert k.key_size == 2048 and k.public_key().public_numbers().e == 65537
    assert client_id_of(load_or_create(path).public_key()) == client_id_of(k.public_key())
    from cryptography.hazmat.primitives import serialization

    pkcs8 = tmp_path / "pkcs8.pem"
    pkcs8.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    assert client_id_of(load_or_create(pkcs8).public_key()) == client_id_of(k.public_key())
    assert public_key_b64(k.public_key()).startswith("MIIBCgKCAQEA")
    assert len(client_id_of(k.public_key())) == 64


def test_a_valid_envelope_verifies_over_the_bytes_as_sent() -> None:
    # odd spacing and key order: a server that re-serialised the payload before verifying would fail here
    text = '{ "ClientID" :"%s",  "APIVersion":"V1beta1" , "Spec": {"b": 1,"a":[ 1 ,2]}}' % client_id_of(
        key().public_key())
    signed = parse_signed(envelope(text))
    assert signed.client_id == client_id_of(key().public_key())
    assert signed.raw_payload == text.encode()
    assert signed.payload["Spec"] == {"b": 1, "a": [1, 2]}


def test_envelope_keys_match_case_insensitively_and_the_old_payload_key_is_taken() -> None:
    cid = client_id_of(key().public_key())
    assert parse_signed(envelope(payload_text(cid), payload_key="Payload")).client_id == cid
    assert parse_signed(envelope(payload_text(cid), payload_key="job_create_payload")).client_id == cid


def test_a_tampered_payload_is_refused() -> None:
    cid = client_id_of(key().public_key())
    text = payload_text(cid, Spec={"Engine": "Docker"})
    body = envelope(text).replace(b'"Docker"', b'"Wasm"')
    with pytest.raises(BadRequest, match="client's signature is invalid"):
        parse_signed(body)


def test_a_payload_signed_by_one_key_for_anothers_client_id_is_refused() -> None:
    # the signature is good, but the ClientID claimed is the victim's: the job would be theirs to cancel
    victim = client_id_of(key("victim").public_key())
    with pytest.raises(BadRequest, match="client's public key does not match client ID"):
        parse_signed(envelope(payload_text(victim), key("attacker")))


def test_an_spki_public_key_is_refused_as_go_refuses_it() -> None:
    # cryptography's DER loader takes SPKI as readily as PKCS#1; Go's ParsePKCS1PublicKey does not
    from cryptography.hazmat.primitives import serialization

    spki = base64.b64encode(key().public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    with pytest.raises(BadRequest, match="ParsePKIXPublicKey"):
        parse_signed(envelope(payload_text(client_id_of(key().public_key())), public_key=spki))


def test_a_public_key_with_trailing_bytes_is_refused() -> None:
    der = base64.b64decode(public_key_b64(key().public_key())) + b"\x00"
    with pytest.raises(BadRequest, match="x509"):
        parse_signed(envelope(payload_text(client_id_of(key().public_key())),
                              public_key=base64.b64encode(der).decode()))


def test_a_huge_rsa_key_is_refused_before_any_costly_verify() -> None:
    # a 16384-bit modulus verifies ~60 times slower than 2048: refused by size (n built by hand, not generated)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    n = (1 << 16383) | 1 | (int.from_bytes(os.urandom(64), "big") << 8)
    pub = rsa.RSAPublicNumbers(65537, n).public_key()
    pk = base64.b64encode(pub.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.PKCS1)).decode()
    with pytest.raises(BadRequest):
        parse_signed(envelope(payload_text(client_id_of(pub)), public_key=pk, signature="AAAA"))


@pytest.mark.parametrize("signature", ["", "not base64!", "QUJD\n", "-_-_"])
def test_malformed_signatures_are_refused(signature: str) -> None:
    with pytest.raises(BadRequest):
        parse_signed(envelope(payload_text(client_id_of(key().public_key())), signature=signature))


def test_a_missing_or_null_payload_is_refused_with_gos_message() -> None:
    pk = json.dumps(public_key_b64(key().public_key()))
    for body in ('{"client_public_key": %s, "signature": "AAAA"}' % pk,
                 '{"client_public_key": %s, "payload": null, "signature": "AAAA"}' % pk):
        with pytest.raises(BadRequest, match="no payload contained in signed message"):
            parse_signed(body.encode())


def test_two_payloads_in_one_envelope_are_refused() -> None:
    # a signed payload and a second, unsigned one: a reader taking the other one than the verifier would run
    # a job nobody signed
    cid = client_id_of(key().public_key())
    good = envelope(payload_text(cid))
    forged = good[:-1] + b', "PAYLOAD": %s}' % payload_text(cid, Spec={"x": 1}).encode()
    with pytest.raises(BadRequest, match="twice"):
        parse_signed(forged)


def test_duplicate_keys_inside_a_signed_payload_are_refused() -> None:
    cid = client_id_of(key().public_key())
    text = '{"ClientID": "%s", "Spec": {"Engine": "Docker", "Engine": "Wasm"}}' % cid
    with pytest.raises(BadRequest, match="duplicate key"):
        parse_signed(envelope(text))


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    cid = client_id_of(key().public_key())
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(BadRequest, match="nested too deeply"):
        parse_signed(envelope(payload_text(cid)[:-1] + ', "Spec": %s}' % deep))


def test_nan_in_a_payload_is_refused() -> None:
    cid = client_id_of(key().public_key())
    with pytest.raises(BadRequest, match="NaN"):
        parse_signed(envelope('{"ClientID": "%s", "Spec": {"Timeout": NaN}}' % cid))


@pytest.mark.parametrize("body", [b"", b"[]", b"\xff\xfe{}", b'{"payload": {}} trailing', b'{"payload" {}}'])
def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_signed(body)


def test_verify_payload_returns_the_signers_client_id() -> None:
    raw = b'{"ClientID": "x"}'
    assert verify_payload(raw, sign_payload(key(), raw), public_key_b64(key().public_key())) == \
        client_id_of(key().public_key())


# -- hostile job specs (mappers.py): refused with a reason, bounded while decoding ----------------------------

def submit_payload(spec: dict[str, Any], k: Any = None) -> dict[str, Any]:
    return {"APIVersion": "V1beta1", "ClientID": client_id_of((k or key()).public_key()), "Spec": spec}


def docker_spec(**extra: Any) -> dict[str, Any]:
    return {"Engine": "Docker", "Verifier": "Noop", "PublisherSpec": {"Type": "IPFS"},
            "Docker": {"Image": "bacalhau/busybox:latest", "Entrypoint": ["echo", "hi"]},
            "Deal": {"Concurrency": 1}, **extra}


def wasm_spec(url: str) -> dict[str, Any]:
    return {"Engine": "Wasm", "Verifier": "Noop", "PublisherSpec": {"Type": "IPFS"}, "Deal": {"Concurrency": 1},
            "Wasm": {"EntryModule": {"StorageSource": "Inline", "URL": url}, "EntryPoint": "_start"}}


def to_spec(spec: dict[str, Any]) -> Any:
    from bacalhau.api.bacalhau_v1.mappers import spec_from_payload

    return spec_from_payload(submit_payload(spec))


def test_the_sdk_docker_payload_maps_to_our_spec_with_enums_in_any_case() -> None:
    from bacalhau.models import Engine, Network

    spec = to_spec({"Deal": {"Concurrency": 2, "Confidence": 0, "MinBids": 0}, "DoNotTrack": False,
                    "Docker": {"Entrypoint": ["echo", "Hello World!"], "Image": "ubuntu",
                               "EnvironmentVariables": ["A=1", "B=x=y"], "WorkingDirectory": "/w"},
                    "engine": " docker ", "Language": {}, "PublisherSpec": {"Type": "ipfs"}, "Timeout": 0,
                    "Verifier": "NOOP", "Network": {"Type": "full"}, "Annotations": ["gpu", "team=a"],
                    "Resources": {"CPU": "500m", "Memory": "1Gb"},
                    "NodeSelectors": [{"Key": "zone", "Operator": "in", "Values": ["eu", "us"]},
                                      {"Key": "old", "Operator": "!", "Values": []}],
                    "inputs": [{"StorageSource": "ipfs", "CID": "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
                                "path": "/inputs/data"}],
                    "outputs": [{"Name": "outputs", "StorageSource": "IPFS", "path": "/outputs"}]})
    assert spec.engine == Engine.DOCKER and spec.docker.entrypoint == ["echo", "Hello World!"]
    assert spec.docker.env == {"A": "1", "B": "x=y"} and spec.docker.working_dir == "/w"
    assert spec.timeout == 1800 and spec.concurrency == 2 and spec.network == Network.HOST
    assert spec.labels == {"gpu": "", "team": "a"}
    assert spec.resources.cpu == 0.5 and spec.resources.memory == 1000**3
    assert spec.node_selector == "zone in (eu,us),!old"
    assert spec.inputs[0].source == "ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"


def test_our_job_maps_back_to_the_shape_it_came_in() -> None:
    from bacalhau.api.bacalhau_v1.mappers import spec_out

    given = docker_spec(Annotations=["gpu", "team=a"], Timeout=60,
                        inputs=[{"StorageSource": "Inline", "URL": "data:text/plain;base64,aGk=",
                                 "path": "/inputs/hi.txt"}],
                        NodeSelectors=[{"Key": "zone", "Operator": "=", "Values": ["eu"]}])
    back = spec_out(to_spec(given))
    assert back["Docker"] == given["Docker"] and back["Annotations"] == given["Annotations"]
    assert back["inputs"] == [{"StorageSource": "Inline", "URL": "data:application/octet-stream;base64,aGk=",
                               "path": "/inputs/hi.txt"}]
    assert back["NodeSelectors"] == given["NodeSelectors"] and back["Timeout"] == 60
    assert back["outputs"] == [{"StorageSource": "IPFS", "Name": "outputs", "path": "/outputs"}]


@pytest.mark.parametrize(("extra", "named"), [
    ({"Verifier": "Deterministic"}, "Verifier Deterministic"),
    ({"PublisherSpec": {"Type": "S3"}}, "Publisher S3"),
    ({"Network": {"Type": "HTTP", "Domains": ["example.com"]}}, "Domains"),
    ({"Resources": {"GPU": "1"}}, "GPU"),
    ({"Resources": {"Disk": "10Gb"}}, "Disk"),
    ({"Deal": {"Concurrency": 2, "Confidence": 2}}, "Confidence"),
    ({"inputs": [{"StorageSource": "S3", "path": "/inputs"}]}, "storage source S3"),
    ({"inputs": [{"StorageSource": "RepoClone", "URL": "https://x", "path": "/inputs"}]}, "RepoClone"),
    ({"inputs": [{"StorageSource": "IPFS", "CID": "Qm", "path": "/in", "ReadWrite": True}]}, "ReadWrite"),
    ({"outputs": [{"Name": "results", "path": "/results"}]}, "/results"),
    ({"Language": {"Language": "python"}}, "Language"),
    ({"Engine": "PythonWasm"}, "PythonWasm"),
    ({"NodeSelectors": [{"Key": "mem", "Operator": "gt", "Values": ["4"]}]}, "gt"),
])
def test_what_we_cannot_honour_is_refused_by_name_never_dropped(extra: dict[str, Any], named: str) -> None:
    # a naive mapper keeps the fields it knows and drops the rest: the job would run unverified, unpublished
    # where asked, on a GPU-less node...
    with pytest.raises(BadRequest, match="not supported here") as info:
        to_spec(docker_spec(**extra))
    assert named in str(info.value)


@pytest.mark.parametrize(("extra", "message"), [
    ({"Engine": "Dockr"}, "unknown value 'Dockr'"),
    ({"Verifier": 1}, "must be a string"),
    ({"Deal": {"Concurrency": "1"}}, "must be an integer"),
    ({"Deal": {"Concurrency": 0}}, "concurrency must be >= 1"),
    ({"Deal": {}}, "Deal is empty"),
    ({"Deal": {"Concurrency": 1.5}}, "must be an integer"),
    ({"PublisherSpec": {}}, "invalid publisher type"),
    ({"Verifier": ""}, "invalid verifier type"),
    ({"Docker": {"Image": ""}}, "Image is empty"),
    ({"Docker": {"Image": "x", "EnvironmentVariables": ["NOEQUALS"]}}, "NAME=VALUE"),
    ({"Timeout": "60"}, "must be a number"),
    ({"Timeout": 1e300}, "timeout"),
    ({"inputs": [{"StorageSource": "Nope", "path": "/i"}]}, "unknown value 'Nope'"),
    ({"inputs": [{"StorageSource": "URLDownload", "URL": "file:///etc/passwd", "path": "/i"}]}, "http"),
    ({"inputs": [{"StorageSource": "Inline", "URL": "data:,x", "path": "/x"}]}, "name a file in a directory"),
    ({"inputs": [{"StorageSource": "Inline", "URL": "data:,x", "path": "/inputs/../outputs/x"}]}, "input path"),
    ({"Annotations": "gpu"}, "must be an array"),
])
def test_gos_validation_and_type_checks(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message) if message[0].isalpha() else message):
        to_spec(docker_spec(**extra))


def test_a_selector_value_cannot_smuggle_a_second_requirement() -> None:
    # joined naively, Key "zone=eu,tier" with Operator exists would read as two requirements
    for selector in ({"Key": "zone=eu,tier", "Operator": "exists", "Values": []},
                     {"Key": "zone", "Operator": "in", "Values": ["eu),gpu in (a100"]}):
        with pytest.raises(BadRequest):
            to_spec(docker_spec(NodeSelectors=[selector]))


def test_a_gzip_bomb_module_is_stopped_at_the_cap_without_inflating_it() -> None:
    # 128 MiB of zeros gzip to ~130 kB (made a MiB at a time); zlib.decompress() of it would take 128 MiB
    import tracemalloc
    import zlib

    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * 1024**2
    bomb = b"".join(deflate.compress(zeros) for _ in range(128)) + deflate.flush()
    url = "data:application/gzip;base64," + base64.b64encode(bomb).decode()
    spec = wasm_spec(url)
    tracemalloc.start()
    try:
        with pytest.raises(BadRequest, match="inflates to more than"):
            to_spec(spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 * 1024**2


def test_an_oversized_inline_module_is_refused_before_decoding() -> None:
    from bacalhau.api.bacalhau_v1.mappers import MAX_MODULE_BYTES

    url = "data:application/wasm;base64," + "A" * (MAX_MODULE_BYTES * 4 // 3 + 400)
    with pytest.raises(BadRequest, match="more than"):
        to_spec(wasm_spec(url))


def test_inline_modules_plain_gzipped_and_as_the_go_clis_gzipped_tar_all_load() -> None:
    import gzip
    import io
    import tarfile

    from tests.executors.test_wasm import hello

    module = hello("x\n")
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        info = tarfile.TarInfo("main.wasm")
        info.size = len(module)
        tar.addfile(info, io.BytesIO(module))
    for url in ("data:application/wasm;base64," + base64.b64encode(module).decode(),
                "data:application/gzip;base64," + base64.b64encode(gzip.compress(module)).decode(),
                "data:application/gzip;base64," + base64.b64encode(gzip.compress(tar_buf.getvalue())).decode()):
        spec = to_spec(wasm_spec(url))
        assert base64.b64decode(spec.wasm.module.removeprefix("base64:")) == module
    with pytest.raises(BadRequest, match="not a WASM module"):
        to_spec(wasm_spec("data:application/wasm;base64," + base64.b64encode(b"MZ\x90\x00").decode()))


def test_import_modules_are_refused() -> None:
    from tests.executors.test_wasm import hello

    spec = wasm_spec("data:application/wasm;base64," + base64.b64encode(hello()).decode())
    spec["Wasm"]["ImportModules"] = [{"StorageSource": "IPFS", "CID": "Qm"}]
    with pytest.raises(BadRequest, match="ImportModules"):
        to_spec(spec)


# -- over HTTP, against a node (noop engine, in-memory bprotocol): the node keeps serving -----------------------

JSON_HEADERS = {"Content-Type": "application/json"}


async def post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    import http.client
    from functools import partial

    import trio

    def go() -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            try:
                conn.request("POST", path, body=body, headers={**JSON_HEADERS, **(headers or {})})
            except (BrokenPipeError, ConnectionResetError):
                pass      # refused by its declared length before it was all sent: the answer is there
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    return await trio.to_thread.run_sync(partial(go))


NOOP_SPEC = {"Engine": "Noop", "Verifier": "Noop", "PublisherSpec": {"Type": "IPFS"}, "Deal": {"Concurrency": 1}}


async def test_deep_json_huge_bodies_and_a_job_id_header_get_400_and_the_node_serves_on(api_node: Any) -> None:
    port = api_node.api_port
    status, body = await post(port, "/requester/submit", b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and json.loads(body)["Code"] == "error-unknown-server-error"
    status, body = await post(port, "/api/v1/requester/states", b'{"job_id": ' + b"[" * 100_000 + b"]" * 100_000
                              + b"}")
    assert status == 400 and b"nested too deeply" in body
    status, body = await post(port, "/requester/submit", b'{"payload": "' + b"x" * (11 * 1024**2) + b'"}')
    assert status == 400 and b"over" in body
    good = envelope(json.dumps(submit_payload(NOOP_SPEC)))
    status, body = await post(port, "/requester/submit", good, {"X-Bacalhau-Job-ID": "mine"})
    assert status == 400 and b"X-Bacalhau-Job-ID" in body
    status, body = await post(port, "/requester/submit", good)
    assert status == 200, body
    job = json.loads(body)["job"]
    assert job["Metadata"]["ClientID"] == client_id_of(key().public_key())


async def test_states_of_an_unknown_job_is_gos_500_and_version_needs_a_json_body(api_node: Any) -> None:
    port = api_node.api_port
    status, body = await post(port, "/requester/states", b'{"client_id": "x", "job_id": "nope"}')
    assert (status, body) == (500, b"Job not found. ID: nope\n")
    status, body = await post(port, "/version", b"")
    assert (status, body) == (400, b"EOF\n")
    status, body = await post(port, "//api/v1//version", b'{"client_id": "x"}')
    assert status == 200 and json.loads(body)["build_version_info"]["major"] == "1"


async def test_a_web_page_cannot_submit_through_the_bacalhau_api(api_node: Any) -> None:
    # a form POST (no preflight) from a page on the node's machine: text/plain, a foreign Origin
    good = envelope(json.dumps(submit_payload(NOOP_SPEC)))
    status, _ = await post(api_node.api_port, "/requester/submit", good, {"Content-Type": "text/plain"})
    assert status == 415
    status, _ = await post(api_node.api_port, "/requester/submit", good, {"Origin": "http://evil.example"})
    assert status == 403
    assert await api_node.requester.store.list_jobs(None) == []


async def test_another_clients_env_values_are_not_shown_by_list_or_submit(api_node: Any) -> None:
    # list takes an unsigned client_id (and return_all): nothing proves who asks, so no env value is shown
    spec = dict(NOOP_SPEC, Engine="Docker", Docker={"Image": "x", "EnvironmentVariables": ["TOKEN=s3cret"]})
    status, body = await post(api_node.api_port, "/requester/submit",
                              envelope(json.dumps(submit_payload(spec, key("victim"))), key("victim")))
    assert status == 200 and b"s3cret" not in body
    status, body = await post(api_node.api_port, "/requester/list",
                              json.dumps({"client_id": "someone", "return_all": True, "max_jobs": 10}).encode())
    assert status == 200 and b"s3cret" not in body
    jobs = json.loads(body)["jobs"]
    assert jobs and jobs[0]["Job"]["Spec"]["Docker"]["EnvironmentVariables"] == ["TOKEN=***"]
    status, body = await post(api_node.api_port, "/requester/list",
                              json.dumps({"client_id": "someone", "max_jobs": 10}).encode())
    assert json.loads(body)["jobs"] == []     # not return_all: only the asker's own


def _events_socket(port: int, query: str) -> tuple[list[dict[str, Any]], int | None]:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    frames = []
    with connect(f"ws://127.0.0.1:{port}/api/v1/requester/websocket/events{query}", open_timeout=10) as ws:
        try:
            while True:
                frames.append(json.loads(ws.recv(timeout=20)))
        except ConnectionClosed:
            pass
        return frames, ws.close_code


async def test_the_events_websocket_replays_a_jobs_history_and_closes_when_it_ends(api_node: Any) -> None:
    import trio

    status, body = await post(api_node.api_port, "/requester/submit",
                              envelope(json.dumps(submit_payload(NOOP_SPEC))))
    job_id = json.loads(body)["job"]["Metadata"]["ID"]
    frames, code = await trio.to_thread.run_sync(_events_socket, api_node.api_port, f"?job_id={job_id}")
    assert code == 1000
    assert ("JobLevel", "Completed") in [(f["Type"], (f.get("JobState") or {}).get("New")) for f in frames]
    assert all(f["JobID"] == job_id for f in frames)
    # every job's events to whoever asks: refused
    frames, code = await trio.to_thread.run_sync(_events_socket, api_node.api_port, "")
    assert (frames, code) == ([], 1008)


def test_job_state_right_after_submit_has_executions_null_and_history_drops_previous_new() -> None:
    # the SDK's docs loop over `executions or []`; Go sends null before any, and omits a Previous of New
    from bacalhau.api.bacalhau_v1.mappers import history_out, job_state_out
    from bacalhau.models import Event, Execution, ExecutionState, Job, JobState, RunResult

    job = Job(spec=to_spec(docker_spec()))
    job.events = [Event(time=1.0, kind="job", subject=job.id, state="pending")]
    state = job_state_out(job)
    assert state["Executions"] is None and state["State"] == "New" and state["TimeoutAt"] == "0001-01-01T00:00:00Z"
    assert history_out(job)[0]["JobState"] == {"New": "New"}

    ex = Execution(job_id=job.id, node_id="QmNode", state=ExecutionState.COMPLETED,
                   result=RunResult(exit_code=0, stdout_bytes=3, stdout_tail="hi\n"),
                   result_ref="ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG")
    job.executions, job.state = [ex], JobState.COMPLETED
    job.events += [Event(time=2.0, kind="execution", subject=ex.id, state="bid_accepted", node_id="QmNode"),
                   Event(time=3.0, kind="execution", subject=ex.id, state="completed", node_id="QmNode"),
                   Event(time=4.0, kind="job", subject=job.id, state="completed")]
    out = job_state_out(job)["Executions"][0]
    assert out["NodeId"] == "QmNode" and out["ComputeReference"] == f"e-{ex.id}" and out["State"] == "Completed"
    assert out["VerificationResult"] == {"Complete": True, "Result": True}
    assert out["PublishedResults"]["CID"] == "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
    assert out["RunOutput"] == {"stdout": "hi\n", "stdouttruncated": False, "stderr": "",
                                "stderrtruncated": False, "exitCode": 0, "runnerError": ""}
    history = history_out(job, since=2.5)
    assert [h["Type"] for h in history] == ["ExecutionLevel", "JobLevel"]
    assert history[0]["ExecutionState"] == {"New": "Completed", "Previous": "BidAccepted"}
    assert history[1]["JobState"] == {"New": "Completed"}      # Previous New: omitted, as Go's omitempty


def test_a_legacy_client_with_only_publisher_and_job_create_payload_is_served() -> None:
    # bacalhau-sdk 0.3.25 and earlier: no PublisherSpec, the envelope's key job_create_payload
    spec = docker_spec()
    del spec["PublisherSpec"]
    spec["Publisher"] = "Ipfs"
    signed = parse_signed(envelope(json.dumps(submit_payload(spec)), payload_key="job_create_payload"))
    from bacalhau.api.bacalhau_v1.mappers import spec_from_payload

    assert spec_from_payload(signed.payload).docker.image == "bacalhau/busybox:latest"


@pytest.mark.slow
async def test_an_ipfs_module_held_elsewhere_is_fetched_only_up_to_a_block_cap(tmp_path: Path) -> None:
    # the requester fetches an IPFS entry module at submit: a CID naming 40 MiB must not be fetched whole
    # before its size is refused (a naive fetch_cid, then a size check, takes all 160 leaves)
    import trio

    from bacalhau.ipfs.dagpb import decode_links
    from bacalhau.ipfs.unixfs import add_path, cid_to_bytes
    from bacalhau.models import NodeType
    from bacalhau.node import Node
    from tests.conftest import node_config

    big = tmp_path / "big.wasm"
    big.write_bytes(b"\0asm" + os.urandom(40 * 1024**2))
    async with trio.open_nursery() as nursery:
        req = await nursery.start(Node(node_config(tmp_path / "req", engines=("noop",))).run)
        other = await nursery.start(Node(node_config(tmp_path / "other", node_types=(NodeType.COMPUTE,),
                                                     serve_api=False, engines=("noop",),
                                                     peers=(req.addrs()[0],))).run)
        root = add_path(big, put=other.blockstore.put)[-1][0]
        with trio.fail_after(20):
            while len(req.requester.nodes.alive()) < 2:
                await trio.sleep(0.05)
        spec = dict(NOOP_SPEC, Engine="Wasm", Wasm={"EntryModule": {"StorageSource": "IPFS", "CID": root}})
        status, body = await post(req.api_port, "/requester/submit", envelope(json.dumps(submit_payload(spec))))
        leaves = [link.cid for link in decode_links(other.blockstore.get(cid_to_bytes(root)))]
        assert len(leaves) > 150
        held = sum(req.blockstore.has(c) for c in leaves)
        assert held <= 64, held
        assert status == 400 and b"is over 32 blocks" in body, body
        nursery.cancel_scope.cancel()


def test_two_keys_for_one_field_in_different_case_are_refused() -> None:
    # Go takes the later of "Engine" and "engine", a reader preferring the exact key the former: refused
    cid = client_id_of(key().public_key())
    text = '{"APIVersion": "V1beta1", "ClientID": "%s", "Spec": {"Engine": "Docker", "engine": "Wasm"}}' % cid
    signed = parse_signed(envelope(text))
    from bacalhau.api.bacalhau_v1.mappers import spec_from_payload

    with pytest.raises(BadRequest, match="both 'Engine' and 'engine'"):
        spec_from_payload(signed.payload)
    with pytest.raises(BadRequest, match="both"):
        parse_signed(envelope('{"ClientID": "%s", "clientid": "%s"}' % (cid, "0" * 64)))


async def test_list_filters_by_annotations_short_id_and_sorts_before_it_limits(api_node: Any) -> None:
    ids = []
    for tags in (["a"], ["b"], ["a", "team=x"]):
        status, body = await post(api_node.api_port, "/requester/submit",
                                  envelope(json.dumps(submit_payload(dict(NOOP_SPEC, Annotations=tags)))))
        assert status == 200, body
        ids.append(json.loads(body)["job"]["Metadata"]["ID"])
    cid = client_id_of(key().public_key())

    async def listed(**query: Any) -> list[str]:
        status, body = await post(api_node.api_port, "/requester/list", json.dumps({"client_id": cid, **query}).encode())
        assert status == 200, body
        return [j["Job"]["Metadata"]["ID"] for j in json.loads(body)["jobs"]]

    assert await listed(include_tags=["a"], max_jobs=10) == [ids[0], ids[2]]
    assert await listed(exclude_tags=["team=x"], max_jobs=10) == [ids[0], ids[1]]
    assert await listed(max_jobs=1, sort_by="created_at", sort_reverse=True) == [ids[2]]
    assert await listed(max_jobs=1, sort_by="created_at", sort_reverse=False) == [ids[0]]
    assert await listed(id=ids[1][:8]) == [ids[1]]
    status, body = await post(api_node.api_port, "/requester/list", b'{"id": "ffffffff"}')
    assert status == 400 and json.loads(body)["Code"] == "error-unknown-server-error"


def test_an_oversized_inline_input_is_refused_before_decoding_and_a_small_one_is_a_file() -> None:
    from bacalhau.api.bacalhau_v1.mappers import MAX_INLINE_BYTES

    huge = "data:text/plain;base64," + "QUFB" * (MAX_INLINE_BYTES // 3 + 10)
    with pytest.raises(BadRequest, match="more than"):
        to_spec(docker_spec(inputs=[{"StorageSource": "Inline", "URL": huge, "path": "/inputs/big"}]))
    spec = to_spec(docker_spec(inputs=[{"StorageSource": "Inline", "URL": "data:,hello%20there",
                                        "path": "/inputs/note.txt"}]))
    assert spec.inputs[0].path == "/inputs"
    assert spec.inputs[0].source == "inline:note.txt;base64," + base64.b64encode(b"hello there").decode()


async def test_a_megabyte_job_id_never_reaches_the_store_as_a_like_pattern(api_node: Any, monkeypatch: Any) -> None:
    # resolve_id matches a prefix with LIKE: a 1 MB "id" is a 1 MB pattern tried on every job row
    store = api_node.requester.store
    asked: list[int] = []
    real = store.resolve_id

    async def spy(prefix: str) -> str:      # records what reaches the real store, which still answers
        asked.append(len(prefix))
        return await real(prefix)

    monkeypatch.setattr(store, "resolve_id", spy)
    huge = "a" * 1_000_000
    for path, body in (("/requester/states", {"job_id": huge}), ("/requester/results", {"job_id": huge}),
                       ("/requester/events", {"job_id": huge}), ("/requester/list", {"id": huge}),
                       ("/requester/states", {"job_id": "ab%_"})):
        status, _ = await post(api_node.api_port, path, json.dumps(body).encode())
        assert status in (400, 500)
    status, _ = await post(api_node.api_port, "/requester/cancel",
                           envelope(json.dumps({"ClientID": client_id_of(key().public_key()), "JobID": huge})))
    assert status == 404
    assert asked == []
