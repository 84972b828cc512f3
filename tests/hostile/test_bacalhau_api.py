"""Attacks on the Bacalhau 1.0 API (api/bacalhau_v1): forged and malformed signed envelopes, keys Go would
refuse, hostile job specs. Each test is the attack; it fails on a naive version (noted per test)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from bacalhau.api.bacalhau_v1.envelope import BadRequest, parse_signed
from bacalhau.rsa_identity import client_id_of, load_or_create, public_key_b64, sign_payload, verify_payload

_KEYS: dict[str, Any] = {}


def key(name: str = "a") -> Any:
    # RSA-2048 generation costs ~0.1 s: one key per name for the whole module
    if name not in _KEYS:
        from cryptography.hazmat.primitives.asymmetric import rsa

        _KEYS[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS[name]


def payload_text(client_id: str, **extra: Any) -> str:
    return json.dumps({"APIVersion": "V1beta1", "ClientID": client_id, **extra})


def envelope(text: str, k: Any = None, *, payload_key: str = "payload", public_key: str | None = None,
             signature: str | None = None) -> bytes:
    """A body as the SDK builds it: the signed payload text embedded verbatim."""
    k = k or key()
    sig = signature if signature is not None else sign_payload(k, text.encode())
    pk = public_key if public_key is not None else public_key_b64(k.public_key())
    return ('{"client_public_key": %s, "%s": %s, "signature": %s}' % (
        json.dumps(pk), payload_key, text, json.dumps(sig))).encode()


def test_the_key_file_is_pkcs1_and_private_from_the_start_and_pkcs8_loads(tmp_path: Path) -> None:
    path = tmp_path / "user_id.pem"
    k = load_or_create(path)
    assert path.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert k.key_size == 2048 and k.public_key().public_numbers().e == 65537
    assert client_id_of(load_or_create(path).public_key()) == client_id_of(k.public_key())
    from cryptography.hazmat.primitives import serialization

    pkcs8 = tmp_path / "pkcs8.pem"
    pkcs8.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    assert client_id_of(load_or_create(pkcs8).public_key()) == client_id_of(k.public_key())
    assert public_key_b64(k.public_key()).startswith("MIIBCgKCAQEA")
    assert len(client_id_of(k.public_key())) == 64


def test_a_valid_envelope_verifies_over_the_bytes_as_sent() -> None:
    # odd spacing and key order: a server that re-serialised the payload before verifying would fail here
    text = '{ "ClientID" :"%s",  "APIVersion":"V1beta1" , "Spec": {"b": 1,"a":[ 1 ,2]}}' % client_id_of(
        key().public_key())
    signed = parse_signed(envelope(text))
    assert signed.client_id == client_id_of(key().public_key())
    assert signed.raw_payload == text.encode()
    assert signed.payload["Spec"] == {"b": 1, "a": [1, 2]}


def test_envelope_keys_match_case_insensitively_and_the_old_payload_key_is_taken() -> None:
    cid = client_id_of(key().public_key())
    assert parse_signed(envelope(payload_text(cid), payload_key="Payload")).client_id == cid
    assert parse_signed(envelope(payload_text(cid), payload_key="job_create_payload")).client_id == cid


def test_a_tampered_payload_is_refused() -> None:
    cid = client_id_of(key().public_key())
    text = payload_text(cid, Spec={"Engine": "Docker"})
    body = envelope(text).replace(b'"Docker"', b'"Wasm"')
    with pytest.raises(BadRequest, match="client's signature is invalid"):
        parse_signed(body)


def test_a_payload_signed_by_one_key_for_anothers_client_id_is_refused() -> None:
    # the signature is good, but the ClientID claimed is the victim's: the job would be theirs to cancel
    victim = client_id_of(key("victim").public_key())
    with pytest.raises(BadRequest, match="client's public key does not match client ID"):
        parse_signed(envelope(payload_text(victim), key("attacker")))


def test_an_spki_public_key_is_refused_as_go_refuses_it() -> None:
    # cryptography's DER loader takes SPKI as readily as PKCS#1; Go's ParsePKCS1PublicKey does not
    from cryptography.hazmat.primitives import serialization

    spki = base64.b64encode(key().public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    with pytest.raises(BadRequest, match="ParsePKIXPublicKey"):
        parse_signed(envelope(payload_text(client_id_of(key().public_key())), public_key=spki))


def test_a_public_key_with_trailing_bytes_is_refused() -> None:
    der = base64.b64decode(public_key_b64(key().public_key())) + b"\x00"
    with pytest.raises(BadRequest, match="x509"):
        parse_signed(envelope(payload_text(client_id_of(key().public_key())),
                              public_key=base64.b64encode(der).decode()))


def test_a_huge_rsa_key_is_refused_before_any_costly_verify() -> None:
    # a 16384-bit modulus verifies ~60 times slower than 2048: refused by size (n built by hand, not generated)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    n = (1 << 16383) | 1 | (int.from_bytes(os.urandom(64), "big") << 8)
    pub = rsa.RSAPublicNumbers(65537, n).public_key()
    pk = base64.b64encode(pub.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.PKCS1)).decode()
    with pytest.raises(BadRequest):
        parse_signed(envelope(payload_text(client_id_of(pub)), public_key=pk, signature="AAAA"))


@pytest.mark.parametrize("signature", ["", "not base64!", "QUJD\n", "-_-_"])
def test_malformed_signatures_are_refused(signature: str) -> None:
    with pytest.raises(BadRequest):
        parse_signed(envelope(payload_text(client_id_of(key().public_key())), signature=signature))


def test_a_missing_or_null_payload_is_refused_with_gos_message() -> None:
    pk = json.dumps(public_key_b64(key().public_key()))
    for body in ('{"client_public_key": %s, "signature": "AAAA"}' % pk,
                 '{"client_public_key": %s, "payload": null, "signature": "AAAA"}' % pk):
        with pytest.raises(BadRequest, match="no payload contained in signed message"):
            parse_signed(body.encode())


def test_two_payloads_in_one_envelope_are_refused() -> None:
    # a signed payload and a second, unsigned one: a reader taking the other one than the verifier would run
    # a job nobody signed
    cid = client_id_of(key().public_key())
    good = envelope(payload_text(cid))
    forged = good[:-1] + b', "PAYLOAD": %s}' % payload_text(cid, Spec={"x": 1}).encode()
    with pytest.raises(BadRequest, match="twice"):
        parse_signed(forged)


def test_duplicate_keys_inside_a_signed_payload_are_refused() -> None:
    cid = client_id_of(key().public_key())
    text = '{"ClientID": "%s", "Spec": {"Engine": "Docker", "Engine": "Wasm"}}' % cid
    with pytest.raises(BadRequest, match="duplicate key"):
        parse_signed(envelope(text))


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    cid = client_id_of(key().public_key())
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(BadRequest, match="nested too deeply"):
        parse_signed(envelope(payload_text(cid)[:-1] + ', "Spec": %s}' % deep))


def test_nan_in_a_payload_is_refused() -> None:
    cid = client_id_of(key().public_key())
    with pytest.raises(BadRequest, match="NaN"):
        parse_signed(envelope('{"ClientID": "%s", "Spec": {"Timeout": NaN}}' % cid))


@pytest.mark.parametrize("body", [b"", b"[]", b"\xff\xfe{}", b'{"payload": {}} trailing', b'{"payload" {}}'])
def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_signed(body)


def test_verify_payload_returns_the_signers_client_id() -> None:
    raw = b'{"ClientID": "x"}'
    assert verify_payload(raw, sign_payload(key(), raw), public_key_b64(key().public_key())) == \
        client_id_of(key().public_key())
