"""Retention: what a compute node keeps of finished work is garbage-collected after a while, so a node that
runs for months does not fill its disk.

Every pass removes the result directories (results/<execution id>) of executions that ended more than
`retention` seconds ago, and the blocks no pin reaches in blockstore packs last written more than `retention`
seconds ago. Pinned data (published results, `ipfs add`) is never removed, nor anything of an execution in
flight: its directory, and the blocks of its ipfs:// inputs, which are kept as if pinned.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import trio

from bacalhau.compute.results import remove_tree
from bacalhau.compute.store import ExecutionStore
from bacalhau.errors import BacalhauError
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.storage.ipfs import parse_ipfs_source

log = logging.getLogger(__name__)
MAX_GC_INTERVAL = 3600.0        # a pass at least this often (more often when the retention is shorter)


class Retention:
    def __init__(self, *, store: ExecutionStore, results_dir: Path, blockstore: Blockstore, retention: float) -> None:
        if not 0 <= retention < float("inf"):
            raise ValueError(f"retention must be a number of seconds, 0 or more, not {retention}")
        self._store = store
        self._results_dir = results_dir
        self._blockstore = blockstore
        self.retention = retention          # seconds; 0 keeps everything
        self.passes = 0

    async def run(self, *, task_status: trio.TaskStatus[Retention] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        if self.retention <= 0:
            return
        while True:
            await trio.sleep(min(self.retention, MAX_GC_INTERVAL))
            try:
                results, blocks = await self.collect()
            except (BacalhauError, OSError) as exc:
                # a pass that fails (a corrupt pinned block, a disk error) is not worth the node: the next
                # pass tries again, and the operator sees why
                log.warning("retention: a garbage-collection pass failed: %s", exc)
                continue
            if results or blocks:
                log.info("retention: removed %d results and %d blocks older than %gs", results, blocks,
                         self.retention)

    async def collect(self) -> tuple[int, int]:
        """One pass; how many result directories and blocks went."""
        cutoff = time.time() - self.retention
        results = 0
        for execution_id in await self._store.finished_before(cutoff):
            root = self._results_dir / execution_id
            if root.parent == self._results_dir and await trio.Path(root).is_dir():
                await trio.to_thread.run_sync(remove_tree, root)   # not shutil's: recursive in 3.11
                results += 1
        in_flight: list[bytes] = []
        for ex in await self._store.unfinished():
            for spec in ex.job.spec.inputs:
                if spec.source.startswith("ipfs://"):
                    try:
                        in_flight.append(parse_ipfs_source(spec.source))
                    except (BacalhauError, ValueError):
                        continue
        blocks = await trio.to_thread.run_sync(
            lambda: self._blockstore.gc(older_than=cutoff, roots=in_flight))
        self.passes += 1
        return results, blocks
