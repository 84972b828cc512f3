"""`bacalhau dashboard`: the URL of the node's live dashboard, printed (and opened in a browser with --open)."""

from __future__ import annotations

import os
from urllib.parse import quote

import click


@click.command("dashboard")
@click.option("--open", "open_it", is_flag=True, help="Open it in this machine's web browser too.")
@click.pass_context
def dashboard(ctx: click.Context, open_it: bool) -> None:
    """Print the URL of the node's live dashboard (with the API token in it, where one is set)."""
    from bacalhau.cli.client import resolve_api

    root = ctx.find_root().obj or {}
    host, port = resolve_api(root.get("api_host"), root.get("api_port"))
    shown = f"[{host}]" if ":" in host else host
    token = os.environ.get("BACALHAU_API_TOKEN", "")
    url = f"http://{shown}:{port}/dashboard" + (f"?token={quote(token, safe='')}" if token else "")
    click.echo(url)
    if open_it:
        import webbrowser

        if not webbrowser.open(url):
            click.echo("no web browser could be opened here: open the URL above", err=True)
