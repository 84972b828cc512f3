"""build_node / Node.run: the one place where a node's parts are assembled and started, in order:
libp2p host -> transport -> compute -> requester -> node-info gossip -> API."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from bacalhau.bprotocol.transport import InMemoryNetwork, InProcessPeers, Transport
from bacalhau.compute.node import ComputeNode
from bacalhau.compute.store import ExecutionStore
from bacalhau.config import (
    NODE_INFO_TOPIC,
    JobLimits,
    NodeConfig,
    machine_capacity,
)
from bacalhau.content import NodeContent
from bacalhau.errors import BacalhauError
from bacalhau.executors.types import Executor
from bacalhau.ipfs.blockstore import Blockstore
from bacalhau.models import Engine, NodeInfo, NodeType
from bacalhau.requester.nodes import NodeTable
from bacalhau.requester.service import Requester
from bacalhau.requester.store import JobStore
from bacalhau.version import VERSION

if TYPE_CHECKING:

    from bacalhau.api.ports import ApiDeps
    from bacalhau.ipfs.remote import RemoteIpfs

log = logging.getLogger(__name__)
MAX_IGNORED_SENDERS = 1000


@dataclass
class NodeDeps:
    """What tests swap: executors, or an in-memory network instead of libp2p."""

    executors: dict[Engine, Executor] | None = None
    network: InMemoryNetwork | None = None
    neighbours: InProcessPeers | None = None    # the other nodes of this process (devstack), over libp2p
    on_ready: Callable[[Node], Awaitable[None]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def default_executors(node_id: str, engines: tuple[str, ...], limits: JobLimits | None = None) -> dict[Engine, Executor]:
    limits = limits or JobLimits()
    executors: dict[Engine, Executor] = {}
    if "noop" in engines:
        from bacalhau.executors.noop import NoopExecutor

        executors[Engine.NOOP] = NoopExecutor()
    if "docker" in engines:
        from bacalhau.executors.docker import DockerExecutor

        executors[Engine.DOCKER] = DockerExecutor(node_id, limits=limits)
    if "wasm" in engines:
        try:
            from bacalhau.executors.wasm import WasmExecutor
        except ImportError:
            pass
        else:
            executors[Engine.WASM] = WasmExecutor(memory_limit=limits.wasm_memory, max_output=limits.max_output)
    return executors


def untrusted_node_info(info: NodeInfo, sender: str) -> str:
    """Why a NodeInfo from `sender` cannot be taken ("" when it can): it names another node, an address of
    another peer or one that does not parse, or a capacity no machine has."""
    if info.node_id != sender:
        return f"it names node {info.node_id[:60]!r}"
    addrs = [*info.addrs, *([info.log_stream_addr] if info.log_stream_addr else [])]
    if addrs:
        from bacalhau.p2p.host import addr_of_peer

        for addr in addrs:
            if not addr_of_peer(addr, sender):
                return f"address {addr[:100]!r} is not a multiaddr of {sender}"
    for res in (info.capacity_total, info.capacity_free):
        if not (math.isfinite(res.cpu) and res.cpu >= 0 and res.memory >= 0):
            return f"capacity {res.cpu} CPU, {res.memory} bytes"
    if info.running < 0 or info.queued < 0:
        return "a negative count of executions"
    return ""


@dataclass
class NodeIdentityView:
    """Who a node is, as the API shows it (api/ports.py NodeIdentity), without the node."""

    node_id: str
    cluster_id: str
    node_types: list[NodeType]
    addrs: Callable[[], list[str]]            # the host's, as they are now
    api_port: Callable[[], int | None]        # known once the API listens

    def identity(self) -> dict[str, Any]:
        return {"id": self.node_id, "addrs": self.addrs(), "node_types": [t.value for t in self.node_types],
                "version": VERSION, "api_port": self.api_port(), "cluster_id": self.cluster_id}


class Node:
    def __init__(self, config: NodeConfig, deps: NodeDeps | None = None) -> None:
        self.config = config
        self.deps = deps or NodeDeps()
        self.host: Any = None
        self.transport: Transport | None = None
        self.requester: Requester | None = None
        self.compute: ComputeNode | None = None
        self.node_id = ""
        self.swarm_key = ""
        self.api_port: int | None = None
        self._stores: list[Any] = []
        self.blockstore: Blockstore
        self.content: NodeContent                # the node's ContentStore (content.py), for the API and compute
        self.bitswap: Any = None
        self.ipfs_host: Any = None
        self.remote_ipfs: RemoteIpfs | None = None     # with --ipfs-connect
        self.retention: Any = None               # the compute side's garbage collector (compute/retention.py)
        self.amplify: Any = None                 # the Amplify workflow engine of a requester (amplify/engine.py)
        self.known_addrs: dict[str, list[str]] = {}     # other nodes' multiaddrs, from their NodeInfo
        self._ignored_senders: set[str] = set()         # gossip senders already warned about
        self.dashboard: Any = None                      # the network's live figures (dashboard/service.py)

    # -- identity -------------------------------------------------------------------------------------------

    def node_types(self) -> list[NodeType]:
        return list(self.config.node_types)

    def addrs(self) -> list[str]:
        return list(self.host.listen_addrs) if self.host is not None else []

    @property
    def cluster_id(self) -> str:
        """What clients sign requests for (signing.py): a hash of the swarm key (of the node id in memory)."""
        from bacalhau.signing import cluster_id_of

        return cluster_id_of(self.swarm_key or self.node_id)

    def identity(self) -> dict[str, Any]:
        return self._identity().identity()

    def _identity(self) -> NodeIdentityView:
        host = self.host
        return NodeIdentityView(node_id=self.node_id, cluster_id=self.cluster_id, node_types=self.node_types(),
                                addrs=lambda: list(host.listen_addrs) if host is not None else [],
                                api_port=lambda: self.api_port)

    # -- lifetime -------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        from bacalhau.secret_file import private_dir

        private_dir(cfg.repo_dir)   # keys, tokens and job data: this user's only
        try:
            async with trio.open_nursery() as nursery:
                await self._start(nursery)
                task_status.started(self)
        finally:
            for store in self._stores:
                store.close()

    async def _start(self, nursery: trio.Nursery) -> None:
        cfg = self.config
        self.blockstore = await trio.to_thread.run_sync(Blockstore, cfg.repo_dir / "ipfs")
        self._stores.append(self.blockstore)
        if self.deps.network is not None:
            import uuid

            self.node_id = f"mem-{uuid.uuid4().hex[:12]}"
            self.transport = self.deps.network.transport(self.node_id)
            self.content = NodeContent(self.blockstore, node_id=self.node_id, transport=self.transport,
                                       call_timeout=cfg.call_timeout)
        else:
            from bacalhau.bprotocol.p2p_transport import P2PTransport
            from bacalhau.p2p.host import P2PHost
            from bacalhau.p2p.swarm_key import load_or_create_swarm_key

            self.swarm_key = await trio.to_thread.run_sync(
                load_or_create_swarm_key, cfg.repo_dir / "swarm.key", cfg.swarm_key)
            self.host = P2PHost(key_path=cfg.repo_dir / "identity.key", listen_host=cfg.swarm_host,
                                listen_port=cfg.swarm_port, peers=cfg.peers, psk=self.swarm_key)
            await nursery.start(self.host.run)
            self.node_id = self.host.peer_id
            self.transport = await nursery.start(P2PTransport(self.host, mux=cfg.bprotocol_mux, neighbours=self.deps.neighbours).run)
            self.content = NodeContent(self.blockstore, node_id=self.node_id, transport=self.transport,
                                       call_timeout=cfg.call_timeout)
            from bacalhau.ipfs.bitswap import Bitswap

            hosts = [self.host]
            if cfg.ipfs_connect:
                # an external IPFS node instead of the embedded one's public side; the cluster's nodes still
                # swap blocks among themselves over their private host
                from bacalhau.ipfs.remote import RemoteIpfs

                self.remote_ipfs = RemoteIpfs(cfg.ipfs_connect, self.blockstore)
                await self.remote_ipfs.check()
            else:
                # The embedded IPFS node has a libp2p host of its own, without the swarm key (Kubo cannot
                # speak py-libp2p's PSK), for IPFS peers; bitswap serves and fetches over it and the cluster's.
                self.ipfs_host = P2PHost(key_path=cfg.repo_dir / "ipfs" / "identity.key",
                                         listen_host=cfg.ipfs_swarm_host,
                                         listen_port=cfg.ipfs_swarm_port,
                                         peers=cfg.ipfs_swarm_addrs, pubsub=False)
                await nursery.start(self.ipfs_host.run)
                hosts.append(self.ipfs_host)
            # the keyless IPFS host serves pinned content only (added files, published results); the cluster's
            # host serves every block held
            public = [self.ipfs_host] if self.ipfs_host is not None else []
            self.bitswap = await nursery.start(
                Bitswap(hosts, self.blockstore, self._connect_known, public=public).run)
            self.content.bitswap, self.content.remote_ipfs = self.bitswap, self.remote_ipfs
            self.content.ipfs_host = self.ipfs_host

        if cfg.is_compute:
            # one JobLimits for bidder, capacity and executors: a WASM job is counted as what its module may take
            limits = cfg.job_limits
            executors = self.deps.executors or default_executors(self.node_id, cfg.engines, limits)
            store = ExecutionStore(cfg.repo_dir / "compute.db")
            self._stores.append(store)
            self.compute = ComputeNode(
                node_id=self.node_id, transport=self.transport, executors=executors, store=store,
                results_dir=cfg.repo_dir / "results", capacity=cfg.capacity or machine_capacity(),
                labels=cfg.labels, call_timeout=cfg.call_timeout, version=VERSION,
                blockstore=self.blockstore, fetch=self.content.fetch_cid, on_published=self.content.ipfs_published,
                limits=limits, max_result_size=cfg.max_result_size,
                providers=self._input_providers(),
            )
            self.compute.log_stream_addr = next(iter(self.addrs()), "")
            await nursery.start(self.compute.run)
            from bacalhau.compute.retention import Retention

            self.retention = await nursery.start(Retention(
                store=store, results_dir=cfg.repo_dir / "results", blockstore=self.blockstore,
                retention=cfg.retention).run)

        if cfg.is_requester:
            job_store = JobStore(cfg.repo_dir / "jobs.db")
            self._stores.append(job_store)
            self.requester = Requester(
                node_id=self.node_id, transport=self.transport, store=job_store, nodes=NodeTable(cfg.node_info_ttl),
                call_timeout=cfg.call_timeout, bid_timeout=cfg.bid_timeout, max_attempts=cfg.max_attempts,
                reconcile_interval=cfg.reconcile_interval,
            )
            if self.compute is not None:
                self.requester.nodes.pinned.add(self.node_id)
                self.requester.nodes.update(self._node_info())
            await nursery.start(self.requester.run)
            if cfg.amplify:
                from bacalhau.amplify import open_amplify

                self.amplify = await nursery.start(open_amplify(cfg, self.requester, self.content, self._stores).run)
        await self._start_dashboard(nursery)
        # every node listens: requesters keep their node table, and all keep the cluster's addresses, so
        # bitswap can reach a node that holds a block even where the cluster is a star around a requester
        await nursery.start(self._listen_node_info)

        if self.compute is not None:
            self.compute.report_orphans()
            await nursery.start(self._publish_node_info)

        if cfg.is_requester and cfg.serve_api:
            from bacalhau.api.replay import SeenSignatures
            from bacalhau.api.server import build_app, serve_api

            seen = SeenSignatures(cfg.repo_dir / "api.db")
            self._stores.append(seen)
            if self.requester is not None:     # submits' signatures are kept with their jobs (api/replay.py)
                from bacalhau.requester.store import SIGNATURE_WINDOW

                self.requester.store.remember_signatures(seen.recent(time.time() - SIGNATURE_WINDOW))
            app = build_app(self.api_deps(), seen, host=cfg.api_host, token=cfg.api_token)
            self.api_port = await nursery.start(serve_api, app, cfg.api_host, cfg.api_port)
        if self.deps.on_ready is not None:
            await self.deps.on_ready(self)

    def api_deps(self) -> ApiDeps:
        """What the API takes from this node: narrow protocols (api/ports.py), never the node itself."""
        from bacalhau.api.ports import ApiDeps

        assert self.requester is not None, "the API runs on requester nodes"
        return ApiDeps(requester=self.requester, jobs=self.requester.store, content=self.content,
                       identity=self._identity(), repo_dir=self.config.repo_dir,
                       dashboard=self.dashboard, amplify=self.amplify)

    async def _start_dashboard(self, nursery: trio.Nursery) -> None:
        from bacalhau.dashboard.service import Dashboard
        from bacalhau.dashboard.store import DashboardStore

        store = await trio.to_thread.run_sync(DashboardStore, self.config.repo_dir / "dashboard.db")
        self._stores.append(store)
        cfg = self.config
        # a devstack node without the API shows no dashboard: it need not hear every job's event (issue 15)
        shown = self.deps.neighbours is None or (cfg.is_requester and cfg.serve_api)
        self.dashboard = Dashboard(
            node_id=self.node_id, store=store, node_info_ttl=self.config.node_info_ttl,
            hello_interval=self.config.node_info_interval, host=self.host if shown else None, transport=self.transport,
            jobs=self.requester.store if self.requester is not None else None, call_timeout=self.config.call_timeout)
        if self.requester is not None:
            self.requester.on_change.append(self.dashboard.job_changed)
        await nursery.start(self.dashboard.run)

    def _input_providers(self) -> list[Any]:
        from bacalhau.storage.inline import InlineStorage
        from bacalhau.storage.url import UrlPolicy, UrlStorage

        cfg = self.config
        policy = UrlPolicy(allow_private=cfg.allow_private_urls, max_bytes=cfg.url_max_bytes, timeout=cfg.url_timeout)
        return [InlineStorage(), UrlStorage(policy)]

    def _node_info(self) -> NodeInfo:
        assert self.compute is not None
        return self.compute.node_info(self.addrs(), self.node_types())

    async def _publish_node_info(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            info = self._node_info()
            if self.requester is not None:
                self.requester.nodes.update(info)
            self.dashboard.node_seen(info)
            neighbours = self.deps.neighbours
            if neighbours is not None:
                neighbours.publish(self.node_id, info)
            if self.host is not None and (neighbours is None or self._outside_peers(neighbours)):
                await self.host.publish(NODE_INFO_TOPIC, info.model_dump_json().encode())
            elif self.deps.network is not None:
                self.deps.network.publish(self.node_id, info.model_dump_json().encode())
            await trio.sleep(self.config.node_info_interval)

    @staticmethod
    def _outside_peers(neighbours: InProcessPeers) -> bool:
        """Whether a node of this process is connected to one outside it: only then must its nodes gossip their
        NodeInfo over pubsub (where every message costs every node its crypto), and then all do."""
        inside = neighbours.transports.keys()
        return any(set(t.host.connected_peers()) - inside for t in list(neighbours.transports.values()))

    def _receive_node_info(self, sender: str, data: bytes) -> None:
        """A NodeInfo is taken only from the node it describes: `sender` is the gossip message's origin, whose
        signature pubsub checked (a peer with the swarm key could otherwise speak for any node)."""
        try:
            info = NodeInfo.model_validate_json(data)
        except ValueError:
            self._ignore_node_info(sender, "a malformed NodeInfo")
            return
        why = untrusted_node_info(info, sender)
        if why:
            self._ignore_node_info(sender, why)
            return
        self._take_node_info(info)

    def _take_node_info(self, info: NodeInfo) -> None:
        """A NodeInfo from its own node: checked gossip, or a node of this process (InProcessPeers)."""
        if info.node_id != self.node_id and info.addrs:
            self.known_addrs[info.node_id] = info.addrs
        if self.dashboard is not None:
            self.dashboard.node_seen(info)
        if self.requester is not None and info.node_id != self.node_id:
            if self.requester.nodes.update(info):
                log.info("node %s joined", info.node_id)
                self.requester.node_joined(info)

    def _ignore_node_info(self, sender: str, why: str) -> None:
        if sender not in self._ignored_senders:     # once a sender: it may repeat every second
            if len(self._ignored_senders) >= MAX_IGNORED_SENDERS:
                self._ignored_senders.clear()
            self._ignored_senders.add(sender)
            log.warning("node %s ignored NodeInfo gossip from %s: %s", self.node_id, sender, why)

    async def _listen_node_info(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.host is None:
            if self.deps.network is not None:
                self.deps.network.subscribers.append(self._receive_node_info)
            task_status.started()
            return
        neighbours = self.deps.neighbours
        if neighbours is not None:
            neighbours.gossip.append(self._take_node_info)
        try:
            async with self.host.subscribe(NODE_INFO_TOPIC) as messages:
                task_status.started()
                async for origin, data in messages:
                    self._receive_node_info(origin, data)
        finally:
            if neighbours is not None:
                neighbours.gossip.remove(self._take_node_info)

    async def _connect_known(self) -> list[str]:
        """Dial the cluster's nodes this one is not connected to; the peer ids that are now connected."""
        assert self.host is not None
        connected = set(self.host.connected_peers())
        new = []
        for node_id, addrs in list(self.known_addrs.items()):
            if node_id in connected:
                continue
            try:
                new.append(await self.host.connect(addrs[0]))
            except BacalhauError as exc:
                log.info("could not reach node %s for blocks: %s", node_id, exc)
        return new

    async def drain(self) -> None:
        if self.compute is not None:
            await self.compute.drain(self.config.shutdown_grace)
