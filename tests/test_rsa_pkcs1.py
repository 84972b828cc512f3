"""The client's RSA signing without `cryptography` (rsa_pkcs1.py): byte for byte what `cryptography` signs, for
keys of several sizes in both PEM forms, verified by the server's own check; anything else left to
`cryptography`, with its refusals."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from bacalhau.errors import UserError
from bacalhau.rsa_identity import client_id_of as rsa_client_id
from bacalhau.rsa_identity import public_key_b64, verify_payload
from bacalhau.rsa_pkcs1 import RsaKey, parse_pem, sha256
from bacalhau.signing import client_id_of, load_client_key, sign, verify

PKCS1 = serialization.PrivateFormat.TraditionalOpenSSL
PKCS8 = serialization.PrivateFormat.PKCS8
CLUSTER = "c" * 32


def pem_of(key: object, form: serialization.PrivateFormat = PKCS1,
           encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, form,  # type: ignore[attr-defined, no-any-return]
                             encryption or serialization.NoEncryption())


@pytest.fixture(scope="module")
def keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(65537, bits) for bits in (1024, 2048, 2048, 2048, 3072)] + \
        [rsa.generate_private_key(3, 2048)]


def test_signatures_public_keys_and_ids_are_cryptographys_byte_for_byte(keys: list[rsa.RSAPrivateKey]) -> None:
    for key in keys:
        for form in (PKCS1, PKCS8):
            plain = parse_pem(pem_of(key, form))
            assert isinstance(plain, RsaKey), form
            for message in (b"", b"x", json.dumps({"submit": {"engine": "docker"}}).encode(), bytes(range(256)) * 40):
                ours = plain.sign(sha256(message))
                assert ours == key.sign(message, padding.PKCS1v15(), hashes.SHA256())
            assert plain.public_der() == key.public_key().public_bytes(serialization.Encoding.DER,
                                                                        serialization.PublicFormat.PKCS1)
            assert client_id_of(plain) == rsa_client_id(key.public_key()) == client_id_of(key)


def test_the_server_verifies_what_the_client_signs_without_cryptography(tmp_path: Path,
                                                                       keys: list[rsa.RSAPrivateKey]) -> None:
    for i, key in enumerate(keys[1:4]):
        state = tmp_path / str(i)
        state.mkdir()
        (state / "user_id.pem").write_bytes(pem_of(key, PKCS8 if i % 2 else PKCS1))
        loaded = load_client_key(state)
        assert isinstance(loaded, RsaKey)
        action = {"submit": {"engine": "noop", "noop": {"stdout": "é\n"}}}
        fields = sign(loaded, action, CLUSTER)
        assert fields["client_public_key"] == public_key_b64(key.public_key())
        message = json.dumps({"action": action, "cluster": CLUSTER, "nonce": fields["nonce"],
                              "signed_at": fields["signed_at"]}, sort_keys=True, separators=(",", ":")).encode()
        assert verify_payload(message, fields["signature"], fields["client_public_key"]) == fields["client_id"]
        assert verify(fields, action, CLUSTER).client_id == rsa_client_id(key.public_key())
        with pytest.raises(UserError, match="does not verify"):
            verify(fields, {"submit": {"engine": "noop"}}, CLUSTER)


def test_other_keys_and_damaged_files_are_left_to_cryptography_and_refused_as_before(
        tmp_path: Path, keys: list[rsa.RSAPrivateKey]) -> None:
    key = keys[1]
    good = pem_of(key)
    encrypted = pem_of(key, PKCS1, serialization.BestAvailableEncryption(b"pw"))
    encrypted8 = pem_of(key, PKCS8, serialization.BestAvailableEncryption(b"pw"))
    curve = pem_of(ec.generate_private_key(ec.SECP256R1()), PKCS8)
    edwards = pem_of(ed25519.Ed25519PrivateKey.generate(), PKCS8)
    lines = good.splitlines()
    for data, refusal in (
        (encrypted, "not an unencrypted RSA private key"),
        (encrypted8, "not an unencrypted RSA private key"),
        (curve, "not an RSA key"),
        (edwards, "not an RSA key"),
        (good[:400], "not an unencrypted RSA private key"),
        (b"\n".join(lines[:5] + lines[6:]), "not an unencrypted RSA private key"),
        (good.replace(b"RSA PRIVATE", b"DSA PRIVATE"), "not an unencrypted RSA private key"),
        (b"", "not an unencrypted RSA private key"),
        (b"\xff" * 3000, "not an unencrypted RSA private key"),
    ):
        assert parse_pem(data) is None
        (tmp_path / "user_id.pem").write_bytes(data)
        with pytest.raises(UserError, match=refusal):
            load_client_key(tmp_path)
    # PEM with Windows line ends and blank lines around: still the plain reader's
    assert isinstance(parse_pem(b"\r\n" + good.replace(b"\n", b"\r\n") + b"\n\n"), RsaKey)


def test_a_key_whose_numbers_disagree_is_refused_before_anything_is_signed(tmp_path: Path,
                                                                          keys: list[rsa.RSAPrivateKey]) -> None:
    numbers = keys[1].private_numbers()
    for field in ("d", "dmp1", "dmq1", "iqmp"):
        bent = {"p": numbers.p, "q": numbers.q, "d": numbers.d, "dmp1": numbers.dmp1, "dmq1": numbers.dmq1,
                "iqmp": numbers.iqmp}
        bent[field] = bent[field] ^ 2     # one bit off: still a well-formed key file
        damaged = rsa.RSAPrivateNumbers(public_numbers=numbers.public_numbers, **bent)
        pem = pem_of(damaged.private_key(unsafe_skip_rsa_key_validation=True))
        (tmp_path / "user_id.pem").write_bytes(pem)
        loaded = load_client_key(tmp_path)
        if field == "d":    # d is not used by the CRT: the signature is still right
            assert verify(sign(loaded, "x", CLUSTER), "x", CLUSTER)
            continue
        with pytest.raises(UserError, match=r"user_id\.pem is damaged"):
            sign(loaded, "x", CLUSTER)


def test_der_integers_and_lengths_are_encoded_as_der() -> None:
    key = RsaKey(n=(1 << 2047) + 1, e=65537, d=1, p=1, q=1, dp=1, dq=1, qinv=1)
    der = key.public_der()
    assert der[:4] == b"\x30\x82\x01\x0a" and der[4:8] == b"\x02\x82\x01\x01" and der[8] == 0
    assert der.endswith(b"\x02\x03\x01\x00\x01")
    assert base64.b64decode(base64.b64encode(der)) == der


def test_a_second_signature_goes_through_cryptography_with_the_same_bytes_and_checks(
        keys: list[rsa.RSAPrivateKey], tmp_path: Path) -> None:
    """A process that signs again is a long-lived client: from its second signature the same numbers sign
    through `cryptography` (constant time, ~24x less CPU), byte for byte what the first path made, and still
    checked against the public key: a damaged key is refused on every signature, not only the first."""
    digest = sha256(b"payload")
    for key in keys:
        (tmp_path / "user_id.pem").write_bytes(pem_of(key))
        loaded = load_client_key(tmp_path)
        assert isinstance(loaded, RsaKey)
        first, second, third = loaded.sign(digest), loaded.sign(digest), loaded.sign(digest)
        assert first == second == third == key.sign(b"payload", padding.PKCS1v15(), hashes.SHA256())
        assert isinstance(loaded._fast, rsa.RSAPrivateKey) and loaded.signed == 3
        assert verify(sign(loaded, "x", CLUSTER), "x", CLUSTER)
    numbers = keys[1].private_numbers()
    # d bent too: OpenSSL checks its CRT result and falls back to d, so a bent dmp1 alone still signs right there
    damaged = rsa.RSAPrivateNumbers(numbers.p, numbers.q, numbers.d ^ 2, numbers.dmp1 ^ 2, numbers.dmq1,
                                    numbers.iqmp, numbers.public_numbers)
    (tmp_path / "user_id.pem").write_bytes(pem_of(damaged.private_key(unsafe_skip_rsa_key_validation=True)))
    loaded = load_client_key(tmp_path)
    for _ in range(3):
        with pytest.raises(UserError, match=r"user_id\.pem is damaged"):
            sign(loaded, "x", CLUSTER)
    loaded.signed = 1      # as if one good signature had been made: the cryptography path refuses it too
    with pytest.raises(UserError, match=r"user_id\.pem is damaged"):
        sign(loaded, "x", CLUSTER)
    assert loaded._fast is not None
