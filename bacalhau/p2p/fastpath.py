"""Faster bulk transfer through py-libp2p 0.8.1's TCP, noise and yamux layers, without changing a byte on the
wire. Applied once, by `bacalhau.p2p.host`, to py-libp2p's classes (every host of the process):

- TCP reads go through a read-ahead buffer: noise asks for its 2-byte length prefix and then the message, and
  each of those was a socket receive (about four per 64 KiB message, and a scheduler pass each).
- A noise write of a message longer than one noise frame encrypts every frame first and sends them with one
  socket write, not one write (and one lock) per frame.
- yamux data frames are cut to fit one noise frame: 64 KiB of payload plus the 12-byte header did not, and
  every frame became a full noise frame and a 17-byte one.
- yamux's writer, finding the peer's receive window full, sleeps 10 ms at a time until a window update has
  come in. Against Kubo (256 KiB windows) that wait came several times per MiB and held bitswap replies to
  ~60 MB/s: it polls at 0.5 ms there (its one other 10 ms sleep, after an error, is left alone).
- yamux's reader gives credit back as go-yamux does: one window update once half the window has been read,
  not one after every read (py-libp2p 0.8.1 sends one whenever any credit is owed, below its own hysteresis
  threshold too). A bprotocol call on the mux is one small frame each way, and each read of one sent an
  update: a third of the frames a job cost, and about a fifth of a requester's event-loop CPU under load
  (py-spy). A sender never waits on a reader that keeps reading: it stops only with half the window unread.

Each relies on py-libp2p internals that 0.8.1 has: on another version nothing is applied (a warning says so),
which costs speed, never correctness. `BACALHAU_P2P_FASTPATH=0` turns them off, for A/B benchmarks.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from importlib.metadata import version

import trio

log = logging.getLogger(__name__)

PATCHED_VERSION = "0.8.1"
READ_AHEAD = 256 * 1024
YAMUX_WINDOW_POLL = 0.0005
NOISE_LENGTH_BYTES = 2


def _buffer_tcp_reads() -> None:
    from libp2p.io.trio import TrioTCPStream

    receive = TrioTCPStream.read

    async def read(self: TrioTCPStream, n: int | None = None) -> bytes:
        buf: bytes = getattr(self, "_bacalhau_buf", b"")
        if buf:
            pos: int = self._bacalhau_pos  # type: ignore[attr-defined]
            end = len(buf) if n is None else min(pos + n, len(buf))
            if end == len(buf):
                self._bacalhau_buf = b""  # type: ignore[attr-defined]
            else:
                self._bacalhau_pos = end  # type: ignore[attr-defined]
            return buf[pos:end]
        if n is None or n == 0:
            return await receive(self, n)
        data = await receive(self, max(n, READ_AHEAD))
        if getattr(self, "_bacalhau_buf", b""):   # another reader buffered older bytes while this one waited
            data = self._bacalhau_buf[self._bacalhau_pos:] + data  # type: ignore[attr-defined]
            self._bacalhau_buf = b""  # type: ignore[attr-defined]
        if len(data) <= n:
            return data
        self._bacalhau_buf, self._bacalhau_pos = data, n  # type: ignore[attr-defined]
        return data[:n]

    TrioTCPStream.read = read  # type: ignore[method-assign]


def _coalesce_noise_writes() -> None:
    from libp2p.security.noise import io as noise_io

    max_plaintext = noise_io.MAX_PLAINTEXT_LENGTH
    one_frame = noise_io.BaseNoiseMsgReadWriter.write_msg

    async def write_msg(self: noise_io.BaseNoiseMsgReadWriter, msg: bytes, prefix_encoded: bool = False) -> None:
        if len(msg) <= max_plaintext or prefix_encoded:
            await one_frame(self, msg, prefix_encoded)
            return
        parts = []
        view = memoryview(msg)
        for start in range(0, len(msg), max_plaintext):
            encrypted = self.encrypt(bytes(view[start:start + max_plaintext]))
            parts.append(len(encrypted).to_bytes(NOISE_LENGTH_BYTES, "big"))
            parts.append(encrypted)
        await self.read_writer.read_write_closer.write(b"".join(parts))

    noise_io.BaseNoiseMsgReadWriter.write_msg = write_msg  # type: ignore[method-assign]


def _fit_yamux_frames_in_noise_frames() -> None:
    from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
    from libp2p.stream_muxer.yamux import yamux as yamux_module

    yamux_module.MAX_MESSAGE_SIZE = MAX_PLAINTEXT_LENGTH  # a whole frame, header included, in one noise frame


def _poll_yamux_send_windows_sooner() -> None:
    from libp2p.stream_muxer.yamux import yamux as yamux_module

    async def sleep(seconds: float) -> None:
        if seconds == 0.01 and sys._getframe(1).f_code.co_name == "write":
            seconds = YAMUX_WINDOW_POLL
        await trio.sleep(seconds)

    shim = types.ModuleType("trio")
    shim.__dict__.update(trio.__dict__)
    shim.sleep = sleep  # type: ignore[attr-defined]
    yamux_module.trio = shim  # type: ignore[attr-defined]


def _release_yamux_credit_in_halves() -> None:
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    async def credit(self: YamuxStream, *, bytes_read: int = 0) -> None:
        async with self.window_lock:
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            owed = self.target_recv_window - (self.recv_window + buffered)
            if owed <= 0 or owed < self._grow_threshold():
                return
            increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
        await self.send_window_update(increment, skip_lock=True)

    YamuxStream._auto_tune_and_send_window_update = credit  # type: ignore[method-assign]


_applied: bool | None = None


def apply() -> bool:
    """Install the fast paths (once); False where they were left out."""
    global _applied
    if _applied is None:
        installed = version("libp2p")
        _applied = os.environ.get("BACALHAU_P2P_FASTPATH", "1") != "0"
        if _applied and installed != PATCHED_VERSION:
            log.warning("py-libp2p %s is not %s: its transfer fast paths are off", installed, PATCHED_VERSION)
            _applied = False
        if _applied:
            _buffer_tcp_reads()
            _coalesce_noise_writes()
            _fit_yamux_frames_in_noise_frames()
            _poll_yamux_send_windows_sooner()
            _release_yamux_credit_in_halves()
    return _applied
