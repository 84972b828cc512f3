"""The cluster's private-network key: 32 random bytes, kept in `swarm.key` in the layout Kubo uses
(`/key/swarm/psk/1.0.0/`, `/base16/`, hex). py-libp2p's PSK is not wire-compatible with Kubo's, so the
IPFS side must not depend on it."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from bacalhau.errors import UserError
from bacalhau.secret_file import write_secret

HEADER = "/key/swarm/psk/1.0.0/\n/base16/\n"
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def parse_swarm_key(text: str) -> str:
    """The key's 64 hex characters, from a key file's text or the bare hex."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    candidate = lines[-1] if lines else ""
    if lines[:-1] and lines[:-1] != ["/key/swarm/psk/1.0.0/", "/base16/"]:
        raise UserError("not a swarm key: expected /key/swarm/psk/1.0.0/, /base16/ and 64 hex characters")
    if not _HEX.match(candidate):
        raise UserError("not a swarm key: it must be 64 hex characters (32 bytes)")
    return candidate.lower()


def load_or_create_swarm_key(path: Path, given: str | None = None) -> str:
    """The key given (and then kept in `path`), or the one in `path`, or a new one written there."""
    if given:
        key = parse_swarm_key(Path(given).read_text() if os.path.isfile(given) else given)
    elif path.exists():
        return parse_swarm_key(path.read_text())
    else:
        key = secrets.token_hex(32)
    write_secret(path, HEADER + key + "\n")
    return key
