"""Clients sign what they ask of a requester; the requester checks it.

A client's key pair (Ed25519) is created once under its state dir (mode 0600 from the start). Its public
key, in hex, is its client id. A signed request carries `client_id`, `cluster_id`, `signed_at` (unix
seconds), `nonce` and `signature` over the canonical JSON of {"action", "cluster", "nonce", "signed_at"}.
The cluster id is what the requester's GET /api/v1/id says (a one-way hash of the cluster's swarm key), so a
signature made for one cluster is refused by every other. The requester rejects a bad signature, one signed
more than MAX_AGE seconds away from its clock, and one it has seen before (api/replay.py); it lets only the
client that submitted a job cancel it.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bacalhau.errors import UserError

MAX_AGE = 60.0   # seconds a signature is accepted either side of the requester's clock (clocks differ a little)


def cluster_id_of(secret: str) -> str:
    """The public name of a cluster: a one-way hash of its swarm key, which it does not reveal."""
    return hashlib.sha256(b"bacalhau/cluster-id/1\n" + secret.encode()).hexdigest()[:32]


def _canonical(action: Any, signed_at: float, cluster_id: str, nonce: str) -> bytes:
    return json.dumps({"action": action, "cluster": cluster_id, "nonce": nonce, "signed_at": signed_at},
                      sort_keys=True, separators=(",", ":")).encode()


def load_or_create_client_key(path: Path) -> Any:
    """The key file holds the 32 raw private-key bytes in hex (cryptography's PEM loader alone costs a client
    command 20 ms of imports)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
    key = Ed25519PrivateKey.generate()
    from bacalhau.secret_file import write_secret

    write_secret(path, key.private_bytes_raw().hex() + "\n")
    return key


def client_id_of(key: Any) -> str:
    return str(key.public_key().public_bytes_raw().hex())


def sign(key: Any, action: Any, cluster_id: str) -> dict[str, Any]:
    signed_at, nonce = round(time.time(), 3), secrets.token_hex(8)
    return {"client_id": client_id_of(key), "cluster_id": cluster_id, "signed_at": signed_at, "nonce": nonce,
            "signature": key.sign(_canonical(action, signed_at, cluster_id, nonce)).hex()}


@dataclass(frozen=True)
class Signed:
    client_id: str
    signature: str
    signed_at: float


def verify(body: dict[str, Any], action: Any, cluster_id: str) -> Signed:
    """Who signed `action` in `body` for the cluster `cluster_id`; UserError when the signature is missing,
    bad, for another cluster or out of its time window. Whether it was seen before is the caller's check."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        client_id, signature = str(body["client_id"]), str(body["signature"])
        signed_at, nonce, claimed = body["signed_at"], str(body["nonce"]), str(body["cluster_id"])
    except KeyError as exc:
        raise UserError(f"the request is not signed (no {exc.args[0]}): use the bacalhau client") from None
    if not isinstance(signed_at, int | float) or isinstance(signed_at, bool) or not math.isfinite(signed_at):
        raise UserError("the request's signed_at is not a time (unix seconds)")
    if claimed != cluster_id:
        raise UserError(f"the request was signed for another cluster ({claimed[:12]}), not this one "
                        f"({cluster_id[:12]})")
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(client_id))
        public.verify(bytes.fromhex(signature), _canonical(action, signed_at, cluster_id, nonce))
    except (ValueError, TypeError, InvalidSignature):
        raise UserError("the request's signature does not verify") from None
    age = time.time() - signed_at
    if abs(age) > MAX_AGE:
        raise UserError(f"the request was signed {age:.0f}s {'ago' if age > 0 else 'ahead'}, over the {MAX_AGE:g}s "
                        "allowed: check this machine's clock")
    return Signed(client_id, signature, float(signed_at))
