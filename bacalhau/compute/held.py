"""The outputs a compute node holds in memory, not in files: those known before their execution runs (a noop
job that does not sleep, executors/noop.py known_output). compute/results.py and compute/logs.py serve them."""

from __future__ import annotations

from bacalhau.compute.store import ExecutionStore, LocalExecution
from bacalhau.executors.noop import known_output
from bacalhau.executors.types import KnownOutput


class HeldOutputs:
    """An execution's output in memory: while the execution runs, the one its executor ran (held from its
    start until its result is recorded, or it ends before that); for the others (awaiting the requester's
    answer, ended, or recorded before a restart), as its record says: it ran once its result is recorded. One
    held a running execution, referencing its job's spec: nothing is copied, and a requester that never
    answers pins nothing."""

    def __init__(self, store: ExecutionStore) -> None:
        self._store = store
        self._held: dict[str, KnownOutput] = {}

    def hold(self, ex: LocalExecution) -> KnownOutput | None:
        """The output of an execution about to start, held, if it is known; None: it goes to files."""
        known = known_output(ex.job)
        if known is not None:
            self._held[ex.id] = known
        return known

    def __len__(self) -> int:
        return len(self._held)

    def held(self, execution_id: str) -> KnownOutput | None:
        """The output held for a running execution, with no read of its record."""
        return self._held.get(execution_id)

    def release(self, execution_id: str) -> None:
        self._held.pop(execution_id, None)

    def of(self, ex: LocalExecution) -> KnownOutput | None:
        held = self._held.get(ex.id)
        if held is not None:
            return held
        if ex.result is None and ex.state.terminal:
            # it ended without running, so none was made here: its files answer the same (none), and a row
            # whose job no longer parses has a noop stand-in (compute/store.py) whose files an earlier run left
            return None
        known = known_output(ex.job)
        if known is not None:
            known.ran = ex.result is not None
        return known

    async def lookup(self, execution_id: str) -> KnownOutput | None:
        """of() for an execution known by its id (NotFoundError if there is none)."""
        held = self._held.get(execution_id)
        return held if held is not None else self.of(await self._store.get(execution_id))
