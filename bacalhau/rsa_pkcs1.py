"""The client's RSA key read from its PEM file and RSASSA-PKCS1-v1_5 / SHA-256 signing, in the standard
library alone: `cryptography`'s import (its Rust bindings, serialization and the RSA module) was ~20 ms of CPU
of every signed client command (`bacalhau docker run`), and the signature itself is one modular
exponentiation (two half-size ones, with the CRT).

Only the forms rsa_identity.py writes and the SDK loads are read here: PKCS#1 ("RSA PRIVATE KEY") and PKCS#8
("PRIVATE KEY", rsaEncryption), unencrypted, two primes, in DER. parse_pem answers None for anything else
(encrypted, another algorithm, a damaged file), and the caller leaves that file to `cryptography`, whose
refusal the user sees as before.

Every signature is checked against the public key before it leaves (s^e mod n, cheap with e = 65537): a key
whose numbers do not agree (a damaged file that still parses) is refused with KeyMismatch instead of sending
signatures that fail at the server, and a fault in the CRT step can never hand out a signature that reveals
a prime factor (Boneh, DeMillo and Lipton's attack).

Python's integers do not compute in constant time: the time taken may depend on the private key. That does not
matter for one signature: the key signs in the CLI's own process on the user's machine, and nobody else can
time it finely (the requester sees one request after a process start and a round trip). A process that signs a
second time is a long-lived client (a script's ApiClient, a benchmark's threads): from then on the same numbers
sign through `cryptography` (constant time, 0.24 ms a signature against 5.8 ms here; its import is paid once),
each signature still checked as above. A benchmark's 32 submitting threads spent ~0.9 of a core signing in
Python, which made the client, not the node, what limited the rate.
"""

from __future__ import annotations

import base64
import binascii

TYPE_CHECKING = False
if TYPE_CHECKING:    # typing's import is ~3 ms of a one-shot CLI's start
    from typing import Any

# DER of DigestInfo { AlgorithmIdentifier { id-sha256, NULL }, OCTET STRING (32 bytes) } up to the digest
# (RFC 8017 9.2, note 1)
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
RSA_ENCRYPTION_OID = bytes.fromhex("2a864886f70d010101")    # 1.2.840.113549.1.1.1
MIN_BITS, MAX_BITS = 1024, 8192
_PEM = {b"RSA PRIVATE KEY": "pkcs1", b"PRIVATE KEY": "pkcs8"}


class KeyMismatch(ValueError):
    """The key's numbers do not make a valid signature: the file is damaged."""


class RsaKey:
    """An RSA private key (two primes), as its integers."""

    __slots__ = ("n", "e", "d", "p", "q", "dp", "dq", "qinv", "size", "origin", "signed", "_fast")

    def __init__(self, n: int, e: int, d: int, p: int, q: int, dp: int, dq: int, qinv: int) -> None:
        self.n, self.e, self.d, self.p, self.q, self.dp, self.dq, self.qinv = n, e, d, p, q, dp, dq, qinv
        self.size = (n.bit_length() + 7) // 8
        self.origin = ""    # the file it was read from, for messages
        self.signed = 0     # signatures made: from the second on, through `cryptography` (see the module's doc)
        self._fast: Any = None

    def modulus_bytes(self) -> bytes:
        """The modulus as unsigned big-endian bytes, no leading zero (what the client id hashes)."""
        return self.n.to_bytes(self.size, "big")

    def public_der(self) -> bytes:
        """The PKCS#1 RSAPublicKey DER: SEQUENCE { INTEGER n, INTEGER e }."""
        return _tlv(0x30, _der_int(self.n) + _der_int(self.e))

    def sign(self, digest: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 of a SHA-256 `digest` (RFC 8017 8.2.1); KeyMismatch if the numbers are wrong."""
        info = SHA256_DIGEST_INFO + digest
        padding = self.size - len(info) - 3
        if len(digest) != 32 or padding < 8:
            raise KeyMismatch("the key is too short for a SHA-256 signature")
        m = int.from_bytes(b"\x00\x01" + b"\xff" * padding + b"\x00" + info, "big")
        if self.signed and self._fast is None:
            self._fast = self._cryptography_key()
        if self._fast:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import padding as pad
            from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

            s = int.from_bytes(self._fast.sign(digest, pad.PKCS1v15(), Prehashed(hashes.SHA256())), "big")
        else:
            m1, m2 = pow(m, self.dp, self.p), pow(m, self.dq, self.q)
            s = m2 + (self.qinv * (m1 - m2) % self.p) * self.q
        if not 0 < s < self.n or pow(s, self.e, self.n) != m:
            raise KeyMismatch("the key's numbers do not agree")
        self.signed += 1
        return s.to_bytes(self.size, "big")

    def _cryptography_key(self) -> Any:
        """The same numbers as a `cryptography` key (not validated: every signature is checked instead); False
        when it will not take them (its signatures would not check either), and the numbers sign here."""
        from cryptography.hazmat.primitives.asymmetric import rsa

        try:
            numbers = rsa.RSAPrivateNumbers(self.p, self.q, self.d, self.dp, self.dq, self.qinv,
                                            rsa.RSAPublicNumbers(self.e, self.n))
            return numbers.private_key(unsafe_skip_rsa_key_validation=True)
        except (ValueError, TypeError):
            return False


def parse_pem(data: bytes) -> RsaKey | None:
    """The key in `data`, a PEM file holding one unencrypted two-prime RSA key; None for anything else."""
    lines = data.strip().split(b"\n")
    if len(lines) < 3:
        return None
    begin, end = lines[0].strip(), lines[-1].strip()
    label = begin[len(b"-----BEGIN "):-len(b"-----")]
    form = _PEM.get(label)
    if form is None or begin != b"-----BEGIN " + label + b"-----" or end != b"-----END " + label + b"-----":
        return None
    body = b"".join(line.strip() for line in lines[1:-1])
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None     # an encrypted PEM's headers ("Proc-Type: ...") land here too
    try:
        key = _pkcs1(der) if form == "pkcs1" else _pkcs8(der)
    except _BadDer:
        return None
    return key if key is not None and _plausible(key) else None


class _BadDer(Exception):
    pass


def _pkcs8(der: bytes) -> RsaKey | None:
    """PrivateKeyInfo { INTEGER 0, AlgorithmIdentifier { rsaEncryption, NULL }, OCTET STRING RSAPrivateKey }."""
    items = _sequence(der)
    if len(items) != 3 or items[0] != (0x02, b"\x00") or items[1][0] != 0x30 or items[2][0] != 0x04:
        return None
    algorithm = _sequence(_tlv(0x30, items[1][1]))
    if algorithm != [(0x06, RSA_ENCRYPTION_OID), (0x05, b"")]:
        return None
    return _pkcs1(items[2][1])


def _pkcs1(der: bytes) -> RsaKey | None:
    """RSAPrivateKey { INTEGER 0 (two primes), n, e, d, p, q, dp, dq, qinv }."""
    items = _sequence(der)
    if len(items) != 9 or any(tag != 0x02 for tag, _ in items) or items[0][1] != b"\x00":
        return None
    numbers = [_uint(value) for _, value in items[1:]]
    return RsaKey(*numbers)


def _plausible(key: RsaKey) -> bool:
    """Numbers a key could have (whether they agree is proved by each signature, against n and e)."""
    return (MIN_BITS <= key.n.bit_length() <= MAX_BITS and key.p * key.q == key.n and 3 <= key.e < key.n
            and key.e % 2 == 1 and 0 < key.dp < key.p and 0 < key.dq < key.q and 0 < key.qinv < key.p)


def _sequence(der: bytes) -> list[tuple[int, bytes]]:
    """The (tag, contents) of each element of the DER SEQUENCE that is all of `der`."""
    tag, contents, rest = _read(der)
    if tag != 0x30 or rest:
        raise _BadDer
    items = []
    while contents:
        tag, value, contents = _read(contents)
        items.append((tag, value))
    return items


def _read(der: bytes) -> tuple[int, bytes, bytes]:
    """One DER element at the start of `der`: tag, contents, what follows. Lengths in their shortest form."""
    if len(der) < 2:
        raise _BadDer
    tag, first = der[0], der[1]
    if tag & 0x1F == 0x1F:
        raise _BadDer    # a high tag number: none in an RSA key
    if first < 0x80:
        length, start = first, 2
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or len(der) < 2 + count:
            raise _BadDer
        length, start = int.from_bytes(der[2:2 + count], "big"), 2 + count
        if length < 0x80 or length >> (8 * (count - 1)) == 0:
            raise _BadDer    # not the shortest form
    if len(der) < start + length:
        raise _BadDer
    return tag, der[start:start + length], der[start + length:]


def _uint(value: bytes) -> int:
    """A DER INTEGER's contents that must be positive and minimally encoded."""
    if not value or value[0] & 0x80 or (len(value) > 1 and value[0] == 0 and not value[1] & 0x80):
        raise _BadDer
    return int.from_bytes(value, "big")


def _der_int(n: int) -> bytes:
    return _tlv(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))   # a leading zero byte when the top bit is set


def _tlv(tag: int, contents: bytes) -> bytes:
    n = len(contents)
    if n < 0x80:
        return bytes((tag, n)) + contents
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + contents


def sha256(data: bytes) -> bytes:
    """SHA-256 without hashlib's import where CPython has it built in (hashlib's OpenSSL binding was ~3 ms of a
    client command's start)."""
    try:
        from _sha256 import sha256 as builtin  # type: ignore[import-not-found]   # CPython 3.11 (_sha2 from 3.12)
    except ImportError:
        import hashlib

        return hashlib.sha256(data).digest()
    return builtin(data).digest()  # type: ignore[no-any-return]
