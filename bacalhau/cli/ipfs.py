"""`bacalhau ipfs ...`: content addressing as Kubo does it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bacalhau.errors import UserError


@click.group()
def ipfs() -> None:
    """Work with IPFS content (CIDs identical to Kubo's `ipfs add`)."""


@ipfs.command("add")
@click.argument("path", type=click.Path(exists=True, file_okay=True, dir_okay=True))
@click.option("-r", "--recursive", is_flag=True, help="Add a directory and everything in it.")
@click.option("-n", "--only-hash", is_flag=True, help="Only compute the CIDs; store nothing.")
@click.option("--cid-version", type=click.Choice(["0", "1"]), default="0", show_default=True,
              help="CIDv0 (Kubo's default) or CIDv1 with raw leaves.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the root CID.")
def add(path: str, recursive: bool, only_hash: bool, cid_version: str, quiet: bool) -> None:
    """Print `CID  PATH` for PATH (and, with -r, everything under it), root last."""
    from bacalhau.ipfs.unixfs import add_path

    if Path(path).is_dir() and not recursive:
        raise UserError(f"{path} is a directory: use -r")
    if not only_hash:
        raise UserError("storing content needs the node's embedded IPFS store, which this build does not have "
                        "yet: use --only-hash (-n) to compute CIDs")
    lines = add_path(path, cid_version=int(cid_version))
    out = sys.stdout
    if quiet:
        out.write(lines[-1][0] + "\n")
        return
    for cid, rel in lines:
        out.write(f"added {cid} {rel}\n")
