"""The executor buffer's accounting: accepted executions wait here, first come first served, until the
node has room for the resources they asked for."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from bacalhau.config import JobLimits
from bacalhau.models import Resources

_DEFAULT_LIMITS = JobLimits()


def effective(asked: Resources, limits: JobLimits = _DEFAULT_LIMITS, engine: str | None = None) -> Resources:
    """A job that asks for nothing still takes a share: the node's default job size (the requester, which
    does not know a node's setting, ranks with the default one)."""
    return limits.size(asked, engine)


class Capacity:
    def __init__(self, total: Resources, limits: JobLimits = _DEFAULT_LIMITS) -> None:
        self.total = total
        self.limits = limits
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

    def take_now(self, asked: Resources, engine: str | None = None) -> Resources | None:
        """What `asked` needs, taken if it is free now with nobody queued before it (then `holding` it gives it
        back); None if it would have to queue."""
        need = effective(asked, self.limits, engine)
        if self._waiters or not need.fits_in(self.free):
            return None
        self.used = self.used + need
        return need

    def give_back(self, need: Resources) -> None:
        self.used = self.used - need
        self._wake()

    @asynccontextmanager
    async def holding(self, need: Resources) -> AsyncIterator[None]:
        """What take_now took, given back when the block ends."""
        try:
            yield
        finally:
            self.give_back(need)

    @asynccontextmanager
    async def reserve(self, asked: Resources, engine: str | None = None) -> AsyncIterator[None]:
        need = effective(asked, self.limits, engine)
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
        async with self.holding(need):
            yield
