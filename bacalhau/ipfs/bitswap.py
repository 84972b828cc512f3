"""Bitswap 1.2 over one or more libp2p hosts (the cluster's private host and the public IPFS host): serve the
blocks we hold, fetch DAGs from whichever connected peers have them. Kubo speaks it with us both ways.

Wire: uvarint-length-prefixed protobuf messages on `/ipfs/bitswap/1.2.0`. As Kubo does, a node sends its
messages on a long-lived stream of its own to each peer (a reply never rides on the requester's stream, which
Kubo never reads) and reads any number of messages on each stream a peer opens to it.

A fetch walks the DAG with a window of wants in flight: the root is asked of every connected peer, the rest of
the peers that delivered (split among them), and a block every asked peer says it lacks is asked of the others,
then of nodes `discover` connects to, before the fetch gives up. Every block is checked against its CID
before it is stored, and links are read from the block as it arrives.

Serving, as the keyless IPFS side is open to any peer that reaches it: a peer has at most PEER_STREAMS streams
to us, each reset after `idle_timeout` without a message (on a public host); at most PEER_QUEUE of its want messages wait (more
are dropped) and PEER_ANSWERS are answered at once, of ANSWERS for all peers; a reply a peer does not read
within `write_timeout` resets the stream and fails that peer's queued replies for as long. Peers on a public
host (the keyless one) get only blocks of pinned DAGs (content added here, published job results); the
cluster's peers get every block held.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVarTuple

import trio

from bacalhau.errors import BacalhauError, NotFoundError, TransportError, first_leaf
from bacalhau.ipfs.blockstore import Blockstore, codec_of, multihash_of
from bacalhau.ipfs.dagpb import _fields, _varint, decode_links
from bacalhau.ipfs.unixfs import _bytes_field, _uint_field, cid_str, make_cid
from bacalhau.ipfs.unixfs import _varint as _enc_varint

log = logging.getLogger(__name__)
Ts = TypeVarTuple("Ts")
PROTOCOL = "/ipfs/bitswap/1.2.0"
PROTOCOLS = (PROTOCOL, "/ipfs/bitswap/1.1.0")   # 1.1.0 has the same messages, minus HAVE/DONT_HAVE
MAX_MESSAGE = 4 * 1024 * 1024 + 4096            # libp2p bitswap's limit: a 4 MiB block and its framing
REPLY_BLOCKS = 8                                # blocks a reply message carries at most (2 MiB of 256 KiB)
WINDOW = 128                                    # blocks a fetch keeps in flight
WANT_BATCH = 32                                 # wants per message
SMALL_MESSAGE = 4096                            # decoded on the event loop; bigger ones in a worker thread
ANSWERS = 16                                    # want messages answered at once (each holds <= 2 messages)
STORE_AHEAD = 8                                 # received messages being stored at once
INLINE_HAVE = 1024                              # as Kubo: a want-have of a block this small gets the block
PEER_ANSWERS = 4                                # want messages of one peer answered at once
PEER_QUEUE = 64                                 # want messages of one peer waiting or answered; more: dropped
PEER_STREAMS = 4                                # streams one peer has open to us at once; more: reset
DEFAULT_WRITE_TIMEOUT = 20.0                    # a reply message the peer has not read by then: its stream reset
DEFAULT_IDLE_TIMEOUT = 120.0                    # a peer's stream without a message for this long: reset
WANT_BLOCK, WANT_HAVE = 0, 1
HAVE, DONT_HAVE = 0, 1


@dataclass
class Want:
    cid: bytes
    cancel: bool = False
    have_only: bool = False         # want-have: "do you have it?", not "send it"
    send_dont_have: bool = False


@dataclass
class Message:
    wants: list[Want] = field(default_factory=list)
    blocks: list[tuple[bytes, bytes]] = field(default_factory=list)
    haves: list[bytes] = field(default_factory=list)
    dont_haves: list[bytes] = field(default_factory=list)


def _cid_prefix(cid: bytes) -> bytes:
    """version, codec, multihash type and length, as the Block.prefix field carries them."""
    if cid[0] == 0x12:
        return b"\x00\x70\x12\x20"
    return b"\x01" + _enc_varint(codec_of(cid)) + b"\x12\x20"


def encode_message(*, wants: Iterable[bytes] = (), blocks: Iterable[tuple[bytes, bytes]] = (),
                   haves: Iterable[bytes] = (), dont_haves: Iterable[bytes] = ()) -> bytes:
    """Wants are want-block with send-dont-have set (what a fetch asks)."""
    out = []
    entries = b"".join(_bytes_field(1, _bytes_field(1, c) + _uint_field(2, 1) + _uint_field(4, WANT_BLOCK)
                                    + _uint_field(5, 1)) for c in wants)
    if entries:
        out.append(_bytes_field(1, entries))
    for cid, data in blocks:
        out.append(_bytes_field(3, _bytes_field(1, _cid_prefix(cid)) + _bytes_field(2, data)))
    for cid in haves:
        out.append(_bytes_field(4, _bytes_field(1, cid) + _uint_field(2, HAVE)))
    for cid in dont_haves:
        out.append(_bytes_field(4, _bytes_field(1, cid) + _uint_field(2, DONT_HAVE)))
    return b"".join(out)


def _want(entry: bytes) -> Want:
    want = Want(b"")
    for n, v in _fields(entry):
        if n == 1 and isinstance(v, bytes):
            want.cid = v
        elif n == 3 and isinstance(v, int):
            want.cancel = bool(v)
        elif n == 4 and isinstance(v, int):
            want.have_only = v == WANT_HAVE
        elif n == 5 and isinstance(v, int):
            want.send_dont_have = bool(v)
    return want


def decode_message(buf: bytes) -> Message:
    msg = Message()
    for num, value in _fields(buf):
        if not isinstance(value, bytes):
            continue
        if num == 1:
            msg.wants += [_want(e) for n, e in _fields(value) if n == 1 and isinstance(e, bytes)]
        elif num == 2:                                  # bitswap 1.0 blocks: CIDv0 only
            msg.blocks.append((make_cid(value, 0x70, 0), value))
        elif num == 3:
            parts = dict(_fields(value))
            prefix, data = parts.get(1, b""), parts.get(2, b"")
            if isinstance(prefix, bytes) and isinstance(data, bytes):
                version, i = _varint(prefix, 0)
                codec, _ = _varint(prefix, i)
                msg.blocks.append((make_cid(data, codec, version), data))
        elif num == 4:
            parts = dict(_fields(value))
            cid = parts.get(1, b"")
            if isinstance(cid, bytes):
                (msg.dont_haves if parts.get(2, HAVE) == DONT_HAVE else msg.haves).append(cid)
    return msg


def _well_formed(cid: bytes) -> bool:
    """A CIDv0 or CIDv1 with a sha2-256 multihash (all this store holds): a peer's want names one, or is
    dropped before any lookup."""
    if len(cid) == 34:
        return cid[:2] == b"\x12\x20"
    if not 36 <= len(cid) <= 39 or cid[0] != 0x01:
        return False
    i = 1
    while i < len(cid) - 34 and cid[i] & 0x80:      # the codec varint
        i += 1
    return i == len(cid) - 35 and cid[i + 1:i + 3] == b"\x12\x20"


def _frame(message: bytes) -> bytes:
    return _enc_varint(len(message)) + message


class _Outbox:
    """Our long-lived stream to one peer, opened on first use and again after it breaks. A message the peer
    does not take within `write_timeout` resets the stream, and sends fail at once for as long again (what
    waited behind it goes, instead of each waiting out its own timeout)."""

    def __init__(self, host: Any, peer: str, write_timeout: float) -> None:
        self._host, self._peer = host, peer
        self._stream: Any = None
        self._lock = trio.Lock()
        self._write_timeout = write_timeout
        self._stalled_until = -math.inf

    @property
    def stalled(self) -> bool:
        return trio.current_time() < self._stalled_until

    async def send(self, message: bytes) -> None:
        async with self._lock:
            if trio.current_time() < self._stalled_until:
                raise TransportError(f"peer {self._peer} does not read what it is sent")
            for attempt in (1, 2):
                if self._stream is None:
                    self._stream = await self._host.open_stream(self._peer, PROTOCOL)
                try:
                    with trio.move_on_after(self._write_timeout) as timer:
                        await self._stream.write(_frame(message))
                        return
                except TransportError:
                    await self._stream.reset()
                    self._stream = None
                    if attempt == 2:
                        raise
                    continue
                assert timer.cancelled_caught
                await self._stream.reset()
                self._stream = None
                self._stalled_until = trio.current_time() + self._write_timeout
                raise TransportError(f"peer {self._peer} did not read a message in {self._write_timeout:g}s")


class _Peer:
    """What one peer holds of the serving side."""

    def __init__(self) -> None:
        self.answering = trio.Semaphore(PEER_ANSWERS)
        self.queued = 0          # want messages waiting or being answered
        self.streams = 0         # its streams open to us


class _Session:
    """One fetch: what its wants became, delivered to the fetching task."""

    def __init__(self) -> None:
        self.send, self.events = trio.open_memory_channel[tuple[str, bytes, bytes, str]](math.inf)


class Bitswap:
    def __init__(self, hosts: Any, store: Blockstore,
                 discover: Callable[[], Awaitable[list[str]]] | None = None, *, public: Sequence[Any] = (),
                 write_timeout: float = DEFAULT_WRITE_TIMEOUT, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        self._hosts: list[Any] = list(hosts) if isinstance(hosts, list | tuple) else [hosts]
        self._public = list(public)     # hosts any peer reaches (no swarm key): pinned content only
        self._write_timeout = write_timeout
        self._idle_timeout = idle_timeout
        self._peers: dict[str, _Peer] = {}
        self._pinned_roots: tuple[bytes, ...] = ()
        self._pinned: set[bytes] = set()       # multihashes of every block under a pin, as of _pinned_roots
        self._pinned_lock = threading.Lock()
        self._store = store
        self._discover = discover     # connects to more of the cluster when the connected peers lack a block
        self._wanted: dict[bytes, list[_Session]] = {}
        self._outboxes: dict[str, _Outbox] = {}
        self._storing = trio.Semaphore(STORE_AHEAD)
        self._answering = trio.Semaphore(ANSWERS)    # a peer's flood of wants never holds more blocks than this
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[Bitswap] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for host in self._hosts:
                for protocol in PROTOCOLS:
                    host.set_stream_handler(protocol, partial(self._on_stream, host in self._public))
            task_status.started(self)
            await trio.sleep_forever()

    # -- peers ----------------------------------------------------------------------------------------------

    def connected(self) -> dict[str, Any]:
        """Every connected peer of every host, with the host it is connected through."""
        return {peer: host for host in self._hosts for peer in host.connected_peers()}

    async def _send(self, peer: str, message: bytes) -> None:
        outbox = self._outboxes.get(peer)
        if outbox is None:
            host = self.connected().get(peer)
            if host is None:
                raise TransportError(f"peer {peer} is not connected")
            outbox = self._outboxes[peer] = _Outbox(host, peer, self._write_timeout)
        try:
            await outbox.send(message)
        except BacalhauError:
            if not outbox.stalled:      # a stalled one is kept: it fails what is sent to it for a while
                self._outboxes.pop(peer, None)
            raise

    # -- serving --------------------------------------------------------------------------------------------

    def _peer(self, peer: str) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer()
        return state

    def _forget_if_idle(self, peer: str) -> None:
        state = self._peers.get(peer)
        if state is not None and not state.queued and not state.streams:
            del self._peers[peer]

    async def _on_stream(self, public: bool, peer: str, stream: Any) -> None:
        state = self._peer(peer)
        if state.streams >= PEER_STREAMS:
            log.info("%s opened more than %d bitswap streams: reset", peer, PEER_STREAMS)
            await stream.reset()
            return
        state.streams += 1
        try:
            await self._read_stream(public, peer, stream)
        finally:
            state.streams -= 1
            self._forget_if_idle(peer)

    async def _read_stream(self, public: bool, peer: str, stream: Any) -> None:
        while True:
            # a stream may idle between messages; a public host's, not forever (a cluster peer's may: a reset
            # racing its next message would lose that message)
            stream.set_read_timeout(self._idle_timeout if public else None)
            head = b""
            while not head or head[-1] & 0x80:
                try:
                    byte = await stream.read(1)
                except TransportError:
                    if head:
                        raise
                    log.debug("bitswap stream of %s idle for %gs: reset", peer, self._idle_timeout)
                    await stream.reset()    # a reset, not a close: the peer's next write fails, and it reopens
                    return
                if not byte:
                    return
                head += byte
                if len(head) > 5:
                    raise TransportError(f"bad bitswap message length from {peer}")
            stream.set_read_timeout()
            length, _ = _varint(head, 0)
            if length > MAX_MESSAGE:
                raise TransportError(f"bitswap message of {length} bytes from {peer}")
            buf = await stream.read_exactly(length)
            msg = decode_message(buf) if length <= SMALL_MESSAGE else None
            if msg is not None and not msg.blocks:
                self._dispatch(peer, msg, public)
            else:
                # a message with blocks is hashed (its CIDs are computed from the bytes) and stored by a
                # worker thread, several at once (each block is fsynced): reading goes on meanwhile
                await self._storing.acquire()
                self._spawn(self._store_and_dispatch, peer, msg or buf, public)

    async def _store_and_dispatch(self, peer: str, msg: Message | bytes, public: bool) -> None:
        try:
            msg = await trio.to_thread.run_sync(self._decode_and_store, msg)
        except (ValueError, IndexError) as exc:   # a malformed message fails alone, off the stream's task
            log.info("dropped a malformed bitswap message of %s: %r", peer, exc)
            return
        finally:
            self._storing.release()
        self._dispatch(peer, msg, public)

    def _decode_and_store(self, msg: Message | bytes) -> Message:
        """In a worker thread. Blocks nobody asked for are dropped."""
        if isinstance(msg, bytes):
            msg = decode_message(msg)
        msg.blocks = [(cid, data) for cid, data in msg.blocks if cid in self._wanted]
        self._store.put_many(msg.blocks, hashed=True)
        return msg

    def _dispatch(self, peer: str, msg: Message, public: bool = False) -> None:
        for cid, data in msg.blocks:
            for session in self._wanted.pop(cid, ()):
                session.send.send_nowait(("block", cid, data, peer))
        for cid in msg.dont_haves:
            for session in self._wanted.get(cid, ()):
                session.send.send_nowait(("refused", cid, b"", peer))
        wants = [w for w in msg.wants if not w.cancel and _well_formed(w.cid)]
        if wants:
            state = self._peer(peer)
            if state.queued >= PEER_QUEUE:
                log.debug("dropped a want message of %s: %d of its messages wait already", peer, state.queued)
                return
            state.queued += 1
            self._spawn(self._answer_queued, peer, state, wants, public)

    def _spawn(self, fn: Callable[[str, *Ts], Awaitable[object]], peer: str, *args: *Ts) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._guarded, fn, peer, args)

    @staticmethod
    async def _guarded(fn: Callable[[str, *Ts], Awaitable[object]], peer: str, args: tuple[*Ts]) -> None:
        """The boundary of a task serving one peer's message: what escapes it (groups included; never
        trio.Cancelled) is that peer's request failing, logged once; bitswap and the node go on."""
        try:
            await fn(peer, *args)
        except* BacalhauError as group:     # the peer's bad message, a broken stream: one line
            log.info("bitswap: %s for %s failed: %s", getattr(fn, "__name__", fn), peer, first_leaf(group))
        except* Exception as group:
            log.exception("bitswap: %s for %s failed", getattr(fn, "__name__", fn), peer, exc_info=group)

    async def _answer_queued(self, peer: str, state: _Peer, wants: list[Want], public: bool) -> None:
        try:
            async with state.answering:
                await self._answer(peer, wants, public)
        except Exception as exc:  # the per-request boundary: one want message fails alone, bitswap goes on
            log.warning("answering a want message of %s failed: %r", peer, first_leaf(exc))
        finally:
            state.queued -= 1
            self._forget_if_idle(peer)

    def answering(self, peer: str) -> int:
        """Want messages of `peer` waiting or being answered (tests watch the per-peer caps)."""
        state = self._peers.get(peer)
        return state.queued if state is not None else 0

    def free_answer_slots(self) -> int:
        """Of the ANSWERS want messages answered at once, for all peers, how many more could be."""
        return self._answering.value

    def streams(self, peer: str) -> int:
        """Streams `peer` has open to us and being read."""
        state = self._peers.get(peer)
        return state.streams if state is not None else 0

    def _pinned_blocks(self) -> set[bytes]:
        """In a worker thread: multihashes of every block under a pin. Walked again when pins are added (the
        new ones only) or removed (all)."""
        with self._pinned_lock:
            roots = tuple(self._store.pins())
            if roots != self._pinned_roots:
                if not set(self._pinned_roots) <= set(roots):
                    self._pinned = set()
                    stack = list(roots)
                else:
                    stack = [r for r in roots if r not in self._pinned_roots]
                while stack:
                    cid = stack.pop()
                    mh = multihash_of(cid)
                    if mh in self._pinned or not self._store.has(cid):
                        continue
                    self._pinned.add(mh)
                    if codec_of(cid) == 0x70:
                        try:
                            stack.extend(link.cid for link in decode_links(self._store.get(cid, verify=False)))
                        except (ValueError, IndexError, BacalhauError) as exc:  # gone, or not dag-pb after all
                            log.info("pinned block %s not walked: %r", cid_str(cid), exc)
                self._pinned_roots = roots
            return self._pinned

    def _get_for(self, cids: list[bytes], public: bool) -> dict[bytes, bytes]:
        """In a worker thread: the blocks held of `cids`; for a public host's peer, only pinned ones."""
        if public:
            pinned = self._pinned_blocks()
            cids = [c for c in cids if multihash_of(c) in pinned]
        return self._store.get_many(cids, verify=False)

    async def _answer(self, peer: str, wants: list[Want], public: bool = False) -> None:
        """Reply to a peer's wants in messages of 1, 2, 4... up to REPLY_BLOCKS blocks: the first ones come
        at once (Kubo asks ten blocks at a time and waits for them), the later ones in big messages, cheaper
        for both sides. The next message is read from the store while the last one is sent."""
        parts, i, size = [], 0, 1
        while i < len(wants):
            parts.append(wants[i:i + size])
            i, size = i + size, min(size * 2, REPLY_BLOCKS)
        send, receive = trio.open_memory_channel[bytes](1)

        async def read_parts() -> None:
            async with send:
                for part in parts:
                    found = await trio.to_thread.run_sync(self._get_for, [w.cid for w in part], public)
                    blocks, haves, dont_haves = [], [], []
                    for w in part:
                        data = found.get(w.cid)
                        if data is None:
                            if w.send_dont_have:
                                dont_haves.append(w.cid)
                        elif w.have_only and len(data) > INLINE_HAVE:
                            haves.append(w.cid)
                        else:
                            blocks.append((w.cid, data))
                    if blocks or haves or dont_haves:
                        await send.send(encode_message(blocks=blocks, haves=haves, dont_haves=dont_haves))

        try:
            async with self._answering, trio.open_nursery() as nursery:
                nursery.start_soon(read_parts)
                async with receive:
                    async for message in receive:
                        try:
                            await self._send(peer, message)
                        except BacalhauError:
                            nursery.cancel_scope.cancel()   # read_parts too: its next send would find no reader
                            raise
        except* BacalhauError as group:
            log.info("could not answer %s: %s", peer, group.exceptions[0])

    # -- fetching -------------------------------------------------------------------------------------------

    async def fetch(self, root: bytes, *, timeout: float = 60.0,
                    on_progress: Callable[[int], None] | None = None, links: bool = True) -> int:
        """Fetch the DAG under `root` into the store from connected peers (without `links`, the root block
        alone); return how many blocks came."""
        fetch = _Fetch(self, root, on_progress, links)
        try:
            with trio.fail_after(timeout):
                await fetch.run()
        finally:
            fetch.withdraw_wants()
        return fetch.fetched


class _Fetch:
    """One fetch of a DAG: the blocks to look at (`pending`), the wants in flight (`asked`, by block: the peers
    asked), who said they lack a block (`refused`) and who delivered (`providers`, among whom later wants are
    split). Its loop alternates two steps: top up the window of wants from `pending`, or take one answer."""

    def __init__(self, swap: Bitswap, root: bytes, on_progress: Callable[[int], None] | None,
                 links: bool = True) -> None:
        self.swap = swap
        self.links = links
        self.session = _Session()
        self.pending: deque[bytes] = deque([root])
        self.seen = {root}      # each block once: a DAG may link one child many times (a diamond 40 deep)
        self.asked: dict[bytes, set[str]] = {}          # in flight: the peers asked for it
        self.refused: dict[bytes, set[str]] = {}
        self.providers: list[str] = []
        self.rotation = itertools.count()
        self.fetched = 0
        self.on_progress = on_progress

    async def run(self) -> None:
        while self.pending or self.asked:
            room = WINDOW - len(self.asked)
            # top up a batch at a time: a want message per block would cost the server a reply each
            if self.pending and (room >= min(WANT_BATCH, len(self.pending)) or not self.asked):
                await self._top_up(room)
            else:
                await self._take_answer()

    def withdraw_wants(self) -> None:
        """This fetch no longer waits for the blocks it asked for (done, failed or cancelled)."""
        for cid in self.asked:
            sessions = self.swap._wanted.get(cid, [])
            if self.session in sessions:
                sessions.remove(self.session)
            if not sessions:
                self.swap._wanted.pop(cid, None)

    async def _top_up(self, room: int) -> None:
        """Take up to `room` blocks off `pending`: follow the links of those held already, ask for the rest."""
        batch = [self.pending.popleft() for _ in range(min(room, len(self.pending)))]
        local = await trio.to_thread.run_sync(self.swap._store.get_many, batch)
        for cid in batch:       # what we hold already: only its links are news
            if cid in local:
                self.pending.extend(self._links_of(cid, local[cid]))
        missing = [c for c in batch if c not in local and c not in self.asked]
        if missing:
            await self._want(missing)

    async def _want(self, missing: list[bytes]) -> None:
        """Ask for blocks: of the peers that delivered, each a contiguous run; before any did, of every
        connected peer (connecting to the cluster's nodes first when there is none)."""
        if self.providers:
            share = math.ceil(len(missing) / len(self.providers))
            start = next(self.rotation)
            for k in range(len(self.providers)):
                peer = self.providers[(start + k) % len(self.providers)]
                if part := missing[k * share:(k + 1) * share]:
                    await self._ask(part, [peer])
            return
        peers = list(self.swap.connected())
        if not peers and self.swap._discover is not None:
            peers = await self.swap._discover()
        if not peers:
            raise NotFoundError("no peer is connected to fetch blocks from")
        await self._ask(missing, peers)

    async def _take_answer(self) -> None:
        """One answer to a want: a block (stored already, by the receiving side) or a peer saying it lacks one."""
        kind, cid, data, peer = await self.session.events.receive()
        if cid not in self.asked:
            return                   # a late answer for a block that came already
        if kind == "block":
            del self.asked[cid]
            self.refused.pop(cid, None)
            if peer not in self.providers:
                self.providers.append(peer)
            self.pending.extend(self._links_of(cid, data))
            self.fetched += 1
            if self.on_progress:
                self.on_progress(self.fetched)
            return
        self.refused.setdefault(cid, set()).add(peer)
        if peer in self.providers and len(self.providers) > 1:
            self.providers.remove(peer)
        if self.asked[cid] <= self.refused[cid]:
            await self._ask_elsewhere(cid)

    async def _ask(self, cids: Sequence[bytes], peers: Sequence[str]) -> None:
        for cid in cids:
            sessions = self.swap._wanted.setdefault(cid, [])
            if self.session not in sessions:    # asked again elsewhere: still one entry, which finally removes
                sessions.append(self.session)
            self.asked.setdefault(cid, set()).update(peers)
        for i in range(0, len(cids), WANT_BATCH):
            message = encode_message(wants=cids[i:i + WANT_BATCH])
            for peer in peers:
                try:
                    await self.swap._send(peer, message)
                except BacalhauError as exc:
                    log.debug("want to %s failed: %s", peer, exc)
                    for cid in cids[i:i + WANT_BATCH]:
                        self.refused.setdefault(cid, set()).add(peer)
        for cid in cids:     # every peer asked is gone already: ask others now, no answer will come
            if cid in self.asked and self.asked[cid] <= self.refused.get(cid, set()):
                await self._ask_elsewhere(cid)

    async def _ask_elsewhere(self, cid: bytes) -> None:
        """Every peer asked for `cid` lacks it: ask the other connected peers, then nodes `discover` reaches."""
        others = [p for p in self.swap.connected() if p not in self.asked[cid]]
        if not others and self.swap._discover is not None:
            others = [p for p in {*await self.swap._discover(), *self.swap.connected()} if p not in self.asked[cid]]
        if not others:
            raise NotFoundError(f"no connected peer has block {cid_str(cid)}")
        await self._ask([cid], others)

    def _links_of(self, cid: bytes, data: bytes) -> list[bytes]:
        """The links of a dag-pb block not seen before in this fetch (a raw block has none)."""
        if codec_of(cid) != 0x70 or not self.links:
            return []
        new = [c for c in dict.fromkeys(link.cid for link in decode_links(data)) if c not in self.seen]
        self.seen.update(new)
        return new
