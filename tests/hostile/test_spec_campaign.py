"""A campaign of random job specs against a real `bacalhau serve`: every engine and every field, with NaN,
Infinity, huge, negative, unicode and wrong-type values and nested junk, POSTed as raw JSON (signed as the
CLI signs, or not at all). Every one is either refused with a one-line 4xx error, or accepted and then ends
(runs to a terminal state, or is cancelled); the node stays up, and after a restart it reads every stored
job back."""

from __future__ import annotations

import http.client
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bacalhau.models import JobSpec
from bacalhau.signing import load_or_create_client_key, sign

TERMINAL = ("completed", "failed", "cancelled")
MISSING = object()

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([0, -1, 1, 0.5, 1e-300, 1e300, 2**63, -(2**63), 255, 256, 1024, 1025]),
)
TEXT = st.one_of(
    st.text(max_size=20), st.text(alphabet=st.characters(codec=None), max_size=10),   # surrogates, NUL
    st.sampled_from(["", " ", "nan", "inf", "-1", "1e999", "500m", "2Gi", "bacalhau/busybox", "zone=eu",
                     "gpu in (a,b)", "/inputs", "/outputs", "/../etc", "ipfs://bafy", "https://127.0.0.1:1/x",
                     "inline:a;base64,aGk=", "base64:AGFzbQEAAAA=", "\x00", "\ud800", "é" * 5]),
)
SCALAR = st.one_of(NUMBERS, TEXT, st.booleans(), st.none())
JUNK = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                    max_leaves=6)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field: left out, a plausible value, or junk."""
    return st.one_of(st.just(MISSING), strategy, JUNK)


def section(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.fixed_dictionaries({k: maybe(v) for k, v in fields.items()}).map(
            lambda d: {k: v for k, v in d.items() if v is not MISSING}),
        JUNK,
    )


STRINGS = st.lists(TEXT, max_size=4)
MAPS = st.dictionaries(TEXT, TEXT, max_size=3)
SPECS = section({
    "engine": st.sampled_from(["noop", "noop", "noop", "docker", "wasm", "other", ""]),
    "docker": section({"image": TEXT, "entrypoint": STRINGS, "parameters": STRINGS, "env": MAPS,
                       "working_dir": TEXT}),
    "wasm": section({"module": TEXT, "entry_point": TEXT, "parameters": STRINGS, "env": MAPS}),
    "noop": section({"stdout": TEXT, "exit_code": NUMBERS, "sleep": st.one_of(NUMBERS, st.floats(0, 0.5))}),
    "resources": section({"cpu": st.one_of(NUMBERS, TEXT), "memory": st.one_of(NUMBERS, TEXT)}),
    "timeout": st.one_of(NUMBERS, st.floats(0.1, 5)),
    "network": st.sampled_from(["none", "host", "bridge"]),
    "labels": MAPS,
    "node_selector": TEXT,
    "concurrency": NUMBERS,
    "inputs": st.lists(section({"source": TEXT, "path": TEXT}), max_size=2),
    "retry": section({"max_attempts": NUMBERS, "backoff": NUMBERS, "on_nonzero_exit": st.booleans()}),
})


SAFE = st.text(alphabet="abcxyz019-_.", min_size=1, max_size=8)
VALID_NOOP = st.fixed_dictionaries(
    {"engine": st.just("noop"),
     "noop": st.fixed_dictionaries({"stdout": st.text(max_size=30), "exit_code": st.integers(0, 255),
                                    "sleep": st.floats(0, 0.3)})},
    optional={"resources": st.fixed_dictionaries({}, optional={"cpu": st.one_of(st.floats(0, 1), st.just("100m")),
                                                               "memory": st.sampled_from(["1Mb", "10Mi", 1000])}),
              "timeout": st.floats(1, 60), "labels": st.dictionaries(SAFE, SAFE, max_size=3),
              "concurrency": st.just(1), "node_selector": st.sampled_from(["", "name=campaign", "!gpu"]),
              "retry": st.fixed_dictionaries({}, optional={"max_attempts": st.integers(1, 3),
                                                           "backoff": st.floats(0, 0.2),
                                                           "on_nonzero_exit": st.booleans()})},
)
HOSTILE = st.one_of(st.sampled_from([float("nan"), float("inf"), float("-inf"), -1, 10**400, 1e308, 2**64, "nan",
                                     "1e999", "\x00", "\ud800", [], {}, None, True]), JUNK)


def _mutate(spec: dict[str, Any], where: str, value: Any) -> dict[str, Any]:
    spec = json.loads(json.dumps(spec))
    *parents, leaf = where.split(".")
    at = spec
    for key in parents:
        at = at.setdefault(key, {})
        if not isinstance(at, dict):
            return spec
    at[leaf] = value
    return spec


MUTATED = st.builds(_mutate, VALID_NOOP, st.sampled_from([
    "noop.sleep", "noop.exit_code", "noop.stdout", "timeout", "resources.cpu", "resources.memory", "concurrency",
    "retry.backoff", "retry.max_attempts", "labels.k", "node_selector", "engine", "network", "inputs", "extra",
]), HOSTILE)
CAMPAIGN = st.one_of(VALID_NOOP, MUTATED, SPECS)


def post(port: int, body: str, path: str = "/api/v1/jobs") -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body.encode(), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.slow
def test_random_specs_are_refused_in_one_line_or_run_and_the_node_survives(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = served("campaign", "--retention", "0").start()
    node.wait_ready()
    client = node.client()
    key = load_or_create_client_key(tmp_path / "client.key")
    cluster_id = str(client.node_id()["cluster_id"])
    accepted: list[str] = []
    counts = {"accepted": 0, "refused": 0, "unsigned": 0}

    @settings(max_examples=300, deadline=None, derandomize=False, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(spec=CAMPAIGN, signed=st.booleans())
    def attack(spec: Any, signed: bool) -> None:
        text = json.dumps(spec)                      # NaN and Infinity go as the bare literals json allows
        body = '{"spec": ' + text
        if signed:
            for k, v in sign(key, {"submit": spec}, cluster_id).items():
                body += f", {json.dumps(k)}: {json.dumps(v)}"
        body += "}"
        try:
            JobSpec.model_validate(json.loads(text))
            valid = True
        except (ValidationError, ValueError):
            valid = False
        status, reply = post(node.api_port, body)
        if status == 201:
            assert valid and signed, (spec, reply)
            accepted.append(reply["id"])
            counts["accepted"] += 1
            return
        assert 400 <= status < 500, (status, reply, spec)
        assert isinstance(reply.get("error"), str) and reply["error"] and "\n" not in reply["error"], reply
        assert len(reply["error"]) < 1000, reply
        if not valid:
            assert reply["code"] == "invalid_spec", (reply, spec)    # the spec is checked before the signature
            counts["refused"] += 1
        else:
            assert not signed and "not signed" in reply["error"], (reply, spec)
            counts["unsigned"] += 1

    attack()
    assert counts["refused"] and counts["accepted"], counts

    # every accepted job ends: noop jobs run (a long sleep is cancelled), docker and wasm ones with random
    # images and modules fail or are cancelled
    deadline = time.monotonic() + 20
    for job_id in accepted:
        while (job := client.job(job_id))["state"] not in TERMINAL:
            if time.monotonic() > deadline or job["spec"]["engine"] != "noop" or job["spec"]["noop"]["sleep"] > 1:
                status, reply = post(node.api_port, json.dumps(sign(key, {"cancel": job_id}, cluster_id)),
                                     f"/api/v1/jobs/{job_id}/cancel")
                assert status == 200 or status == 409 and "already" in reply["error"], reply   # 409: it ended
                continue
            client.wait(job_id, since=time.time(), timeout=1)
    states = {j["id"]: j["state"] for j in client.list_jobs(0)}
    assert all(states[j] in TERMINAL for j in accepted), states
    assert any(states[j] == "completed" for j in accepted), states     # some noop specs really ran

    # the node is alive, runs a job, and reads every stored job back after a restart
    good = client.submit({"engine": "noop", "noop": {"stdout": "still here"}})
    while (job := client.job(good))["state"] not in TERMINAL:
        client.wait(good, since=time.time(), timeout=2)
    assert job["state"] == "completed", job
    assert node.stop(signal.SIGTERM) == 0
    node.start()
    node.wait_ready()
    after = {j["id"]: j for j in node.client().list_jobs(0)}
    assert set(after) == set(states) | {good}
    assert not [j for j in after.values() if "could not be read" in j["reason"]]
    assert node.stop(signal.SIGTERM) == 0
