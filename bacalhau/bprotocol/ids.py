"""Ids that cross a process boundary, parsed into a type at the edge: a peer that holds the swarm key is not
trusted with what it names. An execution id becomes a directory name, a node id an owner to compare with the
stream's authenticated peer: anything else than the canonical form is refused before a handler sees it.

    ExecutionId, JobId   a UUID in its canonical lowercase form (what the requester's new_id makes)
    NodeId               a libp2p peer id (base58btc of an identity or sha2-256 multihash), or the
                         `mem-<12 hex>` id a node has on the in-memory transport of tests
    ResultItem           one of the result files an execution has, or its whole directory as a tar
    ResultRef            ipfs://<CID> of a published result
"""

from __future__ import annotations

import functools
import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_MEM_ID = re.compile(r"mem-[0-9a-f]{12}")
IDENTITY, SHA2_256 = 0x00, 0x12
MAX_IDENTITY_DIGEST = 42          # libp2p inlines public keys up to 42 bytes (Ed25519, secp256k1)


# what str(uuid.UUID(x)) gives back: lowercase hex, 8-4-4-4-12 (a regex: the UUID round trip was ~2% of a
# node's event loop under noop load, every message carrying two or three ids)
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _uuid(value: str) -> str:
    if _CANONICAL_UUID.fullmatch(value) is None:
        raise ValueError(f"{value[:80]!r} is not a UUID in canonical form")
    return value


def _b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        i = _B58.find(ch)
        if i < 0:
            raise ValueError(f"{ch!r} is not a base58 character")
        n = n * 58 + i
    zeros = len(text) - len(text.lstrip("1"))
    return b"\x00" * zeros + n.to_bytes((n.bit_length() + 7) // 8, "big")


def is_peer_id(value: str) -> bool:
    """A libp2p peer id in base58btc: the multihash of a public key (identity for small keys, sha2-256)."""
    if not 40 <= len(value) <= 64:
        return False
    return _is_peer_id(value)


@functools.lru_cache(maxsize=4096)   # a cluster's few ids, in every message: decoded once (bounded: any peer sends)
def _is_peer_id(value: str) -> bool:
    try:
        mh = _b58decode(value)
    except ValueError:
        return False
    if len(mh) < 2:
        return False
    code, length = mh[0], mh[1]
    if code == IDENTITY:
        return 0 < length <= MAX_IDENTITY_DIGEST and len(mh) == 2 + length
    return code == SHA2_256 and length == 32 and len(mh) == 34


def _node_id(value: str) -> str:
    if is_peer_id(value) or _MEM_ID.fullmatch(value):
        return value
    raise ValueError(f"{value[:80]!r} is not a node id (a libp2p peer id)")


def _result_ref(value: str) -> str:
    from bacalhau.ipfs.unixfs import cid_to_bytes

    if not value.startswith("ipfs://"):
        raise ValueError(f"{value[:80]!r} is not an ipfs:// result reference")
    try:
        cid_to_bytes(value.removeprefix("ipfs://"))
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{value[:80]!r} does not name a CID: {exc}") from None
    return value


ExecutionId = Annotated[str, AfterValidator(_uuid)]
JobId = Annotated[str, AfterValidator(_uuid)]
NodeId = Annotated[str, AfterValidator(_node_id)]
ResultRef = Annotated[str, AfterValidator(_result_ref)]


def parse_execution_id(value: str) -> str:
    """The id itself, or ValueError: for code that takes an id outside a message (a path is built from it).
    Job ids have the same form."""
    return _uuid(value)


class ResultItem(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    EXIT_CODE = "exitCode"
    TAR = "tar"             # the whole result directory
