"""The executor buffer's accounting: accepted executions wait here, first come first served, until the
node has room for the resources they asked for."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from bacalhau.config import DEFAULT_JOB_CPU, DEFAULT_JOB_MEMORY
from bacalhau.models import Resources


def effective(asked: Resources) -> Resources:
    """A job that asks for nothing still takes a share: the original's defaults (100m CPU, 100 MB)."""
    return Resources(cpu=asked.cpu or DEFAULT_JOB_CPU, memory=asked.memory or DEFAULT_JOB_MEMORY)


class Capacity:
    def __init__(self, total: Resources) -> None:
        self.total = total
        self.used = Resources()
        self._waiters: deque[tuple[Resources, trio.Event]] = deque()

    @property
    def free(self) -> Resources:
        return self.total - self.used

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0].fits_in(self.free):
            need, event = self._waiters.popleft()
            self.used = self.used + need
            event.set()

    @asynccontextmanager
    async def reserve(self, asked: Resources) -> AsyncIterator[None]:
        need = effective(asked)
        if not self._waiters and need.fits_in(self.free):
            self.used = self.used + need
        else:
            event = trio.Event()
            entry = (need, event)
            self._waiters.append(entry)
            try:
                await event.wait()
            except BaseException:
                if event.is_set():
                    self.used = self.used - need
                else:
                    self._waiters.remove(entry)
                self._wake()
                raise
        try:
            yield
        finally:
            self.used = self.used - need
            self._wake()
