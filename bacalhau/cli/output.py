"""Output formatting for the CLI: tables for people, JSON and YAML for machines."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

FORMATS = ("table", "json", "yaml")
_F = TypeVar("_F", bound=Callable[..., Any])


def output_option(default: str = "table") -> Callable[[_F], _F]:
    return click.option("--output", "-o", "output", type=click.Choice(FORMATS), default=default, show_default=True,
                        help="How to print the result.")


def emit(data: Any, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    elif fmt == "yaml":
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)
    else:
        raise ValueError(fmt)


def table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())


def ago(ts: float) -> str:
    delta = max(0.0, time.time() - ts)
    if delta < 60:
        return f"{delta:.0f}s ago"
    if delta < 3600:
        return f"{delta / 60:.0f}m ago"
    if delta < 86400:
        return f"{delta / 3600:.0f}h ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def short(node_or_job_id: str, n: int = 8) -> str:
    if node_or_job_id.startswith("12D3KooW"):
        return node_or_job_id[-n:]
    return node_or_job_id[:n]


def status(message: str) -> None:
    """Progress and status go to stderr, so stdout stays the job's output or an ID."""
    print(message, file=sys.stderr, flush=True)
