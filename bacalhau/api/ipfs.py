"""The node's IPFS store over the API: put data into a private cluster and get it out with only the CLI.

    GET  /api/v1/ipfs/id                       peer ID and multiaddrs
    POST /api/v1/ipfs/add?cid_version=0|1      body: a tar of what to add -> [[cid, path], ...], root last
    GET  /api/v1/ipfs/get/{cid}                a tar of the content (file, directory or symlink)
    GET  /api/v1/ipfs/cat/{cid}                a file's bytes
Content this node does not hold is fetched from the cluster's nodes with bitswap first.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from bacalhau.api.common import handle_errors
from bacalhau.api.ports import ApiDeps
from bacalhau.compute.results import stream_file
from bacalhau.errors import UserError
from bacalhau.ipfs.dagpb import valid_cid
from bacalhau.ipfs.exporter import cat, export_tar
from bacalhau.ipfs.unixfs import add_path, cid_to_bytes

if TYPE_CHECKING:
    from bacalhau.ipfs.blockstore import Blockstore

MAX_ADD_BYTES = 10 * 1024**3


def _cid(text: str) -> bytes:
    if "/" in text.strip("/"):
        root = text.strip("/").split("/")[0]
        raise UserError(f"{text!r}: paths inside a CID are not supported; give the CID alone ({root}) and pick "
                        "the file from what `bacalhau ipfs get` writes")
    try:
        cid = cid_to_bytes(text)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not valid_cid(cid):
        raise UserError(f"{text!r} is not a sha2-256 CID")
    return cid


def _add_tar(tar_path: Path, version: int, store: Blockstore) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(tar_path) as tar:
        tar.extractall(tmp, filter="data")
        entries = list(Path(tmp).iterdir())
        if len(entries) != 1:
            raise UserError("the upload must hold exactly one file or directory")
        lines = add_path(entries[0], put=store.put, cid_version=version)
        store.pin(cid_to_bytes(lines[-1][0]))
        return lines


def _cat_to_file(cid: bytes, store: Blockstore) -> Path:
    fd, name = tempfile.mkstemp()
    with open(fd, "wb") as f:
        for chunk in cat(cid, store):
            f.write(chunk)
    return Path(name)


async def _unlink(path: Path) -> None:
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))


def routes(deps: ApiDeps) -> list[BaseRoute]:
    content = deps.content
    store = content.blockstore

    async def ipfs_id(request: Request) -> Response:
        return JSONResponse(await content.ipfs_identity())

    async def add(request: Request) -> Response:
        version = int(request.query_params.get("cid_version", "0"))
        if version not in (0, 1):
            raise UserError("cid_version must be 0 or 1")
        fd, name = tempfile.mkstemp(suffix=".tar")
        upload = Path(name)
        try:
            received = 0
            async with await trio.open_file(fd, "wb") as f:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > MAX_ADD_BYTES:
                        raise UserError(f"uploads are limited to {MAX_ADD_BYTES} bytes")
                    await f.write(chunk)
            try:
                lines = await trio.to_thread.run_sync(_add_tar, upload, version, store)
                await content.ipfs_published(cid_to_bytes(lines[-1][0]))
            except tarfile.TarError as exc:
                raise UserError(f"the upload is not a tar: {exc}") from None
        finally:
            await _unlink(upload)
        return JSONResponse([list(line) for line in lines])

    async def held(text: str) -> bytes:
        """The CID, fetched from the cluster first when this node does not hold it."""
        cid = _cid(text)
        await content.fetch_cid(cid)
        return cid

    async def get(request: Request) -> Response:
        text = request.path_params["cid"]
        cid = await held(text)
        tar_path = await trio.to_thread.run_sync(export_tar, cid, store, text)
        return StreamingResponse(stream_file(tar_path, remove=True), media_type="application/x-tar")

    async def cat_(request: Request) -> Response:
        text = request.path_params["cid"]
        cid = await held(text)
        path = await trio.to_thread.run_sync(_cat_to_file, cid, store)
        return StreamingResponse(stream_file(path, remove=True), media_type="application/octet-stream")

    return [
        Route("/api/v1/ipfs/id", handle_errors(ipfs_id), methods=["GET"]),
        Route("/api/v1/ipfs/add", handle_errors(add), methods=["POST"]),
        Route("/api/v1/ipfs/get/{cid:path}", handle_errors(get), methods=["GET"]),
        Route("/api/v1/ipfs/cat/{cid:path}", handle_errors(cat_), methods=["GET"]),
    ]
