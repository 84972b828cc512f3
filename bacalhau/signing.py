"""Clients sign what they ask of a requester; the requester checks it.

A client's key pair (Ed25519) is created once under its state dir. Its public key, in hex, is its client id.
A signed request carries `client_id`, `signed_at` (unix seconds) and `signature` over the canonical JSON of
{"action": ..., "signed_at": ...}; the requester rejects a bad signature or a stale one, and lets only the
client that submitted a job cancel it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bacalhau.errors import UserError

MAX_SKEW = 300.0   # seconds a signature stays valid (clocks of client and requester may differ a little)


def _canonical(action: Any, signed_at: float) -> bytes:
    return json.dumps({"action": action, "signed_at": signed_at}, sort_keys=True, separators=(",", ":")).encode()


def load_or_create_client_key(path: Path) -> Any:
    """The key file holds the 32 raw private-key bytes in hex (cryptography's PEM loader alone costs a client
    command 20 ms of imports)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(key.private_bytes_raw().hex() + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


def client_id_of(key: Any) -> str:
    return str(key.public_key().public_bytes_raw().hex())


def sign(key: Any, action: Any) -> dict[str, Any]:
    signed_at = round(time.time(), 3)
    return {"client_id": client_id_of(key), "signed_at": signed_at,
            "signature": key.sign(_canonical(action, signed_at)).hex()}


def verify(body: dict[str, Any], action: Any) -> str:
    """The client id that signed `action` in `body`; UserError when the signature is missing, bad or stale."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        client_id, signed_at, signature = str(body["client_id"]), float(body["signed_at"]), str(body["signature"])
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(client_id))
        public.verify(bytes.fromhex(signature), _canonical(action, signed_at))
    except KeyError as exc:
        raise UserError(f"the request is not signed (no {exc.args[0]}): use the bacalhau client") from None
    except (ValueError, TypeError, InvalidSignature):
        raise UserError("the request's signature does not verify") from None
    if abs(time.time() - signed_at) > MAX_SKEW:
        raise UserError(f"the request was signed {time.time() - signed_at:.0f}s ago: check this machine's clock")
    return client_id
