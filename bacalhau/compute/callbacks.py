"""How a compute node tells its requester of an outcome (bid, run complete, publish complete, failure, cancel):
a callback lost on the way (a call that timed out, a reset stream, a requester restarting) is sent again after a
short backoff, a bounded number of times. Without it a lost callback waited for the requester's reconcile pass
(30 s): under 1% loss the simulation's p99 was 58 s.

Sending again is safe: the requester takes each callback by compare-and-set on the execution's state, so a
second copy of one it already took (its reply was what got lost) is answered with an error and changes nothing.
An answer, any answer, ends the sending: only silence or a broken connection is retried. A requester that
stays gone is given up on after the last attempt; its reconcile pass, once it is back, asks the node.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from bacalhau.bprotocol import messages as m
from bacalhau.errors import BacalhauError, RemoteError, TransportError, UnsupportedProtocolError

log = logging.getLogger(__name__)
M = TypeVar("M")

DEFAULT_CALLBACK_ATTEMPTS = 5          # sends of one callback, the first included
DEFAULT_CALLBACK_BACKOFF = 0.25        # seconds before the second send; doubled for each after it
DEFAULT_CALLBACK_MAX_BACKOFF = 4.0


@dataclass(frozen=True)
class CallbackRetry:
    attempts: int = DEFAULT_CALLBACK_ATTEMPTS
    backoff: float = DEFAULT_CALLBACK_BACKOFF
    max_backoff: float = DEFAULT_CALLBACK_MAX_BACKOFF

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed send number `attempt` (1-based): doubling, with half of it jittered so
        the nodes that lost callbacks in the same moment do not all send again in the same moment."""
        base = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return base / 2 + rng.random() * base / 2


DEFAULT_CALLBACK_RETRY = CallbackRetry()
_RNG = random.Random()     # the jitter's: one, seeded once (a Random() a call read urandom each time)


def worth_retrying(exc: BacalhauError) -> bool:
    """Silence or a broken connection: the callback may not have arrived. A peer that does not speak the
    protocol, or that answered (even with an error), has had its say."""
    if isinstance(exc, UnsupportedProtocolError):
        return False
    if isinstance(exc, TransportError):
        return True
    return isinstance(exc, RemoteError) and exc.code == m.ErrorCode.UNAVAILABLE


async def deliver(call: Callable[[str, M], Awaitable[None]], requester_id: str, msg: M, *,
                  policy: CallbackRetry = DEFAULT_CALLBACK_RETRY, rng: random.Random | None = None, what: str = "") -> bool:
    """Send one callback until the requester answers it or `policy.attempts` sends went unanswered. True once
    answered with an Ack; False otherwise (logged; never raises a BacalhauError)."""
    rng = rng or _RNG
    what = what or getattr(call, "__name__", "callback")
    for attempt in range(1, policy.attempts + 1):
        try:
            await call(requester_id, msg)
            if attempt > 1:
                log.info("%s to requester %s arrived on attempt %d", what, requester_id, attempt)
            return True
        except BacalhauError as exc:
            if not worth_retrying(exc):
                # e.g. a second copy of a callback the requester took already (its reply was lost)
                log.info("%s to requester %s refused: %s", what, requester_id, exc)
                return False
            if attempt == policy.attempts:
                # the requester's reconcile pass asks this node how the execution went, once it can
                log.warning("%s to requester %s failed %d times, last: %s; giving up", what, requester_id,
                            attempt, exc)
                return False
            log.info("%s to requester %s failed (%s); sending again", what, requester_id, exc)
        await trio.sleep(policy.delay(attempt, rng))
    return False
