"""Each patch of a dependency's internals is applied only on the exact version it was written against, that
version is the one pyproject.toml pins, and the internals it replaces are still there. A dependency bump that
leaves a patch behind fails here, instead of turning the patch off with a warning nobody reads.

    libp2p     bacalhau/p2p/fastpath.py     transfer fast paths (TCP read-ahead, noise, yamux)
    libp2p     bacalhau/p2p/tcp.py          TCP_USER_TIMEOUT on its TCP streams' sockets
    hypercorn  bacalhau/api/server.py       close under the send lock, a deadline on every write, an answer's
                                            head sent with its body, one idle watcher per connection
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {name.strip().lower(): pin.strip() for name, _, pin in (d.partition("==") for d in deps) if pin}


def test_each_patched_package_is_pinned_to_the_version_its_patch_is_for() -> None:
    from bacalhau.api.server import HYPERCORN_VERSION
    from bacalhau.p2p import tcp
    from bacalhau.p2p.fastpath import PATCHED_VERSION

    pins = _pins()
    assert pins.get("libp2p") == PATCHED_VERSION == tcp.PATCHED_VERSION == version("libp2p")
    assert pins.get("hypercorn") == HYPERCORN_VERSION == version("hypercorn")


def test_the_libp2p_fast_paths_apply_to_the_installed_version(monkeypatch: pytest.MonkeyPatch) -> None:
    from libp2p.io.trio import TrioTCPStream
    from libp2p.security.noise import io as noise_io
    from libp2p.stream_muxer.yamux import yamux as yamux_module

    from bacalhau.p2p import fastpath

    monkeypatch.delenv("BACALHAU_P2P_FASTPATH", raising=False)
    assert fastpath.apply()
    for patched in (TrioTCPStream.read, noise_io.BaseNoiseMsgReadWriter.write_msg, yamux_module.trio.sleep):
        assert patched.__module__ == fastpath.__name__, patched
    assert yamux_module.MAX_MESSAGE_SIZE == noise_io.MAX_PLAINTEXT_LENGTH
    stream = yamux_module.YamuxStream
    assert stream._auto_tune_and_send_window_update.__module__ == fastpath.__name__
    # what the credit patch calls of py-libp2p's own, and where yamux's reads call it
    for name in ("_grow_threshold", "_grow_to_delta", "_apply_autotune_epoch", "send_window_update"):
        assert callable(getattr(stream, name)), name
    assert inspect.getsource(stream.read).count("self._auto_tune_and_send_window_update(bytes_read=") == 2
    # the yamux shim shortens only the 10 ms sleep of a function named `write`: it must still be there
    tree = ast.parse(inspect.getsource(yamux_module))
    sleepers = {fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                for call in ast.walk(fn) if isinstance(call, ast.Call)
                and ast.unparse(call) == "trio.sleep(0.01)"}
    assert "write" in sleepers, sleepers


def test_the_libp2p_tcp_timeout_applies_to_the_installed_version(monkeypatch: pytest.MonkeyPatch) -> None:
    from libp2p.io.trio import TrioTCPStream

    from bacalhau.p2p import tcp

    monkeypatch.delenv("BACALHAU_P2P_UNACKED_ABORT", raising=False)
    assert tcp.apply()
    assert TrioTCPStream.__init__.__module__ == tcp.__name__


def test_the_hypercorn_patch_targets_are_still_there() -> None:
    from hypercorn.trio.tcp_server import TCPServer

    assert inspect.iscoroutinefunction(TCPServer.protocol_send)
    assert inspect.iscoroutinefunction(getattr(TCPServer, "_close", None))
    assert "self.send_lock = trio.Lock()" in inspect.getsource(TCPServer.__init__)
    import hypercorn.protocol.h11 as h11_protocol
    import hypercorn.trio.tcp_server as tcp_server

    # read from the files: the classes may be patched already in this process
    h11_source, tcp_source = inspect.getsource(h11_protocol), inspect.getsource(tcp_server)
    # the head held back is sent by the next _send_h11_event: every h11 event must be sent through it
    assert "    async def _send_h11_event(self, event: H11SendableEvent) -> None:" in h11_source
    assert h11_source.count("self.connection.send(") == 1
    assert h11_source.count("await self.send(RawData(data=data))") == 1
    # the idle watcher is started once, by run(), and moved by the Updated events protocol_send gets
    assert "await self.idle_task.restart(self._task_group, self._idle_timeout)" in tcp_source
    assert tcp_source.count("idle_task") == 4
    assert "    async def _read_data(self) -> None:" in tcp_source
    assert "    async def _initiate_server_close(self) -> None:" in tcp_source


# In a child process: patches of classes stay for the life of a process, and this one's are applied.
OTHER_VERSION = """
import importlib.metadata, logging, sys
real = importlib.metadata.version
importlib.metadata.version = lambda name: "0.0.1" if name in ("libp2p", "hypercorn") else real(name)
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer
from libp2p.io.trio import TrioTCPStream
from bacalhau.api.server import _guard_hypercorn
from bacalhau.p2p import fastpath, tcp
def patchable():
    return (TCPServer._close, TCPServer.protocol_send, TCPServer._idle_timeout, TCPServer._read_data,
            H11Protocol._send_h11_event, TrioTCPStream.read, TrioTCPStream.__init__)
before = patchable()
_guard_hypercorn()
print("applied" if fastpath.apply() or tcp.apply() else "not applied")
print("untouched" if before == patchable() else "patched")
"""


def test_no_patch_is_applied_to_another_version_and_a_warning_says_so() -> None:
    out = subprocess.run([sys.executable, "-c", OTHER_VERSION], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["not", "applied", "untouched"], out.stdout + out.stderr
    assert "hypercorn 0.0.1 is not 0.18.0" in out.stderr
    assert "py-libp2p 0.0.1 is not 0.8.1" in out.stderr
    assert "py-libp2p 0.0.1 (not 0.8.1)" in out.stderr
