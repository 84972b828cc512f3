"""Preparing a job's inputs on the compute node, one directory per input, by the source's scheme."""

from __future__ import annotations

import functools
from pathlib import Path

import trio

from bacalhau.errors import ExecutorError
from bacalhau.models import Job
from bacalhau.storage.inline import InlineStorage
from bacalhau.storage.types import Mount, StorageProvider
from bacalhau.storage.url import UrlStorage

DEFAULT_PROVIDERS: list[StorageProvider] = [InlineStorage(), UrlStorage()]


def scheme_of(source: str) -> str:
    if source.startswith("inline:"):
        return "inline"
    return source.split("://", 1)[0].lower() if "://" in source else ""


async def prepare_inputs(job: Job, inputs_root: Path, providers: list[StorageProvider] = DEFAULT_PROVIDERS) -> list[Mount]:
    by_scheme = {scheme: p for p in providers for scheme in p.schemes}
    mounts = []
    for i, spec in enumerate(job.spec.inputs):
        scheme = scheme_of(spec.source)
        provider = by_scheme.get(scheme)
        if provider is None:
            raise ExecutorError(f"input {spec.source[:60]!r}: no storage provider for {scheme or 'this'} source")
        dest = inputs_root / str(i)
        await trio.to_thread.run_sync(functools.partial(dest.mkdir, parents=True, exist_ok=True))
        await provider.prepare(spec, dest)
        mounts.append(Mount(dest, spec.path))
    return mounts
