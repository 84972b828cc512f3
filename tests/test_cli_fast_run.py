"""`bacalhau docker run` without click (cli/fast_run.py): the forms it reads make the spec the click command
makes and print what it prints, with the same exit codes; every other form is left to click."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from bacalhau.cli import waiting
from bacalhau.cli.fast import parse
from bacalhau.node import Node
from tests.conftest import run_cli

IMAGE = "bacalhau/busybox:latest"
CLICK = {"BACALHAU_DOCKER_RUN_NETWORK": "none"}   # a setting fast_run leaves to click (the default value)


def spec_of_fast(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any] | None:
    plan = parse(argv, {})
    if plan is None:
        return None
    seen: dict[str, Any] = {}
    monkeypatch.setattr(waiting, "submit_and_report", lambda client, spec, **kw: seen.update(spec=spec, **kw))
    plan()
    return seen


def spec_of_click(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from bacalhau.cli import docker_run
    from bacalhau.cli.group import cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr(docker_run, "submit_and_report", lambda client, spec, **kw: seen.update(spec=spec, **kw))
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return seen


def test_the_forms_read_without_click_make_the_spec_click_makes(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "data.txt"
    local.write_bytes(b"some input\n")
    for argv in (
        ["docker", "run", IMAGE],
        ["docker", "run", IMAGE, "--", "echo", "-n", "hi"],
        ["docker", "run", IMAGE, "echo", "hi"],
        ["--api-port", "9", "--api-host=h", "docker", "run", "--id-only", IMAGE, "--", "sleep", "1"],
        ["docker", "run", "-e", "A=1", "--env=B=two=2", "-eC=", "-w", "/tmp", "--entrypoint", "sh -c", IMAGE, "x"],
        ["docker", "run", "--cpu", "0.5", "--memory=64Mb", "--timeout", "30", "--concurrency", "2", "--network",
         "host", "-s", "zone=eu,gpu in (a,b)", "-l", "a=1,b=2", "--labels", "c=3", "--no-wait", IMAGE],
        ["docker", "run", IMAGE, "--timeout", "1e3", "--wait", "sh", "--concurrency=3", "--", "-c", "--", "-x"],
        ["docker", "run", "-i", "https://example.com/x.csv:/data", "--input", "ipfs://bafyabc", "-i",
         f"{local}:/in/d", "-i", str(local), IMAGE, "--", "cat", "/inputs/data.txt"],
        ["docker", "run", "--cpu=", "-w=", "é☃", "--", "ünï", "\udcff"],
        ["docker", "run", "-", "-"],
    ):
        fast = spec_of_fast(argv, monkeypatch)
        assert fast is not None, argv
        assert fast == spec_of_click(argv, monkeypatch), argv


def test_every_other_form_is_left_to_click(tmp_path: Path) -> None:
    for argv in (["run", "--help"], ["run", "-h", IMAGE], ["run", "-f", IMAGE], ["run", "--follow", IMAGE],
                 ["run"], ["run", "--", ], ["build", IMAGE], [], ["--help"], ["run", IMAGE, "echo", "-n", "hi"],
                 ["run", "--timeout", "soon", IMAGE], ["run", "--concurrency", "0", IMAGE],
                 ["run", "--concurrency", "1.5", IMAGE], ["run", "--network", "bridge", IMAGE],
                 ["run", "--network", "HOST", IMAGE], ["run", "-e", "novalue", IMAGE], ["run", "-l", "a=1,b", IMAGE],
                 ["run", "--cpu", "1", "--cpu", "2", IMAGE], ["run", "--wait", "--no-wait", IMAGE],
                 ["run", "--id-only=yes", IMAGE], ["run", "-e", "--", IMAGE], ["run", IMAGE, "-e"],
                 ["run", "-i", str(tmp_path / "missing"), IMAGE], ["run", "--envy", "A=1", IMAGE],
                 ["run", "-x", IMAGE], ["run", "--entry", "sh", IMAGE]):
        assert parse(["docker", *argv], {}) is None, argv
    assert parse(["--api-port", "x", "docker", "run", IMAGE], {}) is None
    assert parse(["docker", "run", IMAGE], {"BACALHAU_API_PORT": "12a"}) is None
    assert parse(["docker", "run", IMAGE], {"BACALHAU_DOCKER_RUN_CPU": "1"}) is None
    assert parse(["docker", "run", IMAGE], {"BACALHAU_DOCKER_RUN_CPU": ""}) is not None


def test_docker_run_imports_neither_click_nor_cryptography(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(65537, 2048)
    (tmp_path / "user_id.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    # the cluster id as a submit keeps it: no API here, so the signature is made and the submit fails (an id set
    # on ApiClient's class was shadowed by the instance's, and the command failed before signing: typing came in
    # with rsa_pkcs1.py unseen, ~3 ms of every `docker run`)
    (tmp_path / "cluster_ids.json").write_text(json.dumps({"127.0.0.1:1": "c" * 32}))
    code = ("import sys\nsys.argv = ['bacalhau', *sys.argv[1:]]\n"
            "from bacalhau.cli.main import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('bacalhau.rsa_pkcs1' in sys.modules, sorted(m for m in sys.modules if m.split('.')[0] in\n"
            "             ('click', 'yaml', 'cryptography', 'typing', 'pydantic', 'trio', 'dataclasses', 'inspect')))")
    out = subprocess.run([sys.executable, "-c", code, "docker", "run", IMAGE, "--", "echo", "hi"],
                         capture_output=True, text=True, check=False,
                         env={"BACALHAU_API_PORT": "1", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
                              "BACALHAU_DIR": str(tmp_path), "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert out.stdout.strip() == "True []", out.stdout + out.stderr
    assert "cannot reach the bacalhau API" in out.stderr


@pytest.mark.docker
async def test_both_paths_print_the_same_output_and_exit_codes(single_node: Node) -> None:
    for args in (["--", "sh", "-c", "echo out; printf 'h\\303\\251'; echo err >&2; exit 3"],
                 ["-e", "A=1", "-w", "/tmp", "--", "sh", "-c", 'echo "$A $(pwd)"'],
                 ["--", "sh", "-c", "printf 'a\\377b'"],
                 ["--", "false"]):
        fast = await run_cli(single_node, "docker", "run", IMAGE, *args)
        slow = await run_cli(single_node, "docker", "run", IMAGE, *args, env=CLICK)
        assert fast.returncode == slow.returncode, (fast, slow)
        assert fast.stdout_bytes == slow.stdout_bytes, args
        # stderr: the same lines but for the job's id and the progress's timing
        assert [line.split(":")[-1] for line in fast.stderr.splitlines()][-1:] == \
            [line.split(":")[-1] for line in slow.stderr.splitlines()][-1:], (fast.stderr, slow.stderr)
    ids = [await run_cli(single_node, "docker", "run", "--id-only", IMAGE, "--", "true", env=env)
           for env in ({}, CLICK)]
    assert [len(r.stdout.strip()) for r in ids] == [36, 36] and [r.stderr for r in ids] == ["", ""]


async def test_an_unreachable_api_is_one_line_on_both_paths() -> None:
    for env in ({}, CLICK):
        res = await run_cli(None, "docker", "run", IMAGE, "--", "true",
                            env={**env, "BACALHAU_API_HOST": "127.0.0.1", "BACALHAU_API_PORT": "1"})
        assert res.returncode == 1, res
        assert res.stderr.startswith("Error: cannot reach the bacalhau API") and len(res.stderr.splitlines()) == 1


async def test_interrupted_while_waiting_says_aborted_on_both_paths(tmp_path: Path) -> None:
    # an API that takes the connection and never answers: the command waits, and ^C ends it as click does
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    env = {**os.environ, "BACALHAU_API_HOST": "127.0.0.1", "BACALHAU_API_PORT": str(port),
           "BACALHAU_DIR": str(tmp_path)}
    from tests.conftest import BACALHAU

    for extra in ({}, CLICK):
        proc = await trio.lowlevel.open_process([*BACALHAU, "docker", "run", IMAGE, "--", "true"],
                                                env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        conn, _ = await listener.accept()    # the command is waiting on its first request
        proc.send_signal(signal.SIGINT)
        assert proc.stdout is not None and proc.stderr is not None
        with trio.fail_after(20):
            err, out = await read_all(proc.stderr), await read_all(proc.stdout)
            await proc.wait()
        conn.close()
        assert proc.returncode == 130, err
        assert err.decode() == "\nAborted.\n" and out == b""
    listener.close()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data
