"""A persistent blockstore with pins, under a node's repo dir. Synchronous (file I/O): async callers go
through `trio.to_thread`.

    packs/00000001.pack   blocks appended one record after another: [data length u32][multihash length u8]
                          [multihash][data]; a pack past PACK_BYTES is sealed and the next one begun
    pins                  recursively pinned roots, one CID a line: a new pin is appended and fsynced (the
                          file is created, and rewritten when a pin goes or it needs repair, atomically:
                          written and fsynced as pins.tmp, renamed, the directory fsynced)

Packs, not a file per block: creating a file cost this kind of machine 0.2-0.9 ms of kernel time (ext4 scans
past recently deleted inodes), as much as writing the block itself, and a fetch creates thousands. The index
(multihash -> pack, offset, length) lives in memory and is rebuilt from the record headers at open. Every
write is followed by fdatasync; at open the records of the last pack, the only one ever appended to, are
checked against their multihash and the pack is cut before the first that is short or does not match, so a
crash mid-write never leaves a block whose bytes miss its CID. Reads are checked too (`verify`). `gc()` removes
blocks no pin reaches by copying a pack's live records into the current pack and deleting it; with
`older_than` only packs last written before then are looked at (the retention period: recent unpinned blocks,
such as a job's inputs being fetched, stay), and `roots` are kept as pins are. The pins are read once, at open, and kept in memory: reading and rewriting
the whole file for each pin cost 1.1 ms of CPU and 5 ms under the pin lock at 5,000 pins (each published
result is one), so the publishes of a busy node queued behind it.
A repo of the earlier layout (blocks/<2 chars>/<base32 multihash>, a file per block) is moved into packs at
open.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import struct
import threading
from pathlib import Path

from bacalhau.errors import BacalhauError, NotFoundError, StateError
from bacalhau.ipfs.dagpb import decode_links

log = logging.getLogger(__name__)
PACK_BYTES = 64 * 1024 * 1024
RECORD = struct.Struct(">IB")      # data length, multihash length
SHA2_256 = b"\x12\x20"


class CorruptBlockError(BacalhauError):
    pass


def multihash_of(cid: bytes) -> bytes:
    if cid[0] == 0x12:
        return cid                      # CIDv0 is the bare multihash
    i = 1
    while cid[i] & 0x80:                # skip the codec varint
        i += 1
    return cid[i + 1:]


def codec_of(cid: bytes) -> int:
    if cid[0] == 0x12:
        return 0x70
    value, shift, i = 0, 0, 1
    while True:
        b = cid[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value
        shift += 7


def _whole_multihash(mh: bytes) -> bool:
    """The multihash holds exactly the digest length it declares."""
    i = value = 0
    for _ in range(2):                  # the hash code, then the digest length
        value, shift = 0, 0
        while True:
            b = mh[i]
            value |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
    return len(mh) - i == value


class Blockstore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._packs = root / "packs"
        self._pins = root / "pins"
        self._packs.mkdir(parents=True, exist_ok=True)
        self._pin_lock = threading.Lock()   # publishes run in worker threads, several at once
        self._pinned: list[bytes] = []      # the pins file's CIDs, in its order (read at open)
        self._pinned_set: set[bytes] = set()
        self._lock = threading.Lock()       # the index and the current pack
        self._index: dict[bytes, tuple[int, int, int]] = {}   # multihash -> pack number, data offset, length
        self._current = 0                   # the pack appended to (0: none yet)
        self._fd = -1
        self._size = 0
        self._closed = False
        self._open()

    # -- packs ----------------------------------------------------------------------------------------------

    def _pack(self, number: int) -> Path:
        return self._packs / f"{number:08d}.pack"

    def _open(self) -> None:
        # appends keep their own offsets: a second process appending to the same pack would break the index
        self._lock_fd = os.open(self._packs / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StateError(f"the blockstore in {self.root} is in use by another node (is a `bacalhau serve` "
                             "with this repo running already?)") from None
        numbers = sorted(int(p.stem) for p in self._packs.glob("*.pack") if p.stem.isdigit())
        for number in numbers:
            self._scan(number, verify=number == numbers[-1])
        if numbers:
            self._current = numbers[-1]
            self._fd = os.open(self._pack(self._current), os.O_WRONLY | os.O_APPEND)
            self._size = os.fstat(self._fd).st_size
        legacy = self.root / "blocks"
        if legacy.is_dir():
            self._import_legacy(legacy)
        self._check_pins()

    def _check_pins(self) -> None:
        """A pins file with lines that are not CIDs (a damaged disk, a hand edit) would fail every later pin,
        publish and gc: it is copied to pins.quarantine and rewritten with the lines that are."""
        try:
            text = self._pins.read_text(errors="replace")
        except FileNotFoundError:
            return
        good: list[bytes] = []
        bad: list[str] = []
        for line in text.split():
            try:
                cid = bytes.fromhex(line)
                if not cid or (cid[0] != 0x12 and len(cid) < 4):
                    raise ValueError(line)
                codec_of(cid)
                if not _whole_multihash(multihash_of(cid)):
                    raise ValueError(line)      # e.g. a line a crash cut short mid-append
                good.append(cid)
            except (ValueError, IndexError):
                bad.append(line)
        if bad:
            (self.root / "pins.quarantine").write_text(text)
            log.warning("%d lines of %s are not CIDs: kept in pins.quarantine, the %d good pins kept", len(bad),
                        self._pins, len(good))
        good = list(dict.fromkeys(good))
        if bad or (text and not text.endswith("\n")):
            self._write_pins(good)      # (a last line without its newline: the next append would join it)
        self._pinned, self._pinned_set = good, set(good)

    def _scan(self, number: int, *, verify: bool) -> None:
        """Index a pack's records; cut it before the first record that is short (or, verifying, corrupt)."""
        path = self._pack(number)
        size = path.stat().st_size
        pos = 0
        with open(path, "rb") as f:
            while pos + RECORD.size <= size:
                length, mh_len = RECORD.unpack(f.read(RECORD.size))
                mh = f.read(mh_len)
                data_at = pos + RECORD.size + mh_len
                if len(mh) < mh_len or data_at + length > size:
                    break
                if verify:
                    if not _matches(mh, f.read(length)):
                        break
                else:
                    f.seek(length, os.SEEK_CUR)
                self._index[mh] = (number, data_at, length)
                pos = data_at + length
        if pos < size:
            os.truncate(path, pos)

    def _import_legacy(self, legacy: Path) -> None:
        for shard in legacy.iterdir():
            files = list(shard.iterdir())
            blocks = []
            for f in files:
                try:
                    mh = base64.b32decode(f.name + "=" * (-len(f.name) % 8))
                except ValueError:
                    continue            # a temp file a crash left
                data = f.read_bytes()
                if _matches(mh, data):
                    blocks.append((mh, data))
            self._append(blocks)
            for f in files:
                f.unlink()
            shard.rmdir()
        legacy.rmdir()

    def _append(self, records: list[tuple[bytes, bytes]], *, moving: bool = False) -> None:
        """Append blocks not held yet (by multihash) to the current pack, durably. moving: blocks held in a
        pack gc rewrites, whose index entries now point here."""
        with self._lock:
            records = [(mh, data) for mh, data in dict(records).items() if moving or mh not in self._index]
            if not records:
                return
            if self._fd < 0 or self._size >= PACK_BYTES:
                self._begin_pack()
            parts, at = [], self._size
            for mh, data in records:
                parts += [RECORD.pack(len(data), len(mh)), mh, data]
                self._index[mh] = (self._current, at + RECORD.size + len(mh), len(data))
                at += RECORD.size + len(mh) + len(data)
            buf = memoryview(b"".join(parts))
            try:
                while buf:
                    buf = buf[os.write(self._fd, buf):]
            except BaseException:
                for mh, _ in records:
                    self._index.pop(mh, None)
                os.truncate(self._pack(self._current), self._size)
                raise
            self._size = at
            os.fdatasync(self._fd)

    def _begin_pack(self) -> None:
        if self._closed:
            raise StateError("the blockstore is closed")
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
        self._current += 1
        self._fd = os.open(self._pack(self._current), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        self._size = 0

    def close(self) -> None:
        """Waits for an append in progress; a later one raises StateError (reads go on). Another node may
        open the repo now."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            os.close(self._lock_fd)     # and with it the lock

    # -- blocks ---------------------------------------------------------------------------------------------

    def has(self, cid: bytes) -> bool:
        return multihash_of(cid) in self._index

    def put(self, cid: bytes, block: bytes, *, hashed: bool = False) -> None:
        """hashed: the caller computed `cid` from these very bytes (a bitswap block), so no second check."""
        self.put_many([(cid, block)], hashed=hashed)

    def put_many(self, blocks: list[tuple[bytes, bytes]], *, hashed: bool = False) -> None:
        records = []
        for cid, block in blocks:
            mh = multihash_of(cid)
            if mh in self._index:
                continue
            if not hashed and not _matches(mh, block):
                raise CorruptBlockError("block does not match its CID")
            records.append((mh, block))
        if records:
            self._append(records)

    def get(self, cid: bytes, *, verify: bool = True) -> bytes:
        """verify=False where the reader checks anyway: a block served to a peer is hashed by the peer (as
        Kubo serves, HashOnRead off)."""
        found = self.get_many([cid], verify=verify)
        if cid not in found:
            raise NotFoundError("block not in this store")
        return found[cid]

    def get_many(self, cids: list[bytes], *, verify: bool = True) -> dict[bytes, bytes]:
        """The blocks of these that the store holds."""
        found: dict[bytes, bytes] = {}
        fds: dict[int, int] = {}
        try:
            for cid in cids:
                mh = multihash_of(cid)
                for _ in range(2):      # a gc may have moved the block to another pack meanwhile
                    where = self._index.get(mh)
                    if where is None:
                        break
                    number, offset, length = where
                    try:
                        if number not in fds:
                            fds[number] = os.open(self._pack(number), os.O_RDONLY)
                    except FileNotFoundError:
                        continue
                    block = os.pread(fds[number], length, offset)
                    if len(block) != length or verify and not _matches(mh, block):
                        raise CorruptBlockError(
                            f"block {base64.b32encode(mh).decode()} is corrupt on disk")
                    found[cid] = block
                    break
        finally:
            for fd in fds.values():
                os.close(fd)
        return found

    def locate(self, cid: bytes) -> tuple[Path, int, int]:
        """The pack file, offset and length of a block's bytes (for tests that damage them)."""
        number, offset, length = self._index[multihash_of(cid)]
        return self._pack(number), offset, length

    # -- pins -----------------------------------------------------------------------------------------------

    def pins(self) -> list[bytes]:
        return list(self._pinned)

    def _write_pins(self, pins: list[bytes]) -> None:
        """Durably: a pin acknowledged (a published result) survives a power cut, and the file is never seen
        half written."""
        tmp = self._pins.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write("".join(p.hex() + "\n" for p in pins))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._pins)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def pin(self, cid: bytes) -> None:
        self.pin_many([cid])

    def pin_many(self, cids: list[bytes]) -> None:
        """Pin them all, durably, with one fsync."""
        with self._pin_lock:
            new = [cid for cid in dict.fromkeys(cids) if cid not in self._pinned_set]
            if not new:
                return
            if not self._pins.exists():
                self._write_pins([*self._pinned, *new])
            else:
                self._append_pins(new)
            self._pinned.extend(new)
            self._pinned_set.update(new)

    def _append_pins(self, cids: list[bytes]) -> None:
        """Durably, and never leaving half a line: a failed write is cut off again."""
        fd = os.open(self._pins, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            buf = memoryview("".join(cid.hex() + "\n" for cid in cids).encode())
            try:
                while buf:
                    buf = buf[os.write(fd, buf):]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def unpin(self, cid: bytes) -> None:
        with self._pin_lock:
            kept = [p for p in self._pinned if p != cid]
            self._write_pins(kept)
            self._pinned, self._pinned_set = kept, set(kept)

    def gc(self, *, older_than: float | None = None, roots: list[bytes] | tuple[bytes, ...] = ()) -> int:
        """Remove every block no pin (and none of `roots`) reaches, in packs last written before `older_than`
        (a unix time; None: in every pack); return how many went. A pack holding any such block is rewritten:
        its live records are appended to the current pack, then it is deleted."""
        keep: set[bytes] = set()
        with self._pin_lock:
            stack = [*self.pins(), *roots]
        while stack:
            cid = stack.pop()
            mh = multihash_of(cid)
            if mh in keep or mh not in self._index:
                continue
            keep.add(mh)
            if codec_of(cid) == 0x70:
                stack.extend(link.cid for link in decode_links(self.get(cid)))
        with self._lock:
            packs: dict[int, list[bytes]] = {}
            for mh, (number, _, _) in self._index.items():
                packs.setdefault(number, []).append(mh)
            doomed = {number: mhs for number, mhs in packs.items() if not keep.issuperset(mhs)
                      and (older_than is None or self._last_written(number) < older_than)}
            if self._current in doomed:
                self._begin_pack()       # nothing is appended to a pack being rewritten
            empty = [p for p in self._packs.glob("*.pack")
                     if p.stem.isdigit() and int(p.stem) not in packs and int(p.stem) != self._current]
        if older_than is not None:
            empty = [p for p in empty if p.stat().st_mtime < older_than]
        removed = 0
        for number, mhs in sorted(doomed.items()):
            self._append(list(self.get_many([mh for mh in mhs if mh in keep]).items()), moving=True)
            with self._lock:
                for mh in mhs:
                    if mh not in keep:
                        del self._index[mh]
                        removed += 1
            self._pack(number).unlink()
        for path in empty:
            path.unlink(missing_ok=True)
        return removed

    def _last_written(self, number: int) -> float:
        try:
            return self._pack(number).stat().st_mtime
        except FileNotFoundError:
            return 0.0

def _matches(mh: bytes, data: bytes) -> bool:
    return mh[:2] == SHA2_256 and hashlib.sha256(data).digest() == mh[2:]
