"""The real `bacalhau` command, in a child process, against a real node (libp2p, SQLite, Docker)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import trio
import yaml

from bacalhau.node import Node
from tests.conftest import run_cli

IMAGE = "bacalhau/busybox:latest"


@pytest.mark.docker
async def test_docker_run_prints_the_jobs_stdout_and_exits_with_its_code(single_node: Node) -> None:
    ok = await run_cli(single_node, "docker", "run", IMAGE, "--", "sh", "-c", "echo out; echo err >&2")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "out\n"
    assert "err" in ok.stderr and "completed" in ok.stderr
    bad = await run_cli(single_node, "docker", "run", IMAGE, "--", "sh", "-c", "exit 3")
    assert bad.returncode == 3


@pytest.mark.docker
async def test_docker_run_flags_reach_the_container(single_node: Node) -> None:
    res = await run_cli(single_node, "docker", "run", "-e", "A=1", "-e", "B=two", "-w", "/tmp",
                        IMAGE, "--", "sh", "-c", 'echo "$A $B $(pwd)"')
    assert res.returncode == 0, res.stderr
    assert res.stdout == "1 two /tmp\n"


@pytest.mark.docker
async def test_id_only_then_describe_list_get_and_cancel(single_node: Node, tmp_path: Path) -> None:
    res = await run_cli(single_node, "docker", "run", "--id-only", IMAGE, "--", "sh", "-c",
                        "echo result > /outputs/r.txt; echo done")
    job_id = res.stdout.strip()
    assert res.returncode == 0 and len(job_id) == 36, res
    # wait for it through the API the CLI uses
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        described = await run_cli(single_node, "describe", job_id[:8], "--output", "json")
        if json.loads(described.stdout)["state"] == "completed":
            break
    job = json.loads(described.stdout)
    assert job["state"] == "completed"
    assert [e["state"] for e in job["executions"]] == ["completed"]
    assert {"submitted", "bid accepted"} <= {ev["reason"] for ev in job["events"]}

    listed = await run_cli(single_node, "list", "--output", "json")
    assert job_id in [j["id"] for j in json.loads(listed.stdout)]
    table = await run_cli(single_node, "list")
    assert job_id[:8] in table.stdout and "completed" in table.stdout

    got = await run_cli(single_node, "get", job_id[:10], "--output-dir", str(tmp_path))
    assert got.returncode == 0, got.stderr
    dest = Path(got.stdout.strip())
    assert (dest / "stdout").read_text() == "done\n"
    assert (dest / "exitCode").read_text().strip() == "0"
    assert (dest / "outputs" / "r.txt").read_text() == "result\n"

    long = await run_cli(single_node, "docker", "run", "--id-only", IMAGE, "--", "sleep", "60")
    cancelled = await run_cli(single_node, "cancel", long.stdout.strip())
    assert cancelled.returncode == 0, cancelled.stderr
    after = json.loads((await run_cli(single_node, "describe", long.stdout.strip(), "-o", "json")).stdout)
    assert after["state"] == "cancelled"
    again = await run_cli(single_node, "cancel", long.stdout.strip())
    assert again.returncode == 1 and "already cancelled" in again.stderr


@pytest.mark.docker
async def test_create_and_validate_take_yaml_and_json_and_describe_output_round_trips(
    single_node: Node, tmp_path: Path
) -> None:
    spec = {"engine": "docker", "docker": {"image": IMAGE, "parameters": ["echo", "from-yaml"]}}
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(spec))
    assert (await run_cli(None, "validate", str(f))).returncode == 0
    created = await run_cli(single_node, "create", "--wait", str(f))
    assert created.returncode == 0, created.stderr
    job_id, output = created.stdout.split("\n", 1)
    assert output == "from-yaml\n"
    described = await run_cli(single_node, "describe", job_id)
    again = tmp_path / "again.yaml"
    again.write_text(described.stdout)
    assert (await run_cli(None, "validate", str(again))).returncode == 0

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"engine": "docker", "docker": {"image": IMAGE}, "concurrency": "many"}))
    res = await run_cli(None, "validate", str(bad))
    assert res.returncode == 1
    assert "concurrency" in res.stderr and "Traceback" not in res.stderr
    res = await run_cli(None, "validate", str(tmp_path / "missing.yaml"))
    assert res.returncode == 1 and "cannot read" in res.stderr


@pytest.mark.docker
async def test_job_that_no_node_can_run_fails_with_the_reason(single_node: Node) -> None:
    res = await run_cli(single_node, "docker", "run", "-s", "zone=mars", IMAGE, "--", "true")
    assert res.returncode == 1
    assert "could not run" in res.stderr and "zone=mars" in res.stderr
    res = await run_cli(single_node, "docker", "run", "-s", "zone in (", IMAGE, "--", "true")
    assert res.returncode == 1 and "selector" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.docker
async def test_node_list_version_and_id(single_node: Node) -> None:
    nodes = await run_cli(single_node, "node", "list", "--output", "json")
    assert [n["node_id"] for n in json.loads(nodes.stdout)] == [single_node.node_id]
    assert "docker" in json.loads(nodes.stdout)[0]["engines"]
    ident = json.loads((await run_cli(single_node, "id")).stdout)
    assert ident["id"] == single_node.node_id and ident["addrs"]
    version = await run_cli(single_node, "version")
    assert "Client: " in version.stdout and "Server: " in version.stdout


async def test_client_commands_say_one_line_when_no_daemon_runs() -> None:
    res = await run_cli(None, "list", env={"BACALHAU_API_PORT": "1", "BACALHAU_API_HOST": "127.0.0.1"})
    assert res.returncode == 1
    assert "cannot reach the bacalhau API at 127.0.0.1:1" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


async def test_api_address_flag_beats_environment_beats_config_file(single_node: Node, tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(f"api_host: 127.0.0.1\napi_port: {single_node.api_port}\n")
    env = {"BACALHAU_DIR": str(tmp_path)}
    assert (await run_cli(None, "list", env=env)).returncode == 0          # config file
    env_wrong = {**env, "BACALHAU_API_PORT": "1"}
    assert (await run_cli(None, "list", env=env_wrong)).returncode == 1    # environment beats the file
    flag = await run_cli(None, "--api-port", str(single_node.api_port), "list", env=env_wrong)
    assert flag.returncode == 0                                            # the flag beats the environment


def test_client_commands_do_not_import_libp2p_or_the_server_stack(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom bacalhau.cli.main import cli\n"
            "try:\n    cli.main(['list'], standalone_mode=False)\nexcept Exception:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('libp2p','starlette','hypercorn','docker')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"BACALHAU_API_PORT": "1", "PATH": "/usr/bin:/bin"}, check=False)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


async def test_wasm_run_uploads_the_module_and_streams_its_output(single_node: Node, tmp_path: Path) -> None:
    from tests.executors.test_wasm import hello

    module = tmp_path / "hello.wasm"
    module.write_bytes(hello("from wasm\n", exit_code=2))
    res = await run_cli(single_node, "wasm", "run", "-f", str(module))
    assert res.returncode == 2 and res.stdout == "from wasm\n", res.stderr
    res = await run_cli(single_node, "wasm", "run", str(module))
    assert res.returncode == 2 and res.stdout == "from wasm\n", res.stderr
    bad = tmp_path / "bad.wasm"
    bad.write_text("not wasm")
    res = await run_cli(single_node, "wasm", "run", str(bad))
    assert res.returncode == 1 and "not a WebAssembly module" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
async def test_a_slow_wasm_printer_streams_live(single_node: Node, tmp_path: Path) -> None:
    import os
    import sys

    import wasmtime

    from tests.executors.test_wasm import WASI

    # prints "tick N" three times, burning CPU between prints (WASI has no plain sleep to call from WAT)
    wat = """(module %s
      (memory (export "memory") 1)
      (data (i32.const 16) "tick\\0a")
      (func $burn (local $i i64) (local.set $i (i64.const 0))
        (loop $l (local.set $i (i64.add (local.get $i) (i64.const 1)))
              (br_if $l (i64.lt_u (local.get $i) (i64.const 3000000000)))))
      (func $tick (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 5))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
      (func (export "_start") (call $tick) (call $burn) (call $tick) (call $burn) (call $tick)))""" % WASI
    module = tmp_path / "slow.wasm"
    module.write_bytes(wasmtime.wat2wasm(wat))
    env = {**os.environ, "BACALHAU_API_HOST": "127.0.0.1", "BACALHAU_API_PORT": str(single_node.api_port)}
    proc = await trio.lowlevel.open_process([sys.executable, "-m", "bacalhau.cli.main", "wasm", "run", "-f",
                                             str(module)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    arrivals: list[float] = []
    start = time.monotonic()
    buf = b""
    assert proc.stdout is not None
    with trio.fail_after(60):
        while chunk := await proc.stdout.receive_some(1024):
            buf += chunk
            arrivals += [time.monotonic() - start] * chunk.count(b"\n")
        await proc.wait()
    assert buf == b"tick\n" * 3 and proc.returncode == 0
    assert arrivals[-1] - arrivals[0] > 0.2   # the first tick arrived well before the last: live, not at the end


@pytest.mark.docker
async def test_the_result_is_published_as_a_cid_kubo_would_give_the_downloaded_tree(
    single_node: Node, tmp_path: Path
) -> None:
    res = await run_cli(single_node, "docker", "run", "--id-only", IMAGE, "--", "sh", "-c",
                        "echo hi; mkdir /outputs/d; echo x > /outputs/d/x.txt")
    job_id = res.stdout.strip()
    await run_cli(single_node, "logs", "-f", job_id)
    deadline = time.monotonic() + 20
    while (job := json.loads((await run_cli(single_node, "describe", job_id, "-o", "json")).stdout))["state"] != "completed":
        assert time.monotonic() < deadline
    ref = job["executions"][-1]["result_ref"]
    assert ref.startswith("ipfs://Qm")
    got = await run_cli(single_node, "get", job_id, "-o", str(tmp_path))
    hashed = await run_cli(None, "ipfs", "add", "-n", "-r", "-q", got.stdout.strip())
    assert hashed.stdout.strip() == ref.removeprefix("ipfs://")
