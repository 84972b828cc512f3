"""`bacalhau docker run`: submit a Docker job, wait for it with progress, print its output."""

from __future__ import annotations

import click

from bacalhau.cli.main import client_from
from bacalhau.cli.waiting import submit_and_report


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        for part in item.split(",") if what == "label" else [item]:
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{part!r} is not KEY=VALUE", param_hint=f"--{what}")
            out[key.strip()] = value
    return out


MAX_INLINE_BYTES = 1024 * 1024


def parse_inputs(values: tuple[str, ...]) -> list[dict[str, str]]:
    """-i SOURCE[:/PATH]: a URL (https://, ipfs://) or a small local file, uploaded with the job."""
    from pathlib import Path

    inputs = []
    for value in values:
        source, path = value, "/inputs"
        if "://" in value:
            scheme, rest = value.split("://", 1)
            if ":/" in rest:
                rest, path = rest.rsplit(":/", 1)
                path = "/" + path
            source = f"{scheme}://{rest}"
        else:
            local, sep, target = value.rpartition(":/")
            if sep and local:
                source, path = local, "/" + target
            file = Path(source)
            if not file.is_file():
                raise click.BadParameter(f"{source!r} is neither a URL nor a local file", param_hint="-i")
            if file.stat().st_size > MAX_INLINE_BYTES:
                raise click.BadParameter(f"{source} is over {MAX_INLINE_BYTES} bytes: serve it over https:// "
                                         "and pass the URL", param_hint="-i")
            from bacalhau.storage.inline import encode_inline

            source = encode_inline(file.name, file.read_bytes())
        inputs.append({"source": source, "path": path})
    return inputs


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
    spec: dict[str, object] = {
        "engine": "docker",
        "docker": {
            "image": image,
            "parameters": list(command),
            "env": _pairs(env, "env"),
            "working_dir": workdir,
            "entrypoint": entrypoint.split() if entrypoint else None,
        },
        "resources": {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None},
        "network": network,
        "labels": _pairs(labels, "label"),
        "node_selector": selector,
        "concurrency": concurrency,
        "inputs": parse_inputs(inputs),
    }
    if timeout is not None:
        spec["timeout"] = timeout
    submit_and_report(client_from(ctx), spec, id_only=id_only, wait=wait, follow=follow)
