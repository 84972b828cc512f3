"""The signed envelope of Bacalhau 1.0 (Go `publicapi.UnmarshalSigned`):

    {"client_public_key": base64 PKCS#1 DER, "payload": {...}, "signature": base64}

The signature covers the payload's bytes exactly as they stand in the body, so the payload is sliced out of
the raw body, never re-serialised. Envelope keys match case-insensitively, as Go's decoder matches struct
fields; `job_create_payload` (clients up to 0.3.25) is taken as `payload`. The payload's `ClientID` must be
the id of the key that signed it. Every failure is a `BadRequest` carrying Go's message text, which the
routes answer as a 400 ErrorResponse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bacalhau.errors import UserError

UNKNOWN_SERVER_ERROR = "error-unknown-server-error"
JOB_NOT_FOUND = "error-job-not-found"
ENVELOPE_KEYS = {"client_public_key": "client_public_key", "payload": "payload", "job_create_payload": "payload",
                 "signature": "signature"}
_WS = " \t\n\r"   # JSON's whitespace (Python's raw_decode does not skip it)


class BadRequest(UserError):
    """A request this API answers with 400 and an ErrorResponse whose Message is str(self)."""


def error_body(message: str, code: str = UNKNOWN_SERVER_ERROR) -> dict[str, Any]:
    """Go's ErrorResponse, as submit, cancel and list answer errors."""
    return {"Code": code, "Message": message, "Details": {}, "Err": message}


class JsonObject(dict[str, Any]):
    """A decoded JSON object that also holds its keys case-folded, for field() to look up in one step."""

    folded: dict[str, list[str]]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> JsonObject:
    # Go takes the last of two equal keys and Python's json too, but a reader that takes the first would see
    # another request than the one verified: a duplicate is refused rather than guessed at
    out = JsonObject()
    out.folded = {}
    for key, value in pairs:
        if key in out:
            raise BadRequest(f"error decoding request: duplicate key {key[:100]!r}")
        out[key] = value
        out.folded.setdefault(key.lower(), []).append(key)
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def loads(text: str) -> Any:
    """Strict JSON: no duplicate keys, no NaN/Infinity, nesting bounded (a deep body is a 400, not a crash)."""
    try:
        value, end = _DECODER.raw_decode(text, _skip(text, 0))
    except RecursionError:
        raise BadRequest("error decoding request: JSON nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"error decoding request: {exc}") from None
    if _skip(text, end) != len(text):
        raise BadRequest("error decoding request: invalid character after top-level value")
    _finite(value)
    return value


def _finite(value: Any) -> None:
    # json takes NaN and Infinity, which are not JSON (Go refuses them); a loop, as the value may be deep
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            raise BadRequest("error decoding request: NaN and Infinity are not JSON")
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def decode_body(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("error decoding request: the body is not UTF-8") from None


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def field(obj: dict[str, Any], name: str) -> Any:
    """`obj`'s value for struct field `name`, its key matched case-insensitively as Go's decoder does; None
    if absent. Two keys that both match are refused (Go would take the later one, a reader that prefers the
    exact one the other: what runs must be what was read)."""
    lower = name.lower()
    folded = getattr(obj, "folded", None)
    found = folded.get(lower, []) if folded is not None else [k for k in obj if k.lower() == lower]
    if len(found) > 1:
        raise BadRequest(f"error decoding request: both {found[0]!r} and {found[1]!r} given")
    return obj[found[0]] if found else None


def raw_fields(text: str) -> dict[str, tuple[int, int, Any]]:
    """The envelope's known keys -> (start, end, decoded value) of each value in `text`, as written."""
    i = _skip(text, 0)
    if i >= len(text) or text[i] != "{":
        raise BadRequest("error decoding request: the body is not a JSON object")
    spans: dict[str, tuple[int, int, Any]] = {}
    i = _skip(text, i + 1)
    if i < len(text) and text[i] == "}":
        return spans
    while True:
        try:
            key, i = _DECODER.raw_decode(text, i)
            if not isinstance(key, str):
                raise ValueError("object key is not a string")
            i = _skip(text, i)
            if i >= len(text) or text[i] != ":":
                raise ValueError("expected ':' after object key")
            start = _skip(text, i + 1)
            value, end = _DECODER.raw_decode(text, start)
        except RecursionError:
            raise BadRequest("error decoding request: JSON nested too deeply") from None
        except ValueError as exc:
            raise BadRequest(f"error decoding request: {exc}") from None
        known = ENVELOPE_KEYS.get(key.lower())
        if known is not None:
            if known in spans:
                raise BadRequest(f"error decoding request: the envelope gives {known!r} twice")
            _finite(value)
            spans[known] = (start, end, value)
        i = _skip(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip(text, i + 1)
            continue
        if i < len(text) and text[i] == "}":
            break
        raise BadRequest("error decoding request: expected ',' or '}' in the envelope")
    if _skip(text, i + 1) != len(text):
        raise BadRequest("error decoding request: invalid character after top-level value")
    return spans


@dataclass(frozen=True)
class Signed:
    client_id: str
    payload: dict[str, Any]
    raw_payload: bytes


def parse_signed(body: bytes) -> Signed:
    """Verify the envelope in `body` and return who signed it and its payload (see the module docstring)."""
    from bacalhau.rsa_identity import SignatureError, verify_payload

    text = decode_body(body)
    spans = raw_fields(text)
    values = {name: value for name, (_, _, value) in spans.items()}
    if values.get("payload") is None:
        raise BadRequest("no payload contained in signed message")
    signature, public_key = values.get("signature"), values.get("client_public_key")
    if not isinstance(signature, str) or not isinstance(public_key, str) or not signature or not public_key:
        raise BadRequest("error validating request: the request must carry a signature and a client_public_key")
    start, end, _ = spans["payload"]
    raw = text[start:end].encode("utf-8")
    try:
        client_id = verify_payload(raw, signature, public_key)
    except SignatureError as exc:
        raise BadRequest(f"error verifying request signature: {exc}") from None
    payload = values["payload"]
    if not isinstance(payload, dict):
        raise BadRequest("error decoding request: the payload is not a JSON object")
    claimed = field(payload, "ClientID")
    if not isinstance(claimed, str) or not claimed:
        raise BadRequest("error validating request: the payload has no ClientID")
    if claimed != client_id:
        raise BadRequest("error validating request: client's public key does not match client ID")
    return Signed(client_id=client_id, payload=payload, raw_payload=raw)
