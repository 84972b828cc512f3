"""The libp2p host of a node: with `fastpath`, the only code that imports py-libp2p.

What it adds over py-libp2p (each point works around a trap measured on py-libp2p 0.8.1):
- an Ed25519 identity kept in a file, so the peer ID survives restarts;
- Noise as the only security protocol (py-libp2p's defaults accept plaintext dialers), yamux and mplex;
- request/response calls, one stream each, one length-prefixed frame each way, a size limit and a timeout
  on every read, and handlers behind a boundary that catches everything (an exception escaping a raw
  py-libp2p handler can take the host down);
- connections to the configured peers kept up with backoff (dialing costs >= 250 ms: never per call);
- gossipsub with a 1 s heartbeat and spam limits sized for a cluster's NodeInfo traffic; every message
  signed and checked against its origin (strict signing), so a subscriber learns who wrote it;
- caps on connections in total and per peer (py-libp2p enforces the per-peer one only on its own dials);
- gossip that resumes at once when a peer restarts: pubsub seqnos from the clock in nanoseconds (a restarted
  node's messages were dropped as already seen), and a host that stops closes its sockets (py-libp2p leaves
  them open, and its peers kept the dead pubsub stream).
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.identity_utils import load_identity
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service.context import background_trio_service

import bacalhau.p2p.tcp
from bacalhau.errors import ProtocolError, TransportError, UnsupportedProtocolError
from bacalhau.p2p import fastpath
from bacalhau.secret_file import write_secret

log = logging.getLogger(__name__)

GOSSIPSUB_PROTOCOLS = [TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")]
LENGTH = struct.Struct(">I")
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
DEFAULT_READ_TIMEOUT = 10.0
REDIAL_MIN, REDIAL_MAX = 0.5, 10.0
DIAL_TIMEOUT = 10.0   # a dial that the other side's PSK silently refuses would hang for 20-30 s
READ_CHUNK = 256 * 1024
REANNOUNCE_INTERVAL = 2.0
NEW_PEER_CHECK = 0.1         # how soon a new pubsub peer is told this host's subscriptions
CLOSE_TIMEOUT = 1.0      # a host that stops closes its connections within this
DEFAULT_MAX_CONNECTIONS = 256          # inbound and outbound, all peers
DEFAULT_MAX_CONNECTIONS_PER_PEER = 2   # a peer that opens more has its newest ones closed

RequestHandler = Callable[[str, bytes], Awaitable[bytes]]


fastpath.apply()
bacalhau.p2p.tcp.apply()      # a silent peer's connection is dropped, not waited on


def load_or_create_identity(key_path: Path) -> Any:
    """The node's Ed25519 key pair, created once and kept (mode 0600)."""
    if key_path.exists():
        return load_identity(key_path)
    key_pair = create_new_key_pair()
    # libp2p's save_identity writes the file, then chmods it: readable by others for a moment
    write_secret(key_path, key_pair.private_key.serialize())
    return key_pair


def addr_of_peer(addr: str, peer_id: str) -> bool:
    """Whether `addr` is a multiaddr whose /p2p/ part, if it has one, is `peer_id`."""
    try:
        maddr = multiaddr.Multiaddr(addr)
        named = maddr.value_for_protocol("p2p") if "/p2p/" in addr else None
    except Exception:
        return False
    return named is None or str(named) == peer_id


def _tcp_socket(conn: Any) -> Any:
    """The trio socket under a py-libp2p 0.8.1 connection (its muxer, Noise, PSK and TCP layers), or None."""
    layer, seen = conn, 0
    while layer is not None and seen < 8:
        if isinstance(layer, trio.SocketStream):
            return layer.socket
        layer = next((getattr(layer, name) for name in ("muxed_conn", "secured_conn", "conn", "_conn", "stream")
                      if name in getattr(layer, "__dict__", {})), None)
        seen += 1
    return None


class _ConnectionCap(INotifee):
    """Hands every new connection to the host, which closes those over the per-peer cap, and keeps the open
    ones in `open_conns` (the swarm's own table is emptied before its connections are closed, if they are)."""

    def __init__(self, send: trio.MemorySendChannel[Any], open_conns: set[Any]) -> None:
        self._send = send
        self._open = open_conns

    async def connected(self, network: Any, conn: Any) -> None:
        self._open.add(conn)
        try:
            self._send.send_nowait(conn)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass    # a flood of connections: the next one's check closes the excess as well

    async def disconnected(self, network: Any, conn: Any) -> None:
        self._open.discard(conn)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


class P2PStream:
    """One libp2p stream. Not to be shared between tasks (yamux streams have no lock upstream)."""

    def __init__(self, stream: Any, max_frame: int, read_timeout: float) -> None:
        self._stream = stream
        self._max_frame = max_frame
        self._default_timeout = read_timeout
        self._timeout: float | None = read_timeout

    def set_read_timeout(self, seconds: float | None = -1.0) -> None:
        """None: reads wait as long as it takes (a stream idle between messages); no argument: the default."""
        self._timeout = self._default_timeout if seconds == -1.0 else seconds

    @property
    def remote_peer(self) -> str:
        return str(self._stream.muxed_conn.peer_id)

    async def read(self, max_bytes: int = READ_CHUNK) -> bytes:
        """Up to max_bytes; b"" at the end of the stream."""
        with self._deadline():
            return await self._read_some(max_bytes)

    async def read_exactly(self, n: int) -> bytes:
        """n bytes, within the read timeout as a whole (one cancel scope, not one a chunk: a scope per read
        was a tenth of a bitswap receiver's CPU)."""
        parts, got = [], 0
        with self._deadline():
            while got < n:
                chunk = await self._read_some(n - got)
                if not chunk:
                    raise ProtocolError(f"stream ended after {got} of {n} bytes")
                parts.append(chunk)
                got += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_some(self, max_bytes: int) -> bytes:
        try:
            return bytes(await self._stream.read(max_bytes))
        except StreamError:
            return b""

    @contextmanager
    def _deadline(self) -> Iterator[None]:
        try:
            with trio.fail_after(math.inf if self._timeout is None else self._timeout):
                yield
        except trio.TooSlowError:
            raise TransportError(f"no data from {self.remote_peer} within {self._timeout:g}s") from None

    async def read_frame(self) -> bytes:
        (length,) = LENGTH.unpack(await self.read_exactly(LENGTH.size))
        if length > self._max_frame:
            raise ProtocolError(f"frame of {length} bytes is over the {self._max_frame} limit")
        return await self.read_exactly(length)

    async def write(self, data: bytes) -> None:
        try:
            await self._stream.write(data)
        except StreamError as exc:
            raise TransportError(f"stream to {self.remote_peer} broke: {exc}") from None

    async def write_frame(self, payload: bytes) -> None:
        if len(payload) > self._max_frame:
            raise ProtocolError(f"frame of {len(payload)} bytes is over the {self._max_frame} limit")
        await self.write(LENGTH.pack(len(payload)) + payload)

    async def close_write(self) -> None:
        try:
            close_write = getattr(self._stream, "close_write", None)
            if close_write is not None:
                await close_write()
        except StreamError:
            pass

    async def close(self) -> None:
        try:
            await self._stream.close()
        except Exception:  # closing a broken stream: nothing left to do
            pass

    async def reset(self) -> None:
        try:
            await self._stream.reset()
        except Exception:  # already gone
            pass


class P2PHost:
    def __init__(
        self, *, key_path: Path, listen_host: str = "0.0.0.0", listen_port: int = 1235, peers: Sequence[str] = (),
        psk: str | None = None, max_frame: int = DEFAULT_MAX_FRAME, read_timeout: float = DEFAULT_READ_TIMEOUT,
        pubsub: bool = True, max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_peer: int = DEFAULT_MAX_CONNECTIONS_PER_PEER,
    ) -> None:
        self._key_path = key_path
        self._listen = f"/ip4/{listen_host}/tcp/{listen_port}"
        self._peers = list(peers)
        self._psk = psk
        self._max_frame = max_frame
        self._read_timeout = read_timeout
        self._host: Any = None
        self._pubsub: Any = None
        self._with_pubsub = pubsub     # the public IPFS host has no use for gossipsub
        self._max_connections = max_connections
        self._max_per_peer = max_connections_per_peer
        self.peer_id = ""
        self.listen_addrs: list[str] = []
        self._open_conns: set[Any] = set()

    async def run(self, *, task_status: trio.TaskStatus[P2PHost] = trio.TASK_STATUS_IGNORED) -> None:
        key_pair = await trio.to_thread.run_sync(load_or_create_identity, self._key_path)
        noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
        kwargs: dict[str, Any] = {}
        if self._psk:
            kwargs["psk"] = self._psk
        self._host = new_host(
            key_pair=key_pair,
            sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux, TProtocol(MPLEX_PROTOCOL_ID): Mplex},
            listen_addrs=[multiaddr.Multiaddr(self._listen)],
            connection_config=ConnectionConfig(min_connections=0, low_watermark=0,
                                               high_watermark=self._max_connections,
                                               max_connections=self._max_connections,
                                               max_connections_per_peer=self._max_per_peer),
            **kwargs,
        )
        self.peer_id = self._host.get_id().to_base58()
        router = None
        if self._with_pubsub:   # made before the host listens, so that it sees every connection
            router = GossipSub(
                protocols=GOSSIPSUB_PROTOCOLS, degree=6, degree_low=1, degree_high=12, heartbeat_interval=1,
                heartbeat_initial_delay=0.1, spam_protection_enabled=False, eclipse_protection_enabled=False,
                max_messages_per_topic_per_second=10_000.0, max_pending_messages_per_peer=1000,
            )
            # strict signing (py-libp2p's default, stated here so that it stays): a message whose signature
            # does not match its `from` is dropped, so the origin subscribe() yields is the writer
            self._pubsub = Pubsub(self._host, router, strict_signing=True)
            # A message's id is its origin and seqno, and py-libp2p starts the seqno at int(time.time()), one a
            # second: a node that published faster (NodeInfo, job events) and restarted reused seqnos its peers
            # still hold as seen (for 120 s), and they dropped its messages as repeats. Nanoseconds, as
            # go-libp2p does: a restarted node starts past every seqno it used before.
            if not isinstance(getattr(self._pubsub, "counter", None), int):
                log.warning("this py-libp2p keeps no Pubsub.counter: a restarted node's gossip may be dropped")
            self._pubsub.counter = time.time_ns()
        async with self._host.run(listen_addrs=[multiaddr.Multiaddr(self._listen)]):
            # The auto-connector aims at 100+ connections and keeps redialing every peer it ever saw (a
            # departed node, hundreds of times): a cluster dials its own peers (see _keep_connected).
            await self._host.get_network().auto_connector.stop()
            self.listen_addrs = [f"{a}" if "/p2p/" in str(a) else f"{a}/p2p/{self.peer_id}"
                                 for a in self._host.get_addrs()]
            try:
                async with trio.open_nursery() as nursery:
                    new_conns, conns = trio.open_memory_channel[Any](1024)
                    self._host.get_network().register_notifee(_ConnectionCap(new_conns, self._open_conns))
                    nursery.start_soon(self._cap_connections, conns)
                    if router is not None:
                        await nursery.start(self._run_pubsub, router)
                    for peer in self._peers:
                        nursery.start_soon(self._keep_connected, peer)
                    task_status.started(self)
                    await trio.sleep_forever()
            finally:
                await self._close_connections()

    async def _run_pubsub(self, router: Any, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self._pubsub), background_trio_service(router):
            await self._pubsub.wait_until_ready()
            task_status.started()
            await self._reannounce_subscriptions()

    # -- connections ----------------------------------------------------------------------------------------

    async def _cap_connections(self, conns: trio.MemoryReceiveChannel[Any]) -> None:
        network = self._host.get_network()
        async for conn in conns:
            peer = conn.muxed_conn.peer_id
            excess = network.get_connections(peer)[self._max_per_peer:]
            if excess:
                log.info("closing %d connections of %s over the cap of %d a peer", len(excess), peer,
                         self._max_per_peer)
            for extra in excess:
                with trio.move_on_after(1):
                    try:
                        await extra.close()
                    except Exception as exc:  # already closing
                        log.debug("closing a connection of %s: %r", peer, exc)

    async def _close_connections(self) -> None:
        """Close every connection of this host, so that its peers see it go at once.

        py-libp2p's host leaves its TCP sockets open when it stops (its services are cancelled, and the swarm's
        close() removes the connections without reaching their sockets): a host stopped in a process that goes
        on (a node cancelled in a devstack, a test, a probe) stayed connected in its peers' eyes, their pubsub
        kept the dead peer's stream, and a peer started again under that identity and address got none of
        their gossip (nor they its subscriptions) until that connection died: never, on an idle cluster. The
        swarm closes what it can within CLOSE_TIMEOUT (a yamux GoAway), then each socket is closed here."""
        network = self._host.get_network()
        conns = {*self._open_conns, *(conn for conns in list(network.connections.values()) for conn in conns)}
        sockets = [sock for conn in conns if (sock := _tcp_socket(conn)) is not None]
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await network.close()
            except Exception as exc:  # a connection already broken: the others are closed below regardless
                log.debug("closing the host's connections: %r", exc)
        for sock in sockets:
            sock.close()

    def connected_peers(self) -> list[str]:
        return [p.to_base58() for p in self._host.get_connected_peers()]

    def connection_count(self, peer_id: str | None = None) -> int:
        """Open connections to `peer_id`, or to all peers."""
        network = self._host.get_network()
        return len(network.get_connections(ID.from_base58(peer_id) if peer_id else None))

    async def connect(self, addr: str) -> str:
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as exc:
            raise TransportError(f"bad peer address {addr!r}: {exc}") from None
        hint = (" (this cluster is private: check that this node has the swarm key printed by the node it"
                " joins, --swarm-key)") if self._psk else ""
        # py-libp2p refuses to redial a peer for 60 s after a failed dial: our own backoff decides instead
        self._host.get_network().unblock_peer(info.peer_id)
        # and it dials one TCP address per peer, the first it holds: after a first connection that is the one the
        # peer announced (/ip4/0.0.0.0/... when it listens on all interfaces), which no other machine reaches
        self._host.get_peerstore().clear_addrs(info.peer_id)
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                await self._host.connect(info)
        except trio.TooSlowError:
            raise TransportError(f"cannot connect to {addr} within {DIAL_TIMEOUT:g}s{hint}") from None
        except Exception as exc:
            raise TransportError(f"cannot connect to {addr}: {exc}{hint}") from None
        return str(info.peer_id.to_base58())

    async def _keep_connected(self, addr: str) -> None:
        delay = REDIAL_MIN
        peer = ""
        while True:
            if not peer or peer not in self.connected_peers():
                try:
                    peer = await self.connect(addr)
                    log.info("connected to %s", addr)
                    delay = REDIAL_MIN
                except TransportError as exc:
                    log.warning("%s (retrying in %.1fs)", exc, delay)
                    await trio.sleep(delay)
                    delay = min(REDIAL_MAX, delay * 2)
                    continue
            await trio.sleep(REDIAL_MIN)

    def add_peer_addrs(self, peer_id: str, addrs: list[str]) -> None:
        store = self._host.get_peerstore()
        pid = ID.from_base58(peer_id)
        for addr in addrs:
            try:
                store.add_addr(pid, multiaddr.Multiaddr(addr.split("/p2p/")[0]), 3600)
            except Exception as exc:
                log.debug("ignored address %s of %s: %s", addr, peer_id, exc)

    # -- streams --------------------------------------------------------------------------------------------

    def set_stream_handler(self, protocol_id: str, handler: Callable[[str, P2PStream], Awaitable[None]]) -> None:
        async def guarded(stream: Any) -> None:
            wrapped = P2PStream(stream, self._max_frame, self._read_timeout)
            try:
                await handler(wrapped.remote_peer, wrapped)
            except trio.Cancelled:
                raise
            except BaseException as exc:  # the boundary: nothing may escape into py-libp2p
                log.debug("handler for %s failed: %r", protocol_id, exc)
                await wrapped.reset()

        self._host.set_stream_handler(TProtocol(protocol_id), guarded)

    def set_request_handler(self, protocol_id: str, handler: RequestHandler) -> None:
        async def serve(peer_id: str, stream: P2PStream) -> None:
            request = await stream.read_frame()
            reply = await handler(peer_id, request)
            await stream.write_frame(reply)
            await stream.close()

        self.set_stream_handler(protocol_id, serve)

    @property
    def max_frame(self) -> int:
        return self._max_frame

    @property
    def read_timeout(self) -> float:
        return self._read_timeout

    async def open_stream(self, peer_id: str, protocol_id: str) -> P2PStream:
        try:
            stream = await self._host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol_id)])
        except Exception as exc:
            # multistream-select's "na" to every protocol offered (0.8.1's words), not a timeout or a dial failure
            if "protocols not supported" in str(exc.__cause__ or ""):
                raise UnsupportedProtocolError(f"{peer_id} does not speak {protocol_id}") from None
            raise TransportError(f"cannot open {protocol_id} to {peer_id}: {exc}") from None
        return P2PStream(stream, self._max_frame, self._read_timeout)

    async def request(self, peer_id: str, protocol_id: str, payload: bytes, *, timeout: float = 10.0) -> bytes:
        try:
            with trio.fail_after(timeout):
                stream = await self.open_stream(peer_id, protocol_id)
                try:
                    await stream.write_frame(payload)
                    await stream.close_write()
                    return await stream.read_frame()
                finally:
                    await stream.close()
        except trio.TooSlowError:
            raise TransportError(f"{protocol_id} to {peer_id} timed out after {timeout:g}s") from None

    async def _reannounce_subscriptions(self) -> None:
        """py-libp2p announces a subscription once, to the pubsub peers it has at that moment: a peer whose
        pubsub stream was still being set up (its hello already built) never learns of it, and never sends
        us that topic. Announcing again closes that gap: at once when a pubsub peer is new (a node that
        subscribed while its stream to a restarted peer was being set up was otherwise sent nothing for up to
        REANNOUNCE_INTERVAL), and every REANNOUNCE_INTERVAL besides; receivers treat repeats as no-ops.

        Each time it is one RPC for every topic and without the signed peer record py-libp2p puts in its own
        announcements (its first one to each peer carried it): a receiver checks that record's signature, and
        one RPC a topic, each signed, cost a devstack of 12 nodes about a tenth of its CPU under load (issue
        15). A repeat that a full queue drops is not retried: the next one comes within the interval."""
        from libp2p.pubsub.pb import rpc_pb2

        known: set[Any] = set()
        last = -math.inf
        while True:
            await trio.sleep(NEW_PEER_CHECK)
            peers = set(self._pubsub.peers)
            if not peers - known and trio.current_time() - last < REANNOUNCE_INTERVAL:
                known = peers
                continue
            known, last = peers, trio.current_time()
            packet = rpc_pb2.RPC()
            packet.subscriptions.extend(rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic)
                                        for topic in list(self._pubsub.topic_ids))
            if packet.subscriptions:
                await self._pubsub.message_all_peers(packet.SerializeToString())

    # -- pubsub ---------------------------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        """Gossip `data` on `topic`, best effort: a message that cannot go out is dropped, logged, and the caller
        goes on (a host stopping under a publisher raised OSError out of py-libp2p's address look-up, which
        ended the whole node with it; the next message, or the totals catch-up, makes up for a lost one)."""
        try:
            await self._pubsub.publish(topic, data)
        except trio.Cancelled:
            raise
        except Exception as exc:
            log.warning("gossip on %s not sent: %s: %s", topic, type(exc).__name__, exc)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[AsyncIterator[tuple[str, bytes]]]:
        sub = await self._pubsub.subscribe(topic)

        async def messages() -> AsyncIterator[tuple[str, bytes]]:
            """(origin, data): the peer that wrote and signed the message, not the one that forwarded it."""
            while True:
                msg = await sub.get()
                yield ID(msg.from_id).to_base58(), bytes(msg.data)

        try:
            yield messages()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._pubsub.unsubscribe(topic)
