"""Clients sign what they ask of a requester; the requester checks it.

A client's identity is Bacalhau's: the RSA-2048 key `user_id.pem` in its state dir (rsa_identity.py; the
official SDK's file, so a job our CLI submits and one the SDK submits from the same dir have the same owner).
Its client id is the SHA-256 of the key's modulus, in hex. A signed request carries `client_id`,
`client_public_key` (base64 PKCS#1 DER), `cluster_id`, `signed_at` (unix seconds), `nonce` and `signature`
(base64 RSASSA-PKCS1-v1_5 / SHA-256) over the canonical JSON of {"action", "cluster", "nonce", "signed_at"}.
The cluster id is what the requester's GET /api/v1/id says (a one-way hash of the cluster's swarm key), so a
signature made for one cluster is refused by every other. The requester rejects a bad signature, a key whose
id is not the client id claimed, one signed more than MAX_AGE seconds away from its clock, and one it has seen
before (api/replay.py, keyed by the signature's bytes, not their spelling); it lets only the client that
submitted a job cancel it.

The legacy scheme (before user_id.pem): an Ed25519 key in `client.key` (32 raw bytes in hex), its public key
in hex the client id, a hex signature, no `client_public_key`. The requester still accepts it, for every
action: jobs submitted with it stay their owner's, and nothing is gained by refusing it (any client may make a
key and submit; an Ed25519 id is a public key and an RSA id a SHA-256, so neither can be made to equal the
other without a private key or a preimage). The CLI signs with it only for a job that legacy id owns.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import time

from bacalhau.errors import UserError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from bacalhau.rsa_pkcs1 import RsaKey

MAX_AGE = 60.0   # seconds a signature is accepted either side of the requester's clock (clocks differ a little)
KEY_FILE = "user_id.pem"        # rsa_identity.KEY_FILE (not imported: a client command starts fast)
LEGACY_KEY_FILE = "client.key"  # the Ed25519 key of clients before user_id.pem
MAX_KEY_FILE = 64 * 1024        # bytes: a PEM RSA key of 8192 bits is ~6.4 KB


def cluster_id_of(secret: str) -> str:
    """The public name of a cluster: a one-way hash of its swarm key, which it does not reveal."""
    import hashlib

    return hashlib.sha256(b"bacalhau/cluster-id/1\n" + secret.encode()).hexdigest()[:32]


def _canonical(action: Any, signed_at: float, cluster_id: str, nonce: str) -> bytes:
    return json.dumps({"action": action, "cluster": cluster_id, "nonce": nonce, "signed_at": signed_at},
                      sort_keys=True, separators=(",", ":")).encode()


def load_client_key(state_dir: str | Path) -> Any:
    """The client's RSA key, `user_id.pem` in `state_dir`, created (PKCS#1, 0600) if absent: read by
    rsa_pkcs1.py when it is a plain RSA key (cryptography's import was ~20 ms of a signed command), by
    cryptography otherwise (or to say what is wrong with it). Our own file is not validated as a key from
    elsewhere would be (OpenSSL's check of an RSA key costs a command ~15 ms): each signature made with it is
    checked instead (rsa_pkcs1.py)."""
    path = os.path.join(state_dir, KEY_FILE)    # (no pathlib: its import was ~4 ms of a signed command)
    if not os.path.exists(path):
        from pathlib import Path

        from bacalhau.rsa_identity import load_or_create

        return load_or_create(Path(path))
    data = _read_key_file(path)
    from bacalhau.rsa_pkcs1 import parse_pem

    plain = parse_pem(data)
    if plain is not None:
        plain.origin = path
        return plain
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path} is not an unencrypted RSA private key in PEM ({exc}): move it away and a new "
                        "one is made") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UserError(f"{path} holds a {type(key).__name__}, not an RSA key")
    return key


def _read_key_file(path: str) -> bytes:
    """The key file's bytes: a regular file of at most MAX_KEY_FILE bytes (a FIFO there hung every signed
    command on its open, and a device such as /dev/zero was read until memory ran out)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UserError(f"cannot read the client key {path}: {exc.strerror or exc}") from None
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{path} is not a regular file: move it away and a new key is made")
        try:
            data = file.read(MAX_KEY_FILE + 1)
        except OSError as exc:
            raise UserError(f"cannot read the client key {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise UserError(f"{path} is over {MAX_KEY_FILE} bytes: not an RSA private key; move it away and a new one "
                        "is made")
    return data


def load_legacy_key(state_dir: Path) -> Any | None:
    """The Ed25519 key of the legacy layout (`client.key`), if `state_dir` has one."""
    path = state_dir / LEGACY_KEY_FILE
    return load_or_create_client_key(path) if path.exists() else None


def load_or_create_client_key(path: Path) -> Any:
    """A legacy Ed25519 key (the module docstring): the file holds the 32 raw private-key bytes in hex."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists():
        try:
            return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
        except ValueError:
            raise UserError(f"{path} is not a client key (32 bytes in hex)") from None
    key = Ed25519PrivateKey.generate()
    from bacalhau.secret_file import write_secret

    write_secret(path, key.private_bytes_raw().hex() + "\n")
    return key


def _is_legacy(key: Any) -> bool:
    return hasattr(key, "private_bytes_raw")   # Ed25519 keys have raw bytes; RSA keys have none


def client_id_of(key: Any) -> str:
    if _is_legacy(key):
        return str(key.public_key().public_bytes_raw().hex())
    if hasattr(key, "modulus_bytes"):   # rsa_pkcs1.RsaKey
        from bacalhau.rsa_pkcs1 import sha256

        return sha256(key.modulus_bytes()).hex()
    from bacalhau.rsa_identity import client_id_of as rsa_client_id

    return rsa_client_id(key.public_key())


def sign(key: Any, action: Any, cluster_id: str) -> dict[str, Any]:
    """The fields that sign `action` for `cluster_id` with `key` (RSA, or a legacy Ed25519 key)."""
    signed_at, nonce = round(time.time(), 3), os.urandom(8).hex()   # secrets.token_hex(8), without its import
    message = _canonical(action, signed_at, cluster_id, nonce)
    fields = {"client_id": client_id_of(key), "cluster_id": cluster_id, "signed_at": signed_at, "nonce": nonce}
    if _is_legacy(key):
        return {**fields, "signature": key.sign(message).hex()}
    if hasattr(key, "modulus_bytes"):
        return {**fields, **_sign_plain(key, message)}
    from bacalhau.rsa_identity import public_key_b64, sign_payload

    return {**fields, "client_public_key": public_key_b64(key.public_key()), "signature": sign_payload(key, message)}


def _sign_plain(key: RsaKey, message: bytes) -> dict[str, str]:
    from bacalhau.rsa_pkcs1 import KeyMismatch, sha256

    try:
        signature = key.sign(sha256(message))
    except KeyMismatch as exc:
        raise UserError(f"{key.origin or 'the client key'} is damaged ({exc}): move it away and a new one is "
                        "made") from None
    return {"client_public_key": base64.b64encode(key.public_der()).decode(),
            "signature": base64.b64encode(signature).decode()}


class Signed:
    """Who signed a request, as verify() found it (a plain class: dataclasses' import was ~8 ms of every
    signed client command, which imports this module)."""

    __slots__ = ("client_id", "signature", "signed_at")

    def __init__(self, client_id: str, signature: str, signed_at: float) -> None:
        self.client_id, self.signature, self.signed_at = client_id, signature, signed_at


def verify(body: dict[str, Any], action: Any, cluster_id: str) -> Signed:
    """Who signed `action` in `body` for the cluster `cluster_id`; UserError when the signature is missing,
    bad, for another cluster or out of its time window. Whether it was seen before is the caller's check, on
    `Signed.signature`: the signature's bytes in one spelling (base64 and hex can spell the same bytes in
    several ways, and a replay must not pass as new by changing the spelling)."""
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
    message = _canonical(action, signed_at, cluster_id, nonce)
    public_key = body.get("client_public_key")
    if public_key is None:
        canonical = _verify_legacy(client_id, signature, message)
    else:
        canonical = _verify_rsa(client_id, str(public_key), signature, message)
    age = time.time() - signed_at
    if abs(age) > MAX_AGE:
        raise UserError(f"the request was signed {age:.0f}s {'ago' if age > 0 else 'ahead'}, over the {MAX_AGE:g}s "
                        "allowed: check this machine's clock")
    return Signed(client_id, canonical, float(signed_at))


def _verify_legacy(client_id: str, signature: str, message: bytes) -> str:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        raw = bytes.fromhex(signature)
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(client_id)).verify(raw, message)
    except (ValueError, TypeError, InvalidSignature):
        raise UserError("the request's signature does not verify") from None
    return raw.hex()   # what clients before the canonical form sent: replays across an upgrade are caught too


def _verify_rsa(client_id: str, public_key: str, signature: str, message: bytes) -> str:
    from bacalhau.rsa_identity import SignatureError, verify_payload

    try:
        signer = verify_payload(message, signature, public_key)
    except SignatureError:
        raise UserError("the request's signature does not verify") from None
    if signer != client_id:
        raise UserError("the request's client_id is not the id of the key that signed it")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):   # verify_payload decoded it already
        raise UserError("the request's signature does not verify") from None
    return "rsa:" + raw.hex()
