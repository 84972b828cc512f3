"""Encoding of bprotocol payloads: a message is compact JSON; a reply is an Envelope."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from bacalhau.bprotocol.messages import Envelope, ErrorCode, WireError
from bacalhau.errors import (
    BacalhauError,
    IllegalTransitionError,
    NotFoundError,
    ProtocolError,
    RemoteError,
    StateError,
)

M = TypeVar("M", bound=BaseModel)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def encode(msg: BaseModel) -> bytes:
    return msg.model_dump_json().encode()


def decode(data: bytes, model: type[M]) -> M:
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes is over the {MAX_MESSAGE_BYTES} limit")
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise ProtocolError(f"malformed {model.__name__}: {exc.errors()[0].get('msg', exc)}") from None


def ok_reply(result: BaseModel) -> bytes:
    return Envelope(result=result.model_dump(mode="json")).model_dump_json().encode()


def error_reply(exc: BaseException) -> bytes:
    code = ErrorCode.INTERNAL
    if isinstance(exc, ProtocolError):
        code = ErrorCode.BAD_REQUEST
    elif isinstance(exc, NotFoundError):
        code = ErrorCode.NOT_FOUND
    elif isinstance(exc, IllegalTransitionError | StateError):
        code = ErrorCode.ILLEGAL_STATE
    message = str(exc) if isinstance(exc, BacalhauError) else f"{type(exc).__name__}: {exc}"
    return Envelope(error=WireError(code=code, message=message)).model_dump_json().encode()


def parse_reply(data: bytes, model: type[M]) -> M:
    envelope = decode(data, Envelope)
    if envelope.error is not None:
        raise RemoteError(envelope.error.code.value, envelope.error.message)
    if envelope.result is None:
        raise ProtocolError("reply has neither result nor error")
    try:
        return model.model_validate(envelope.result)
    except ValidationError as exc:
        raise ProtocolError(f"malformed {model.__name__} reply: {exc.errors()[0].get('msg', exc)}") from None
