"""`bacalhau wasm run`: submit a WASM job (the module file is uploaded with it), wait, print its output."""

from __future__ import annotations

import base64
from pathlib import Path

import click

from bacalhau.cli.docker_run import _pairs, parse_inputs
from bacalhau.cli.main import client_from
from bacalhau.cli.waiting import submit_and_report
from bacalhau.errors import UserError
from bacalhau.models.job import WASM_INLINE_PREFIX

MAX_MODULE_BYTES = 2 * 1024 * 1024


@click.group()
def wasm() -> None:
    """Run WebAssembly (WASI) jobs."""


@wasm.command("run")
@click.argument("module")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--entry-point", default="_start", show_default=True, help="Function the job starts in.")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Environment variable for the job (repeatable).")
@click.option("-i", "--input", "inputs", multiple=True, metavar="SOURCE[:/PATH]",
              help="Input preopened read-only at PATH (default /inputs): https://... or a small local file.")
@click.option("--timeout", default=None, type=float, metavar="SECONDS", help="Stop the job after this long.")
@click.option("--memory", default=None, metavar="SIZE", help="Memory limit of the module, e.g. 64Mb.")
@click.option("-s", "--selector", default="", metavar="SELECTOR", help="Run only on nodes whose labels match.")
@click.option("--id-only", is_flag=True, help="Print only the job ID on stdout (implies --no-wait).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the job and print its output.")
@click.option("-f", "--follow", is_flag=True, help="Stream the job's logs live while it runs.")
@click.pass_context
def run(ctx: click.Context, module: str, args: tuple[str, ...], entry_point: str, env: tuple[str, ...],
        inputs: tuple[str, ...],
        timeout: float | None, memory: str | None, selector: str, id_only: bool, wait: bool,
        follow: bool) -> None:
    """Run MODULE.wasm with ARGS on a node of the network.

    \b
    bacalhau wasm run hello.wasm -- --name world
    """
    path = Path(module)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the WASM module {module}: {exc.strerror}") from None
    if len(data) > MAX_MODULE_BYTES:
        raise UserError(f"{module} is {len(data)} bytes; modules up to {MAX_MODULE_BYTES} bytes can be uploaded")
    if data[:4] != b"\0asm":
        raise UserError(f"{module} is not a WebAssembly module (no \\0asm header)")
    spec: dict[str, object] = {
        "engine": "wasm",
        "wasm": {"module": WASM_INLINE_PREFIX + base64.b64encode(data).decode(), "entry_point": entry_point,
                 "parameters": list(args), "env": _pairs(env, "env")},
        "resources": {"memory": memory} if memory else {},
        "node_selector": selector,
        "inputs": parse_inputs(inputs),
    }
    if timeout is not None:
        spec["timeout"] = timeout
    submit_and_report(client_from(ctx), spec, id_only=id_only, wait=wait, follow=follow)
