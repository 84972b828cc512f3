"""One client identity per user (RSA user_id.pem, as Bacalhau's SDK has it), the legacy Ed25519 client.key
still good for the jobs it owns, and the signatures of both as an attacker would bend them."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from bacalhau.node import Node
from bacalhau.rsa_identity import client_id_of, load_or_create
from bacalhau.signing import load_or_create_client_key, sign
from tests.conftest import run_cli
from tests.test_api import post

NOOP = {"engine": "noop", "noop": {"sleep": 30}}
ENV_JOB = {"engine": "docker", "docker": {"image": "x", "env": {"TOKEN": "hunter2"}}}   # no docker here: it fails


def submit_body(key: Any, spec: dict[str, Any], cluster_id: str) -> dict[str, Any]:
    return {"spec": spec, **sign(key, {"submit": spec}, cluster_id)}


async def submitted(node: Node, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    assert node.api_port is not None
    return await trio.to_thread.run_sync(post, node.api_port, "/api/v1/jobs", json.dumps(body).encode())


async def job_count(node: Node) -> int:
    assert node.requester is not None
    return len(await node.requester.store.list_jobs(None))


async def test_a_replayed_signature_spelt_another_way_is_still_a_replay(api_node: Node, tmp_path: Path) -> None:
    # hex takes either case and base64 leaves the last character's low bits free: the same signature bytes,
    # another string. The replay check was keyed by the string, so a captured request passed twice.
    legacy = load_or_create_client_key(tmp_path / "client.key")
    body = submit_body(legacy, NOOP, api_node.cluster_id)
    assert (await submitted(api_node, body))[0] == 201
    status, data = await submitted(api_node, {**body, "signature": body["signature"].upper()})
    assert status == 409 and "already used" in data["error"], data

    rsa = load_or_create(tmp_path / "user_id.pem")
    body = submit_body(rsa, NOOP, api_node.cluster_id)
    assert (await submitted(api_node, body))[0] == 201
    sig = body["signature"]
    assert sig.endswith("==")   # 256 bytes: the character before "==" carries 2 bits and 4 free ones
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    respelt = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 0b0001] + "=="
    assert respelt != sig and base64.b64decode(respelt) == base64.b64decode(sig)
    status, data = await submitted(api_node, {**body, "signature": respelt})
    assert status == 409 and "already used" in data["error"], data
    assert await job_count(api_node) == 2


async def test_an_rsa_key_cannot_sign_for_another_client_id(api_node: Node, tmp_path: Path) -> None:
    alice, mallory = load_or_create(tmp_path / "alice.pem"), load_or_create(tmp_path / "mallory.pem")
    body = submit_body(alice, NOOP, api_node.cluster_id)
    assert (await submitted(api_node, body))[0] == 201
    job_id = (await api_node.requester.store.list_jobs(1))[0].id   # type: ignore[union-attr]
    cancel = sign(mallory, {"cancel": job_id}, api_node.cluster_id)
    cancel["client_id"] = client_id_of(alice.public_key())   # mallory's key, alice's id
    assert api_node.api_port is not None
    status, data = await trio.to_thread.run_sync(
        post, api_node.api_port, f"/api/v1/jobs/{job_id}/cancel", json.dumps(cancel).encode())
    assert status == 400 and "not the id of the key" in data["error"], data
    spki = sign(mallory, {"submit": NOOP}, api_node.cluster_id)   # Go's rule: a PKCS#1 key, not SPKI
    from cryptography.hazmat.primitives import serialization
    spki["client_public_key"] = base64.b64encode(mallory.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    assert (await submitted(api_node, {"spec": NOOP, **spki}))[0] == 400
    assert (await api_node.requester.store.get_job(job_id)).state.value != "cancelled"   # type: ignore[union-attr]


@pytest.mark.slow
async def test_the_cli_signs_with_user_id_pem_the_sdks_key_and_owner(api_node: Node, tmp_path: Path) -> None:
    state = tmp_path / "client"
    state.mkdir()
    sdk_key = load_or_create(state / "user_id.pem")   # as the SDK leaves it: PKCS#1 PEM
    res = await run_cli(api_node, "create", "-", env={"BACALHAU_DIR": str(state)}, stdin=json.dumps(NOOP).encode())
    assert res.returncode == 0, res.stderr
    job = await api_node.requester.store.get_job(res.stdout.strip())   # type: ignore[union-attr]
    assert job.client_id == client_id_of(sdk_key.public_key())
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    res = await run_cli(api_node, "create", "-", env={"BACALHAU_DIR": str(fresh)}, stdin=json.dumps(NOOP).encode())
    assert res.returncode == 0, res.stderr
    made = fresh / "user_id.pem"
    assert made.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o600 and not (fresh / "client.key").exists()
    job = await api_node.requester.store.get_job(res.stdout.strip())   # type: ignore[union-attr]
    assert job.client_id == client_id_of(load_or_create(made).public_key())


@pytest.mark.slow
async def test_a_client_dir_of_the_old_layout_keeps_the_jobs_its_legacy_key_owns(api_node: Node, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    legacy = load_or_create_client_key(old / "client.key")   # the layout before user_id.pem
    status, data = await submitted(api_node, submit_body(legacy, ENV_JOB, api_node.cluster_id))
    assert status == 201
    job_id, env = data["id"], {"BACALHAU_DIR": str(old)}
    mallory = {"BACALHAU_DIR": str(tmp_path / "mallory")}
    seen = await run_cli(api_node, "describe", job_id, "-o", "json", env=mallory)
    assert json.loads(seen.stdout)["spec"]["docker"]["env"] == {"TOKEN": "***"}
    own = await run_cli(api_node, "describe", job_id, "-o", "json", env=env)
    assert own.returncode == 0 and json.loads(own.stdout)["spec"]["docker"]["env"] == {"TOKEN": "hunter2"}
    status, data = await submitted(api_node, submit_body(legacy, NOOP, api_node.cluster_id))
    assert status == 201
    running = data["id"]
    refused = await run_cli(api_node, "cancel", running, env=mallory)
    assert refused.returncode == 1 and "only the client that submitted" in refused.stderr
    cancelled = await run_cli(api_node, "cancel", running[:8], env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert (await api_node.requester.store.get_job(running)).state.value == "cancelled"   # type: ignore[union-attr]
    # new jobs from that dir are owned by its RSA identity, made beside the old key
    res = await run_cli(api_node, "create", "-", env=env, stdin=json.dumps(NOOP).encode())
    assert res.returncode == 0, res.stderr
    job = await api_node.requester.store.get_job(res.stdout.strip())   # type: ignore[union-attr]
    assert job.client_id == client_id_of(load_or_create(old / "user_id.pem").public_key())
    assert (old / "client.key").exists()
