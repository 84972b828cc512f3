"""`bacalhau create FILE` and `bacalhau validate FILE`: job specs in YAML or JSON.

A file may hold the spec itself or a whole job as `describe --output yaml` prints it (its `spec` is used).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from bacalhau.cli.main import client_from
from bacalhau.cli.output import status
from bacalhau.errors import SpecError, UserError


def load_spec(path: str) -> dict[str, Any]:
    import yaml
    from pydantic import ValidationError

    from bacalhau.models import JobSpec

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON: one parser takes both
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path} is not valid YAML or JSON{where}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} must hold a mapping (a job spec), not {type(data).__name__}")
    spec = data["spec"] if isinstance(data.get("spec"), dict) else data
    try:
        return JobSpec.model_validate(spec).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
        more = f" (and {len(exc.errors()) - 1} more problem{'s' if len(exc.errors()) > 2 else ''})" \
            if len(exc.errors()) > 1 else ""
        raise SpecError(f"{path}: field {where}: {first.get('msg')}{more}") from None


@click.command()
@click.argument("file")
@click.option("--wait/--no-wait", default=False, show_default=True, help="Wait for the job and print its output.")
@click.pass_context
def create(ctx: click.Context, file: str, wait: bool) -> None:
    """Submit the job spec in FILE (YAML or JSON; '-' reads stdin). Prints the job ID."""
    spec = load_spec(file)
    client = client_from(ctx)
    job_id = client.submit(spec)
    click.echo(job_id)
    if wait:
        from bacalhau.cli.waiting import wait_and_print

        sys.exit(wait_and_print(client, job_id))


@click.command()
@click.argument("file")
def validate(file: str) -> None:
    """Check the job spec in FILE without submitting it; point at the first bad field."""
    load_spec(file)
    status(f"{file}: valid job spec")
