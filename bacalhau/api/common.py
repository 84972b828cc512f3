"""What the API's route modules share: the error envelope, the body cap, the redaction of env values.

Errors are {"error": message, "code": kind} with a 4xx/5xx status; `handle_errors` maps the exception tree
(errors.py) onto them, so a route raises and never builds an error answer for a typed failure itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bacalhau.errors import AmbiguousIdError, BacalhauError, NotFoundError, StateError, UserError
from bacalhau.models import Job

MAX_BODY = 4 * 1024 * 1024     # a JSON body (a job spec with inline inputs), counted while it streams in
REDACTED = "***"               # env values as the API shows them: another client's secrets stay theirs

Handler = Callable[[Request], Awaitable[Response]]


class BodyTooLarge(UserError):
    pass


def error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


_STATUS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], int, str], ...] = (
    (BodyTooLarge, 413, "too_large"),
    (NotFoundError, 404, "not_found"),
    (AmbiguousIdError, 400, "ambiguous_id"),
    ((UserError, ValueError), 400, "bad_request"),
    (StateError, 409, "conflict"),
    (BacalhauError, 502, "upstream"),
)


def status_of(exc: Exception) -> tuple[int, str] | None:
    """The HTTP status and error code a raised error answers with; None for an error that is a bug here."""
    for kinds, status, code in _STATUS:
        if isinstance(exc, kinds):
            return status, code
    return None


def number_param(request: Request, name: str, default: float, low: float, high: float, *, whole: bool = False
                 ) -> float:
    """A query parameter that is a number between `low` and `high` (a whole one if `whole`), else UserError in
    one line naming it (not Python's own words, nor a NaN or a number past SQLite's integers let through)."""
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        raise UserError(f"{name} must be a {'whole ' if whole else ''}number, not {text[:40]!r}") from None
    if not low <= value <= high:       # NaN fails this too
        raise UserError(f"{name} must be between {_shown(low)} and {_shown(high)}")
    return value


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """number_param for a whole number (a page, a depth, a count)."""
    return int(number_param(request, name, default, low, high, whole=True))


def _shown(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"     # 1000000, not 1e+06


def handle_errors(fn: Handler, answer: Callable[[int, str, str], Response] | None = None) -> Handler:
    """`fn`, whose user's and peers' errors are answered (by `answer`: status, message, code; our JSON error
    by default) instead of raised."""
    reply = answer or error

    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except RecursionError:      # JSON nested past what the parser recurses (a hostile body), not a bug here
            return reply(400, "the request body is nested too deep", "bad_request")
        except Exception as exc:
            found = status_of(exc)
            if found is None:
                raise
            return reply(found[0], str(exc), found[1])

    return wrapper


async def read_body(request: Request, cap: int = MAX_BODY) -> bytes:
    """The body, refused with BodyTooLarge as soon as it passes `cap` (a declared length over it is refused
    before reading a byte): a 100 MB body costs this node at most `cap` of memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise BodyTooLarge(f"request body over {cap} bytes")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge(f"request body over {cap} bytes")
        parts.append(chunk)
    return b"".join(parts)


def redacted(job: Job) -> dict[str, Any]:
    """The job as the API shows it: env values of its docker or wasm spec replaced by REDACTED."""
    data = job.model_dump(mode="json")
    for engine in ("docker", "wasm"):
        section = data["spec"].get(engine)
        if isinstance(section, dict) and section.get("env"):
            section["env"] = dict.fromkeys(section["env"], REDACTED)
    return data


async def first_chunk(stream: AsyncIterator[bytes]) -> bytes | None:
    """Pull the first chunk before answering, so a missing result is a 404, not a broken 200."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def chain(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is None:
        return
    yield first
    async for chunk in rest:
        yield chunk
