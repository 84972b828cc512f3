"""Session 6's correctness changes read as an attacker (the pre-approved flag's migration, the stderr tail, amplify's
413, the restarted requester's status retries): each hole found is tested here as the attack."""

from __future__ import annotations

import trio

from bacalhau.models import DockerSpec, Engine, JobSpec
from bacalhau.node import Node
from tests.conftest import run_cli

# a window title set (OSC), the screen cleared and the cursor sent home (CSI), a bell, text hidden by a bidi override
ESCAPES = "\\033]0;owned\\007\\033[2J\\033[H\\342\\200\\256evil"


async def test_a_jobs_escape_sequences_on_stdout_and_stderr_reach_describe_escaped_not_raw(
        single_node: Node) -> None:
    """The attack: a job (or a compute node, whose RunResult carries the stderr tail) writes terminal escape
    sequences; `describe` printed its stdout's head and its stderr's tail raw, so whoever described the job had
    their terminal retitled, cleared and its cursor moved by it. Now shown as text, lines and tabs kept."""
    req = single_node.requester
    script = f"printf 'out\\tline\\n{ESCAPES}\\n'; printf 'err line\\n{ESCAPES}\\n' >&2; exit 1"
    job = await req.submit(JobSpec(engine=Engine.DOCKER, docker=DockerSpec(
        image="bacalhau/busybox:latest", entrypoint=["sh", "-c", script])))
    with trio.fail_after(60):
        while not (await req.store.get_job(job.id, full=False)).state.terminal:
            await req.wait_for_change(job.id, 1)
    [ex] = [e for e in (await req.store.get_job(job.id)).executions if e.result is not None]
    assert ex.result is not None and "\x1b]0;owned\x07" in ex.result.stderr_tail   # stored as written
    described = await run_cli(single_node, "describe", job.id, "--output", "table")
    assert described.returncode == 0, described.stderr
    out = described.stdout
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, out
    assert out.count("\\x1b]0;owned\\x07\\x1b[2J\\x1b[H\\u202eevil") == 2, out      # stdout's and stderr's, readable
    assert "out\tline\n" in out and "err line\n" in out                           # their lines and tabs kept
