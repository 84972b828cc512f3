"""A client's RSA identity as Bacalhau 1.0 has it (Go `pkg/system/config.go`, `pkg/publicapi/signatures.go`).

    user_id.pem        RSA-2048, e=65537, PKCS#1 PEM ("BEGIN RSA PRIVATE KEY"), mode 0600 from the start;
                       PKCS#8 PEM is loaded too (the Python SDK loads both)
    client id          lower-case hex SHA-256 of the modulus as unsigned big-endian bytes, no leading zero
    client_public_key  standard base64 of the PKCS#1 RSAPublicKey DER (an SPKI key is refused, as Go's
                       x509.ParsePKCS1PublicKey refuses it)
    signature          RSASSA-PKCS1-v1_5 / SHA-256 over the exact bytes signed, standard base64

cryptography is imported inside the functions: the CLI imports this module and most commands never sign.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

from bacalhau.errors import UserError

KEY_FILE = "user_id.pem"
KEY_BITS = 2048
MIN_VERIFY_BITS = 1024     # Go refuses shorter keys (crypto/rsa since 1.24)
MAX_VERIFY_BITS = 4096     # a peer's key is ours to verify with: a 16k-bit one costs 60x the CPU of 2048
MAX_SIGNATURE_B64 = 2048   # base64 of a 4096-bit signature is 684 characters


class SignatureError(UserError):
    """A signed request that does not verify; the message is Go's text (clients may match on it)."""


def load_or_create(path: Path) -> Any:
    """The RSA private key in `path` (PKCS#1 or PKCS#8 PEM, unencrypted), created PKCS#1 0600 if absent."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise UserError(f"{path} is not an unencrypted RSA private key in PEM ({exc})") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UserError(f"{path} holds a {type(key).__name__}, not an RSA key")
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    from bacalhau.secret_file import write_secret

    write_secret(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption()))
    return key


def client_id_of(public_key: Any) -> str:
    """Go's `sha256hex(key.N.Bytes())`."""
    n: int = public_key.public_numbers().n
    return hashlib.sha256(n.to_bytes((n.bit_length() + 7) // 8, "big")).hexdigest()


def public_key_b64(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return base64.b64encode(der).decode()


def sign_payload(key: Any, raw: bytes) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return base64.b64encode(key.sign(raw, padding.PKCS1v15(), hashes.SHA256())).decode()


def _b64(text: str) -> bytes:
    """Go's base64.StdEncoding: padded, standard alphabet, nothing else (no whitespace, no url-safe)."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SignatureError("illegal base64 data") from None


def parse_public_key(public_key_text: str) -> Any:
    """A PKCS#1 RSAPublicKey in standard base64 (exactly: SPKI, trailing bytes and non-DER refused)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if len(public_key_text) > MAX_SIGNATURE_B64:
        raise SignatureError("x509: public key too large")
    der = _b64(public_key_text)
    # PKCS#1 is SEQUENCE { INTEGER n, INTEGER e }; SPKI is SEQUENCE { SEQUENCE { OID ... }, BIT STRING }.
    # cryptography's DER loader takes both, Go's ParsePKCS1PublicKey only the first.
    if len(der) < 4 or der[0] != 0x30:
        raise SignatureError("x509: malformed public key")
    header = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)
    if header >= len(der) or der[header] != 0x02:
        raise SignatureError("x509: failed to parse public key (use ParsePKIXPublicKey instead for this key format)")
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError):
        raise SignatureError("x509: malformed public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("x509: not an RSA public key")
    if key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1) != der:
        raise SignatureError("x509: trailing data after ASN.1 of public-key")
    if not MIN_VERIFY_BITS <= key.key_size <= MAX_VERIFY_BITS:
        raise SignatureError(f"crypto/rsa: {key.key_size}-bit keys are not accepted "
                             f"({MIN_VERIFY_BITS} to {MAX_VERIFY_BITS} bits)")
    return key


def verify_payload(raw: bytes, signature_b64: str, public_key_text: str) -> str:
    """The client id of `public_key_text` if `signature_b64` signs `raw` with it; SignatureError otherwise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    if len(signature_b64) > MAX_SIGNATURE_B64:
        raise SignatureError("client's signature is invalid: crypto/rsa: verification error")
    signature = _b64(signature_b64)
    key = parse_public_key(public_key_text)
    try:
        key.verify(signature, raw, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureError("client's signature is invalid: crypto/rsa: verification error") from None
    return client_id_of(key)
