"""`bacalhau list` and `describe` start without click or PyYAML in their plain forms (cli/fast.py), print what
the click commands print, and leave every other form to click; the YAML written without PyYAML reads back the
same data with PyYAML."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bacalhau.bprotocol.transport import InMemoryNetwork
from bacalhau.cli.client import ApiClient
from bacalhau.cli.fast import parse
from bacalhau.cli.output import to_yaml
from bacalhau.node import Node, NodeDeps
from tests.conftest import node_config, run_cli

ODD = "yes: no #x \x85 \u2028 😀 'q' \"dq\"\n\t- 1:20 0x1f ~ null"


@pytest.fixture
async def noop_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Node]:
    monkeypatch.setenv("BACALHAU_DIR", str(tmp_path / "client"))
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(node_config(tmp_path, engines=("noop",)), NodeDeps(network=InMemoryNetwork())).run)
        yield node
        nursery.cancel_scope.cancel()


async def completed_job(node: Node, stdout: str) -> str:
    client = ApiClient("127.0.0.1", node.api_port)
    job_id = await trio.to_thread.run_sync(client.submit, {"engine": "noop", "noop": {"stdout": stdout}})
    with trio.fail_after(20):
        while (await trio.to_thread.run_sync(client.job, job_id))["state"] != "completed":
            await trio.sleep(0.05)
    return job_id


async def test_plain_list_and_describe_print_what_the_click_commands_print(noop_node: Node) -> None:
    job_id = await completed_job(noop_node, ODD)
    await completed_job(noop_node, "second\n")
    # a BACALHAU_<VERB>_<OPTION> setting is click's to read: the same output through the click command
    for fast, env in (
        (["list", "-o", "json"], {"BACALHAU_LIST_OUTPUT": "json"}),
        (["list", "--number=1", "--wide", "-ojson"], {"BACALHAU_LIST_NUMBER": "1", "BACALHAU_LIST_WIDE": "1",
                                                     "BACALHAU_LIST_OUTPUT": "json"}),
        (["describe", job_id[:8]], {"BACALHAU_DESCRIBE_OUTPUT": "yaml"}),
        (["describe", job_id, "-o", "table"], {"BACALHAU_DESCRIBE_OUTPUT": "table"}),
        (["describe", job_id, "--output", "json"], {"BACALHAU_DESCRIBE_OUTPUT": "json"}),
    ):
        quick = await run_cli(noop_node, *fast)
        slow = await run_cli(noop_node, *[a for a in fast[:2] if a.startswith(("list", "describe")) or a[0] != "-"],
                             env=env)
        assert quick.returncode == slow.returncode == 0, (quick.stderr, slow.stderr)
        assert quick.stdout == slow.stdout, fast
    listed = json.loads((await run_cli(noop_node, "list", "-n", "1", "-o", "json")).stdout)
    assert len(listed) == 1
    described = (await run_cli(noop_node, "describe", job_id)).stdout
    assert yaml.safe_load(described)["spec"]["noop"]["stdout"] == ODD


async def test_a_form_the_plain_reader_does_not_take_is_clicks(noop_node: Node) -> None:
    for argv in (["list", "-h"], ["describe", "--help"], ["list", "-n", "0"], ["describe"], ["list", "--bogus"],
                 ["describe", "a", "b"], ["list", "-o", "xml"], ["--api-port", "x", "list"], ["list", "--", "x"]):
        assert parse(argv, {}) is None, argv
    assert parse(["list"], {"BACALHAU_LIST_NUMBER": "3"}) is None
    help_ = await run_cli(noop_node, "list", "--help")
    assert help_.returncode == 0 and "--number" in help_.stdout and "Usage:" in help_.stdout
    bad = await run_cli(noop_node, "list", "-n", "0")
    assert bad.returncode == 2 and "Invalid value" in bad.stderr and "Traceback" not in bad.stderr
    missing = await run_cli(noop_node, "describe")
    assert missing.returncode == 2 and "Missing argument" in missing.stderr
    gone = await run_cli(noop_node, "describe", "00000000")
    assert gone.returncode == 1 and gone.stderr.startswith("Error: ") and len(gone.stderr.splitlines()) == 1


def test_list_and_describe_import_neither_click_nor_yaml() -> None:
    code = ("import sys\nsys.argv = ['bacalhau', *sys.argv[1:]]\nfrom bacalhau.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'yaml', 'cryptography', 'typing')))")
    for argv in (["list"], ["describe", "abc"]):
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                             env={"BACALHAU_API_PORT": "1", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
                             check=False)
        assert out.stdout.strip() == "[]", out.stdout + out.stderr
        assert "cannot reach the bacalhau API" in out.stderr


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSONISH)
def test_yaml_written_without_pyyaml_reads_back_the_same(data: object) -> None:
    back = yaml.safe_load(to_yaml(data))
    assert json.dumps(back, sort_keys=True) == json.dumps(data, sort_keys=True)


def test_yaml_of_a_job_is_what_pyyaml_writes() -> None:
    job = {"id": "0a1b2c3d-1111-2222-3333-444455556666", "state": "completed", "reason": "", "created_at": 1764640000.25,
           "spec": {"engine": "docker", "docker": {"image": "bacalhau/busybox:latest", "parameters": ["echo", "hi"],
                                                   "env": {}}, "inputs": [], "timeout": 600.0, "concurrency": 1},
           "executions": [{"id": "e1", "node_id": "12D3KooWabc", "state": "completed", "result": {"exit_code": 0}}],
           "events": [{"time": 1e-05, "kind": "job", "reason": "submitted", "subject": None}]}
    assert to_yaml(job) == yaml.safe_dump(job, sort_keys=False, allow_unicode=True)


@pytest.mark.docker
async def test_docker_run_prints_its_output_byte_for_byte_with_or_without_the_results_tail(single_node: Node) -> None:
    from tests.test_cli import IMAGE

    # valid UTF-8 under a KiB: printed from the result's tail; bytes that are not UTF-8 (three that decode to
    # as many bytes), a real U+FFFD and 3 KiB are fetched; stderr every time
    for script, stdout in (("printf 'h\\303\\251\\n'", "hé\n".encode()),
                           ("printf 'a\\377b'", b"a\xffb"),
                           ("printf '\\357\\277\\275'", "\ufffd".encode()),
                           ("printf '\\360\\237\\230'", b"\xf0\x9f\x98"),    # decoded: one U+FFFD, 3 bytes too
                           ("head -c 3000 /dev/zero", b"\0" * 3000)):
        res = await run_cli(single_node, "docker", "run", IMAGE, "--", "sh", "-c", script + "; echo oops >&2")
        assert res.returncode == 0, res.stderr
        assert res.stdout_bytes == stdout, script
        assert res.stderr.endswith("oops\n"), res.stderr
