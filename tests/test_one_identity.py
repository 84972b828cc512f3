"""One identity per user: the official SDK and our CLI, from the same BACALHAU_DIR, are the same job owner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bacalhau.rsa_identity import client_id_of, load_or_create
from tests.conftest import Served
from tests.test_bacalhau_api import IMAGE, run_client

pytestmark = [pytest.mark.slow, pytest.mark.docker]

SDK_SUBMIT = """
import json
from bacalhau_sdk.api import submit
from bacalhau_sdk.config import get_client_id
from bacalhau_apiclient.models.deal import Deal
from bacalhau_apiclient.models.job_spec_docker import JobSpecDocker
from bacalhau_apiclient.models.publisher_spec import PublisherSpec
from bacalhau_apiclient.models.spec import Spec
spec = Spec(engine="Docker", verifier="Noop", publisher_spec=PublisherSpec(type="IPFS"),
            docker=JobSpecDocker(image=%r, entrypoint=["sleep", "60"], environment_variables=["TOKEN=hunter2"]),
            timeout=300, deal=Deal(concurrency=1, confidence=0, min_bids=0), outputs=[])
job = submit(dict(APIVersion="V1beta1", ClientID=get_client_id(), Spec=spec)).job
print(json.dumps(dict(job_id=job.metadata.id, client_id=get_client_id())))
"""


def test_our_cli_owns_what_the_sdk_submits_from_the_same_dir(served: Any, tmp_path: Path) -> None:
    node: Served = served("node").start()
    node.wait_ready()
    client_dir = tmp_path / "client"
    out = run_client("sdk", node, SDK_SUBMIT % IMAGE, client_dir)   # the SDK makes user_id.pem here
    assert out["client_id"] == client_id_of(load_or_create(client_dir / "user_id.pem").public_key())
    node.env = {**node.env, "BACALHAU_DIR": str(client_dir)}   # our CLI, the same client dir
    described = node.cli("describe", out["job_id"], "-o", "json")
    assert described.returncode == 0, described.stderr
    job = json.loads(described.stdout)
    assert job["client_id"] == out["client_id"] and job["spec"]["docker"]["env"] == {"TOKEN": "hunter2"}
    cancelled = node.cli("cancel", out["job_id"])
    assert cancelled.returncode == 0, cancelled.stderr
    ours = node.cli("docker", "run", "--id-only", IMAGE, "--", "true")
    assert ours.returncode == 0, ours.stderr
    assert json.loads(node.cli("describe", ours.stdout.strip(), "-o", "json").stdout)["client_id"] == out["client_id"]
