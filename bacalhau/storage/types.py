"""Input storage: where a job's `inputs` come from and how they land on the compute node.

Every input becomes a directory on the node, mounted read-only at the spec's `path` in the job:
    https://host/a/b.csv   fetched by the compute node into PATH/b.csv
    inline:NAME;base64,... small data uploaded with the job (the CLI does this for local files) -> PATH/NAME
    ipfs://CID             needs the embedded IPFS node (not in this build: a clear error)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bacalhau.models import StorageSpec


@dataclass(frozen=True)
class Mount:
    host_dir: Path
    path: str          # where the job sees it


class StorageProvider(Protocol):
    @property
    def schemes(self) -> tuple[str, ...]:
        """The source schemes it prepares (a class attribute in a provider)."""
        ...

    async def prepare(self, spec: StorageSpec, dest: Path) -> None:
        """Put the input's content into the (existing, empty) directory `dest`; raise ExecutorError if not."""
        ...
