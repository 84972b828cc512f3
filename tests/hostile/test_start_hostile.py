"""`bacalhau docker run`'s quick start (click-free parsing, signing without `cryptography`) as an attacker or
an accident would bend it: a key file that is not a key, a damaged key, requests too big; each is one clear
line and the same refusal on the click path (forced by a BACALHAU_DOCKER_RUN_* setting)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bacalhau.node import Node
from tests.conftest import CliResult, run_cli

IMAGE = "bacalhau/busybox:latest"
PATHS = ({}, {"BACALHAU_DOCKER_RUN_NETWORK": "none"})    # the click-free path, then click's


async def submit_from(node: Node, state: Path, *args: str, env: dict[str, str]) -> CliResult:
    return await run_cli(node, "docker", "run", "--id-only", *args, IMAGE, "--", "true",
                         env={**env, "BACALHAU_DIR": str(state)}, timeout=15)


def one_line(res: CliResult, code: int = 1) -> str:
    assert res.returncode == code, res
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
    return res.stderr


async def test_a_key_file_that_is_a_fifo_or_a_device_is_refused_not_waited_on(api_node: Node, tmp_path: Path) -> None:
    # a FIFO named user_id.pem hung every signed command on its open (for ever: nobody writes it); /dev/zero
    # was read until memory ran out
    fifo, device = tmp_path / "fifo", tmp_path / "device"
    fifo.mkdir()
    os.mkfifo(fifo / "user_id.pem")
    device.mkdir()
    (device / "user_id.pem").symlink_to("/dev/zero")
    for state in (fifo, device):
        for env in PATHS:
            res = await submit_from(api_node, state, env=env)
            assert "user_id.pem is not a regular file" in one_line(res), res.stderr
    assert not await api_node.requester.store.list_jobs(None)   # type: ignore[union-attr]


async def test_a_huge_key_file_is_refused_unread(api_node: Node, tmp_path: Path) -> None:
    (tmp_path / "user_id.pem").touch()
    os.truncate(tmp_path / "user_id.pem", 8 * 1024**3)   # sparse: 8 GiB, read whole before cryptography refused it
    for env in PATHS:
        res = await submit_from(api_node, tmp_path, env=env)
        assert "user_id.pem is over 65536 bytes" in one_line(res)


async def test_a_damaged_key_is_refused_before_anything_is_sent(api_node: Node, tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 2048)
    numbers = key.private_numbers()
    bent = rsa.RSAPrivateNumbers(numbers.p, numbers.q, numbers.d, numbers.dmp1 ^ 4, numbers.dmq1, numbers.iqmp,
                                 numbers.public_numbers)
    (tmp_path / "user_id.pem").write_bytes(bent.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    for env in PATHS:
        res = await submit_from(api_node, tmp_path, env=env)
        assert "user_id.pem is damaged" in one_line(res) and "move it away" in res.stderr
    # a key cryptography cannot read at all: its words, on both paths
    (tmp_path / "user_id.pem").write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
    for env in PATHS:
        res = await submit_from(api_node, tmp_path, env=env)
        assert "is not an unencrypted RSA private key in PEM" in one_line(res)
    assert not await api_node.requester.store.list_jobs(None)   # type: ignore[union-attr]


async def test_inputs_too_big_are_refused_alike_on_both_paths(api_node: Node, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.touch()
    os.truncate(big, 1024 * 1024 + 1)
    parts = []
    for i in range(4):
        part = tmp_path / f"part{i}"
        part.write_bytes(os.urandom(1024 * 1024))
        parts += ["-i", f"{part}:/in{i}"]
    answers = []
    for env in PATHS:
        over = await submit_from(api_node, tmp_path / "state", "-i", str(big), env=env)
        assert over.returncode == 2 and "Invalid value for -i" in over.stderr and "Traceback" not in over.stderr
        many = await submit_from(api_node, tmp_path / "state", *parts, env=env)
        assert "over the API's 4194304" in one_line(many)
        # (the signed body's size differs by a byte or two: signed_at's decimals)
        answers.append((over.stderr, re.sub(r"request is \d+ bytes", "", many.stderr)))
    assert answers[0] == answers[1]
    assert not await api_node.requester.store.list_jobs(None)   # type: ignore[union-attr]


async def test_option_lookalikes_are_the_jobs_arguments_or_clicks_errors(api_node: Node, tmp_path: Path) -> None:
    # after --, everything is the container's command; before it, an unknown option is click's error
    env = {"BACALHAU_DIR": str(tmp_path)}
    ok = await run_cli(api_node, "docker", "run", "--id-only", IMAGE, "--", "--api-port", "1", "-f", "--help",
                       env=env)
    assert ok.returncode == 0 and len(ok.stdout.strip()) == 36, ok
    job = (await api_node.requester.store.list_jobs(None))[0]     # type: ignore[union-attr]
    assert job.spec.docker is not None and job.spec.docker.parameters == ["--api-port", "1", "-f", "--help"]
    for extra in PATHS:
        bad = await run_cli(api_node, "docker", "run", IMAGE, "--rm", "true", env={**env, **extra})
        assert bad.returncode == 2 and "No such option '--rm'" in bad.stderr and "Traceback" not in bad.stderr
