"""`bacalhau ipfs ...`: put data into a private cluster and get it out, with Kubo's CIDs."""

from __future__ import annotations

import sys
import tarfile
import tempfile
from pathlib import Path

import click

from bacalhau.cli.main import client_from
from bacalhau.cli.output import emit, output_option, status
from bacalhau.cli.untar import extract
from bacalhau.errors import UserError


@click.group()
def ipfs() -> None:
    """Work with IPFS content on the node the client talks to (CIDs identical to Kubo's `ipfs add`)."""


@ipfs.command("add")
@click.argument("path", type=click.Path(exists=True, file_okay=True, dir_okay=True))
@click.option("-r", "--recursive", is_flag=True, help="Add a directory and everything in it.")
@click.option("-n", "--only-hash", is_flag=True, help="Only compute the CIDs, locally; send nothing.")
@click.option("--cid-version", type=click.Choice(["0", "1"]), default="0", show_default=True,
              help="CIDv0 (Kubo's default) or CIDv1 with raw leaves.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the root CID.")
@click.pass_context
def add(ctx: click.Context, path: str, recursive: bool, only_hash: bool, cid_version: str, quiet: bool) -> None:
    """Add PATH to the node's store (pinned) and print `added CID PATH` lines, root last."""
    target = Path(path)
    if target.is_dir() and not recursive:
        raise UserError(f"{path} is a directory: use -r")
    if only_hash:
        from bacalhau.ipfs.unixfs import add_path

        lines = add_path(target, cid_version=int(cid_version))
    else:
        with tempfile.TemporaryFile() as tmp:
            with tarfile.open(fileobj=tmp, mode="w") as tar:
                tar.add(target, arcname=target.resolve().name)
            size = tmp.tell()
            tmp.seek(0)
            if size > 64 * 1024 * 1024:
                status(f"uploading {size / 1024**2:.0f} MB")
            lines = client_from(ctx).upload(f"/api/v1/ipfs/add?cid_version={cid_version}", tmp)
    if quiet:
        click.echo(lines[-1][0])
        return
    for cid, rel in lines:
        click.echo(f"added {cid} {rel}")


@ipfs.command("get")
@click.argument("cid")
@click.option("-o", "--output", "output", default=None, type=click.Path(), help="Where to write it (default: ./CID).")
@click.pass_context
def get(ctx: click.Context, cid: str, output: str | None) -> None:
    """Download CID (a file or a directory) from the node's store."""
    dest = Path(output or cid)
    if dest.exists():
        raise UserError(f"{dest} exists already: choose another -o")
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "content.tar"
        received = 0
        with open(archive, "wb") as f:
            for chunk in client_from(ctx).stream(f"/api/v1/ipfs/get/{cid}"):
                f.write(chunk)
                received += len(chunk)
        with tarfile.open(archive) as tar:
            extract(tar, Path(tmp))
        (Path(tmp) / cid).rename(dest)
    status(f"saved {cid} to {dest} ({received} bytes transferred)")


@ipfs.command("cat")
@click.argument("cid")
@click.pass_context
def cat(ctx: click.Context, cid: str) -> None:
    """Print a file's content."""
    out = sys.stdout.buffer
    for chunk in client_from(ctx).stream(f"/api/v1/ipfs/cat/{cid}"):
        out.write(chunk)
    out.flush()


@ipfs.command("id")
@output_option(default="json")
@click.pass_context
def ipfs_id(ctx: click.Context, output: str) -> None:
    """The node's peer ID and multiaddrs, as `ipfs id` prints them."""
    info = client_from(ctx).request("GET", "/api/v1/ipfs/id")
    if output == "table":
        click.echo(info["ID"])
        for addr in info["Addresses"]:
            click.echo(f"  {addr}")
        return
    emit(info, output)
