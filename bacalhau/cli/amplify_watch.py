"""`bacalhau amplify watch DIR`: each new file of DIR, once it stops growing, is added to the node's IPFS store
(as a directory holding that one file) and queued as an Amplify run, over the API only.

Each file is taken once: what was queued is remembered in the client's state dir
($BACALHAU_DIR/amplify-watch/<hash of DIR and the API's address>.json), so a watcher started again takes only files it has not seen.
A run's id is derived from DIR, the file's name and its CID, so a watcher stopped between queueing a run and
writing it down queues the same run again (the same id is the same run), not a second. Hidden files, directories
and symlinks are left alone. Ctrl-C ends it cleanly."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click

from bacalhau.cli.output import status

WATCH_RUNS = uuid.UUID("3f0b7f8e-5c2a-4b7e-9a43-2d7c5e8a1b60")     # a watched file's run: uuid5 of dir, name, CID


def _state_file(directory: Path, api: str) -> Path:
    from bacalhau.cli.client import _state_dir

    digest = hashlib.sha256(f"{directory}\0{api}".encode()).hexdigest()[:32]
    return _state_dir() / "amplify-watch" / f"{digest}.json"


def _load(path: Path) -> dict[str, Any]:
    try:
        seen = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path} cannot be read ({exc}): move it away to start afresh") from None
    return seen if isinstance(seen, dict) else {}


def _save(path: Path, seen: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(seen, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _add(client: Any, file: Path) -> str:
    """The CID of a directory holding `file` alone (a workflow's root mounts a directory)."""
    with tempfile.TemporaryFile() as tmp:
        with tarfile.open(fileobj=tmp, mode="w") as tar:
            top = tarfile.TarInfo("input")
            top.type, top.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(top)
            tar.add(file, arcname=f"input/{file.name}", recursive=False)
        tmp.seek(0)
        lines = client.upload("/api/v1/ipfs/add?cid_version=0", tmp)
    return str(lines[-1][0])


def _candidates(directory: Path) -> dict[str, tuple[int, int]]:
    """Plain files (name -> size, mtime) of the directory, hidden ones left out."""
    found = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[entry.name] = (st.st_size, st.st_mtime_ns)
    return found


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--workflow", "-f", default=None, type=click.Path(dir_okay=False), help="A workflow file "
              "(default: the node's).")
@click.option("--settle", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a file must stay the same size and time before it is taken.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.05),
              help="Seconds between looks at the directory.")
@click.option("--no-cache", is_flag=True, help="Run every step (see amplify run --no-cache).")
@click.option("--once", is_flag=True, help="Take the files there now (once they settle), then exit (1 if one "
              "could not be queued).")
@click.pass_context
def watch(ctx: click.Context, directory: str, workflow: str | None, settle: float, interval: float,
          no_cache: bool, once: bool) -> None:
    """Queue a run over each new file of DIRECTORY; prints `RUN_ID NAME CID` for each."""
    from bacalhau.cli.amplify import _workflow_text, queue_run
    from bacalhau.cli.main import client_from
    from bacalhau.errors import BacalhauError

    root = Path(directory).resolve()
    text = _workflow_text(workflow)
    client = client_from(ctx)
    state = _state_file(root, f"{client.host}:{client.port}")   # another node has not seen these files
    seen = _load(state)
    pending: dict[str, tuple[tuple[int, int], float]] = {}    # name -> (size, mtime), since when unchanged
    failed: set[str] = set()                                   # with --once: files that could not be queued
    status(f"watching {root} ({len(seen)} files taken before)")
    try:
        while True:
            now = time.monotonic()
            found = {n: v for n, v in _candidates(root).items() if n not in seen and n not in failed}
            for name in list(pending):
                if name not in found:
                    del pending[name]              # removed before it settled
            for name, facts in found.items():
                if name not in pending or pending[name][0] != facts:
                    pending[name] = (facts, now)
                    continue
                if now - pending[name][1] < settle:
                    continue
                try:
                    cid = _add(client, root / name)
                    run_id = str(uuid.uuid5(WATCH_RUNS, f"{root}\0{name}\0{cid}"))
                    queue_run(client, run_id, cid, text, no_cache)
                except (BacalhauError, OSError) as exc:   # this file waits for the next look; the others go on
                    status(f"{name}: {exc}")
                    pending[name] = (facts, now)
                    if once:          # ... unless there is no next look
                        failed.add(name)
                        del pending[name]
                    continue
                seen[name] = {"cid": cid, "run": run_id}
                _save(state, seen)
                del pending[name]
                click.echo(f"{run_id} {name} {cid}")
            if once and not pending:
                if failed:
                    raise SystemExit(1)
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        status(f"stopped watching {root}")
