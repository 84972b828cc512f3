"""The one exception tree of bacalhau.

    BacalhauError
    ├── UserError                 a mistake the user can fix: one clear line, non-zero exit
    │   ├── SpecError             a job spec that does not validate
    │   ├── NotFoundError         no job / node / execution with that id (or prefix)
    │   └── AmbiguousIdError      an id prefix that matches several jobs
    ├── StateError
    │   └── IllegalTransitionError  a state machine asked for a transition its table forbids
    ├── SchedulingError           no node can take a job (the message says why)
    ├── ExecutorError             an executor could not run a job (image missing, engine error)
    │   └── JobCausedError        the job's own doing (a module without its entry point): the same on any node
    ├── ProtocolError             bprotocol: malformed / oversize / unknown frame, typed remote error
    │   └── RemoteError           the peer replied with an error code
    ├── TransportError            a peer could not be reached or a stream broke
    │   └── UnsupportedProtocolError  the peer does not speak that protocol (an older version)
    └── ApiError                  the client's view of an API failure
        └── DaemonNotRunning      nothing listens at the API address

Adapters translate foreign errors (docker, libp2p, sqlite, trio) into these at the boundary.
"""

from __future__ import annotations


class BacalhauError(Exception):
    """Base of every error bacalhau raises on purpose."""


class UserError(BacalhauError):
    """A user mistake; the message says what was wrong and what to do."""


class SpecError(UserError):
    pass


class NotFoundError(UserError):
    pass


class AmbiguousIdError(UserError):
    pass


class StateError(BacalhauError):
    pass


class ReplayedSignature(StateError):
    """A signed request whose signature was accepted once already."""

    def __init__(self, message: str = "this signed request was already used once (a replay?): sign a new one"
                 ) -> None:
        super().__init__(message)


class IllegalTransitionError(StateError):
    def __init__(self, kind: str, obj_id: str, current: str, target: str) -> None:
        super().__init__(f"{kind} {obj_id}: illegal transition {current} -> {target}")
        self.current = current
        self.target = target


class SchedulingError(BacalhauError):
    pass


class ExecutorError(BacalhauError):
    pass


class JobCausedError(ExecutorError):
    """The job itself is at fault, so any node would fail it the same way: it is not retried elsewhere."""


class ProtocolError(BacalhauError):
    pass


class RemoteError(ProtocolError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.remote_message = message


class TransportError(BacalhauError):
    pass


class UnsupportedProtocolError(TransportError):
    pass


class ApiError(BacalhauError):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class DaemonNotRunning(ApiError):
    pass


def first_leaf(error: BaseException) -> BaseException:
    """The first error inside nested exception groups (the error itself when it is not a group): what a
    nursery's failure was about, for one line to a user."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
