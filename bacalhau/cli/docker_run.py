"""`bacalhau docker run`: submit a Docker job, wait for it with progress, print its output. Its common forms
run without click (fast_run.py), through the same spec (job_args.py) and the same waiting (waiting.py)."""

from __future__ import annotations

import click

from bacalhau.cli import job_args
from bacalhau.cli.main import client_from
from bacalhau.cli.waiting import submit_and_report


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    try:
        return job_args.pairs(values, what)
    except job_args.ArgError as exc:
        raise click.BadParameter(exc.message, param_hint=exc.hint) from None


MAX_INLINE_BYTES = job_args.MAX_INLINE_BYTES


def parse_inputs(values: tuple[str, ...]) -> list[dict[str, str]]:
    """-i SOURCE[:/PATH]: a URL (https://, ipfs://) or a small local file, uploaded with the job."""
    try:
        return job_args.parse_inputs(values)
    except job_args.ArgError as exc:
        raise click.BadParameter(exc.message, param_hint=exc.hint) from None


@click.group()
def docker() -> None:
    """Run Docker jobs."""


@docker.command("run", context_settings={"ignore_unknown_options": False})
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Environment variable for the job (repeatable).")
@click.option("-i", "--input", "inputs", multiple=True, metavar="SOURCE[:/PATH]",
              help="Input mounted read-only at PATH (default /inputs): https://..., ipfs://CID or a small local file.")
@click.option("-w", "--workdir", default=None, metavar="DIR", help="Working directory inside the container.")
@click.option("--entrypoint", default=None, help="Override the image's entrypoint (split on spaces).")
@click.option("--cpu", default=None, metavar="CPU", help="CPU the job needs, e.g. 0.5 or 500m.")
@click.option("--memory", default=None, metavar="SIZE", help="Memory the job needs, e.g. 256Mb or 1Gi.")
@click.option("--timeout", default=None, type=float, metavar="SECONDS", help="Kill the job after this long.")
@click.option("-l", "--labels", "labels", multiple=True, metavar="K=V", help="Labels for the job (repeatable).")
@click.option("-s", "--selector", default="", metavar="SELECTOR",
              help="Run only on nodes whose labels match, e.g. 'zone=eu,gpu in (a100,h100)'.")
@click.option("--concurrency", default=1, type=click.IntRange(min=1), show_default=True,
              help="How many nodes run the job.")
@click.option("--network", type=click.Choice(["none", "host"]), default="none", show_default=True,
              help="Network access of the job.")
@click.option("--id-only", is_flag=True, help="Print only the job ID on stdout (implies --no-wait).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the job and print its output.")
@click.option("-f", "--follow", is_flag=True, help="Stream the job's logs live while it runs.")
@click.pass_context
def run(ctx: click.Context, image: str, command: tuple[str, ...], env: tuple[str, ...], inputs: tuple[str, ...],
        workdir: str | None,
        entrypoint: str | None, cpu: str | None, memory: str | None, timeout: float | None,
        labels: tuple[str, ...], selector: str, concurrency: int, network: str, id_only: bool, wait: bool,
        follow: bool) -> None:
    """Run COMMAND in a container of IMAGE on a node of the network.

    \b
    bacalhau docker run bacalhau/busybox -- echo hello
    bacalhau docker run -e NAME=world bacalhau/busybox -- sh -c 'echo hello $NAME'
    ID=$(bacalhau docker run --id-only bacalhau/busybox -- sleep 60)

    Waiting, progress goes to stderr and the job's output to stdout; the exit code is the job's (1 when it
    could not run).
    """
    try:
        spec = job_args.docker_spec(image, command, env=env, inputs=inputs, workdir=workdir, entrypoint=entrypoint,
                                    cpu=cpu, memory=memory, timeout=timeout, labels=labels, selector=selector,
                                    concurrency=concurrency, network=network)
    except job_args.ArgError as exc:
        raise click.BadParameter(exc.message, param_hint=exc.hint) from None
    submit_and_report(client_from(ctx), spec, id_only=id_only, wait=wait, follow=follow)
