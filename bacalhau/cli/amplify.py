"""`bacalhau amplify run|list|describe|cancel|lineage|validate|watch`: Amplify workflows, over the node's API (only
`validate` works offline)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import click

from bacalhau.cli.amplify_watch import watch
from bacalhau.cli.main import client_from
from bacalhau.cli.output import ago, emit, output_option, status, table

TERMINAL = ("succeeded", "failed", "cancelled")


@click.group()
def amplify() -> None:
    """Workflows of jobs over a CID (Amplify): each step a cluster job, its output CID the next one's input."""


def _workflow_text(path: str | None) -> str | None:
    if path is None:
        return None
    from bacalhau.amplify.workflow import load_workflow

    load_workflow(Path(path))     # one line for a mistake, before anything is sent
    return Path(path).read_text()


def queue_run(client: Any, run_id: str, cid: str, workflow: str | None, no_cache: bool) -> dict[str, Any]:
    """PUT the run, signed by the client (the same id again is the same run); the API's answer."""
    from bacalhau.amplify.actions import run_action

    attributes: dict[str, Any] = {"inputs": [{"cid": cid}]}
    if workflow is not None:
        attributes["workflow"] = workflow
    if no_cache:
        attributes["no_cache"] = True
    signature = client._sign(run_action(run_id, cid, workflow, no_cache))   # noqa: SLF001 - the client's own key
    return client.request("PUT", f"/api/v0/queue/{run_id}",   # type: ignore[no-any-return]
                          {"data": {"attributes": attributes}, **signature})


@amplify.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check a workflow file: its YAML, every job and node, parents, cycles, mime patterns, predicates."""
    from bacalhau.amplify.workflow import load_workflow

    wf = load_workflow(Path(file))
    status(f"{file}: {len(wf.jobs)} jobs, {len(wf.graph)} nodes, valid (order: {' -> '.join(wf.order())})")


@amplify.command()
@click.argument("cid")
@click.option("--workflow", "-f", default=None, type=click.Path(dir_okay=False), help="A workflow file "
              "(default: the node's).")
@click.option("--id", "run_id", default=None, help="The run's id (a UUID; running the same id again is the same "
              "run). Default: a new one.")
@click.option("--wait", is_flag=True, help="Wait until the run ends; exit 1 unless it succeeded.")
@click.option("--timeout", default=3600.0, show_default=True, type=float, help="How long --wait waits.")
@click.option("--id-only", is_flag=True, help="Print only the run id.")
@click.option("--no-cache", is_flag=True, help="Run every step, even one already run with the same spec over the "
              "same CIDs (by default its recorded result is reused).")
@output_option()
@click.pass_context
def run(ctx: click.Context, cid: str, workflow: str | None, run_id: str | None, wait: bool, timeout: float,
        id_only: bool, no_cache: bool, output: str) -> None:
    """Queue a run of a workflow over CID; prints the run id."""
    try:
        run_id = str(uuid.UUID(run_id)) if run_id else str(uuid.uuid4())
    except ValueError:
        raise click.BadParameter(f"{run_id!r} is not a UUID", param_hint="--id") from None
    text = _workflow_text(workflow)
    client = client_from(ctx)
    answer = queue_run(client, run_id, cid, text, no_cache)
    click.echo(run_id)
    if id_only and not wait:
        return
    status(f"run {run_id} {answer['data']['meta']['status']}")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while True:
        data = client.request("GET", f"/api/v0/queue/{run_id}")["data"]
        if data["meta"]["status"] in TERMINAL or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if output != "table":
        emit(data, output)
    else:
        _show(data)
    if data["meta"]["status"] != "succeeded":
        raise SystemExit(1)


@amplify.command("list")
@click.option("-n", "--number", default=10, show_default=True, type=click.IntRange(1, 100), help="Runs a page.")
@click.option("--page", default=1, show_default=True, type=click.IntRange(min=1))
@output_option()
@click.pass_context
def list_runs(ctx: click.Context, number: int, page: int, output: str) -> None:
    """List runs, newest first."""
    answer = client_from(ctx).request("GET", "/api/v0/queue", **{"page[size]": number, "page[number]": page})
    if output != "table":
        emit(answer, output)
        return
    rows = [[r["id"], ago(r["meta"]["submitted"]), r["meta"]["status"], r["meta"]["progress"],
             r["attributes"]["inputs"][0]["cid"], (r["meta"]["reason"] or "")[:50]] for r in answer["data"]]
    table(["ID", "SUBMITTED", "STATE", "DONE", "CID", "REASON"], rows)
    if answer["meta"]["totalPages"] > 1:
        status(f"page {page} of {answer['meta']['totalPages']} ({answer['meta']['count']} runs)")


def _show(data: dict[str, Any]) -> None:
    meta = data["meta"]
    click.echo(f"run {data['id']}: {meta['status']}{' - ' + meta['reason'] if meta['reason'] else ''}")
    click.echo(f"input   {data['attributes']['inputs'][0]['cid']}")
    for out in data["attributes"]["outputs"]:
        click.echo(f"output  {out['cid']}")
    rows = []
    for node in data["attributes"].get("graph", []):
        a = node["attributes"]
        rows.append([node["id"], a.get("state", "") + (" (cached)" if a.get("cached") else ""), str(a.get("attempt", "")), (a.get("job_id") or "")[:8],
                     a.get("output_cid", ""), (a.get("reason") or "")[:60]])
    table(["NODE", "STATE", "TRY", "JOB", "OUTPUT", "REASON"], rows)


@amplify.command()
@click.argument("run_id")
@output_option()
@click.pass_context
def describe(ctx: click.Context, run_id: str, output: str) -> None:
    """A run: its DAG, each node's state, job and output CID."""
    data = client_from(ctx).request("GET", f"/api/v0/queue/{run_id}")["data"]
    if output != "table":
        emit(data, output)
        return
    _show(data)


@amplify.command()
@click.argument("run_id")
@click.pass_context
def cancel(ctx: click.Context, run_id: str) -> None:
    """Cancel a run; the jobs its nodes have in flight are cancelled."""
    from bacalhau.amplify.actions import cancel_action

    try:
        run_id = str(uuid.UUID(run_id))
    except ValueError:
        raise click.BadParameter(f"{run_id!r} is not a run id (a UUID)", param_hint="RUN_ID") from None
    client = client_from(ctx)
    client.request("POST", f"/api/v0/queue/{run_id}/cancel", client._sign(cancel_action(run_id)))  # noqa: SLF001
    status(f"run {run_id} cancelled")


@amplify.command()
@click.argument("cid")
@click.option("--up", "direction", flag_value="up", help="Only what it was made from.")
@click.option("--down", "direction", flag_value="down", help="Only what was made from it.")
@click.option("--depth", default=1, show_default=True, type=click.IntRange(1, 20), help="Steps each way.")
@output_option()
@click.pass_context
def lineage(ctx: click.Context, cid: str, direction: str | None, depth: int, output: str) -> None:
    """What produced CID (parent CIDs, job, spec hash, image, node) and what was derived from it."""
    data = client_from(ctx).request("GET", f"/api/v0/lineage/{cid}", direction=direction or "both",
                                    depth=depth)["data"]
    if output != "table":
        emit(data, output)
        return
    for p in data["produced_by"]:
        click.echo(f"{cid} made by run {p['run_id']} node {p['node_id']} job {p['job_id'] or '-'} "
                   f"image {p['image']}{'' if p.get('image_digest') else ' (a name: no digest recorded)'} on {p['compute_node'] or '-'} (spec {p['spec_hash'][:12] or '-'})")
    for way, arrow in (("up", "<-"), ("down", "->")):
        for e in data.get(way, []):
            other = e["input"] if way == "up" else e["output"]
            click.echo(f"{'  ' * e['depth']}{arrow} {other}  (run {e['run_id'][:8]} node {e['node_id']})")


amplify.add_command(describe, "status")     # the name for it
amplify.add_command(watch)
