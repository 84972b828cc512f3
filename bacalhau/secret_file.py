"""Secrets on disk (client key, swarm key, libp2p identities, API token) and the repo that holds them:
created private from the start, never written world-readable and chmodded after."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def write_secret(path: Path, data: str | bytes) -> None:
    """Write `path` through a new file created 0600 (whatever the umask), renamed into place."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def private_dir(path: Path) -> None:
    """Create `path` 0700, or take group and other bits off an existing one (logged)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(mode & 0o700)
        log.info("repo %s was readable by others (mode %o): now %o", path, mode, mode & 0o700)
