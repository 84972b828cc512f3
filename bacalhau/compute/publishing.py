"""Results published in groups: publishes that arrive while one is running are run next, together, in one
worker-thread call (ipfs/publish.py `publish_results`): one thread hand-off, one fdatasync of their blocks
and one fsync of their pins for the group, where each took its own (a noop job's publish was one of the six
worker-thread calls it made, and its two syncs). Each result is still walked, capped and imported alone, and
one that fails fails only its own publish.

The first caller to find no group running leads: it runs the queue (its own result with whatever waits), then
hands the lead to the first that came meanwhile, if any, and returns; the others wait for their outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from bacalhau.errors import ExecutorError
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.ipfs.publish import Tree, publish_results


class _Pending:
    def __init__(self, root: Callable[[], Path | Tree]) -> None:
        self.root = root
        self.wake = trio.Event()         # set when its outcome is in, or when it is to lead
        self.outcome: str | BaseException | None = None


class GroupedPublisher:
    def __init__(self, store: Blockstore, max_size: int | None) -> None:
        self._store = store
        self._max_size = max_size
        self._queue: list[_Pending] = []
        self._leading = False

    async def publish(self, root: Callable[[], Path | Tree]) -> str:
        """The result's CID once its blocks are stored and its root pinned. `root` is called in the worker
        thread (finding the directory may touch the disk); it gives the result's directory, or the result
        itself when it is held in memory."""
        item = _Pending(root)
        self._queue.append(item)
        if self._leading:
            try:
                await item.wake.wait()
            except BaseException:
                if item in self._queue:      # never run (if taken into a group, its leader goes on without it)
                    self._queue.remove(item)
                    if item.wake.is_set():   # handed the lead as it was cancelled: hand it on
                        self._hand_on()
                raise
        else:
            self._leading = True
        if item.outcome is None:             # ours to lead (woken without an outcome, or first)
            self._run_group(await self._publish_group())
        outcome = item.outcome
        assert outcome is not None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _publish_group(self) -> list[tuple[_Pending, str | BaseException]]:
        group, self._queue = self._queue, []
        try:
            # shielded: the others' results are in it, and the thread is never abandoned anyway
            with trio.CancelScope(shield=True):
                outcomes: list[str | BaseException] = list(await trio.to_thread.run_sync(
                    publish_results, [p.root for p in group], self._store, self._max_size))
        except Exception as exc:       # the append or the pin failed: for the whole group
            outcomes = [exc] * len(group)
        except BaseException:
            self._run_group([(p, ExecutorError("publishing was interrupted")) for p in group])
            raise
        return list(zip(group, outcomes, strict=True))

    def _run_group(self, results: list[tuple[_Pending, str | BaseException]]) -> None:
        for pending, outcome in results:
            pending.outcome = outcome
            pending.wake.set()
        self._hand_on()

    def _hand_on(self) -> None:
        if self._queue:
            self._queue[0].wake.set()        # its outcome is None: it leads the next group
        else:
            self._leading = False
