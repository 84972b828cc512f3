"""js-ipfs 0.66 as an external IPFS node with the Kubo RPC API, for the `--ipfs-connect` tests: no Kubo
binary can be had here, and the kubo-python wheel's library serves no RPC API. `scripts/setup.sh` installs it
into `.tools/js-ipfs` (see `scripts/js-ipfs/package.json` for why its dependencies are pinned).

    with JsIpfs.start(tmp_path) as node:
        node.api_maddr        # /ip4/127.0.0.1/tcp/PORT, what --ipfs-connect takes
        node.rpc("cat", arg=cid).content
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bacalhau.testing import free_port

TOOLS = Path(os.environ.get("BACALHAU_JS_IPFS_DIR") or Path(__file__).resolve().parents[2] / ".tools" / "js-ipfs")
READY = "Daemon is ready"


class JsIpfsUnavailable(RuntimeError):
    pass


class JsIpfs:
    def __init__(self, proc: subprocess.Popen[bytes], api_port: int, workdir: Path) -> None:
        self._proc = proc
        self.api_maddr = f"/ip4/127.0.0.1/tcp/{api_port}"
        self.url = f"http://127.0.0.1:{api_port}"
        self.workdir = workdir

    @classmethod
    def start(cls, workdir: Path, *, timeout: float = 60.0) -> JsIpfs:
        cli = TOOLS / "node_modules" / "ipfs" / "src" / "cli.js"
        if not cli.exists():
            raise JsIpfsUnavailable(f"js-ipfs is not installed in {TOOLS}: run scripts/setup.sh")
        repo = workdir / "repo"
        env = {**os.environ, "IPFS_PATH": str(repo)}
        node = ["node", "--require", str(TOOLS / "polyfill.cjs"), str(cli)]
        subprocess.run([*node, "init", "--empty-repo"], env=env, check=True, capture_output=True, timeout=timeout)
        config_path = repo / "config"
        config = json.loads(config_path.read_text())
        api_port = free_port()
        # loopback only, nothing dialled out: no bootstrap, delegates, mDNS, DHT or preload nodes
        config["Addresses"].update(Swarm=[f"/ip4/127.0.0.1/tcp/{free_port()}"], API=f"/ip4/127.0.0.1/tcp/{api_port}",
                                   Gateway=f"/ip4/127.0.0.1/tcp/{free_port()}",
                                   RPC=f"/ip4/127.0.0.1/tcp/{free_port()}", Delegates=[])
        config["Bootstrap"] = []
        config["Discovery"] = {"MDNS": {"Enabled": False}, "webRTCStar": {"Enabled": False}}
        config["Routing"] = {"Type": "none"}
        config_path.write_text(json.dumps(config, indent=1))
        log_path = workdir / "js-ipfs.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([*node, "daemon", "--enable-preload=false"], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while READY not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise JsIpfsUnavailable(f"js-ipfs did not start: see {log_path}")
            time.sleep(0.1)
        return cls(proc, api_port, workdir)

    def rpc(self, command: str, *, files: Any = None, **params: Any) -> httpx.Response:
        resp = httpx.post(f"{self.url}/api/v0/{command}", params=params, files=files, timeout=60)
        resp.raise_for_status()
        return resp

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> JsIpfs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
