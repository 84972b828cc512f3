"""Node configuration. Every default is a named constant; times are float seconds."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bacalhau.models import NodeType, Resources

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 1234
DEFAULT_SWARM_PORT = 1235
DEFAULT_SWARM_HOST = "0.0.0.0"
DEFAULT_IPFS_SWARM_PORT = 1236          # the embedded IPFS node's own libp2p host (no swarm key: Kubo can peer)
DEFAULT_IPFS_SWARM_HOST = "127.0.0.1"   # keyless: open to other machines only when the operator says so
DEFAULT_NODE_INFO_INTERVAL = 1.0        # how often compute nodes gossip their NodeInfo
DEFAULT_NODE_INFO_TTL = 5.0             # a node not heard of for this long is dropped from the node table
DEFAULT_BID_TIMEOUT = 10.0              # an asked node that does not bid within this is rejected
DEFAULT_CALL_TIMEOUT = 10.0             # every bprotocol call
DEFAULT_RECONCILE_INTERVAL = 30.0       # an execution unchanged this long has its node asked how it goes
DEFAULT_SHUTDOWN_GRACE = 10.0           # running executions get this long to end on SIGINT/SIGTERM
DEFAULT_JOB_CPU = 0.1                   # the default job size: what a job that asks for nothing is counted
DEFAULT_JOB_MEMORY = 100 * 1000**2      # as for capacity and limited to in its container (Go Bacalhau's 100m, 100Mb)
DEFAULT_JOB_PIDS = 512                  # processes (threads too) one job's container may hold at once
DEFAULT_MAX_JOB_TIMEOUT = 24 * 3600.0   # a job asking a longer timeout is refused at bid time
DEFAULT_MAX_JOB_OUTPUT = 512 * 1024**2  # bytes kept of each of a job's stdout and stderr; the rest is dropped
DEFAULT_CAPACITY_FRACTION = 0.8         # share of the machine a compute node offers when not limited
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_FETCH_TIMEOUT = 300.0           # fetching a DAG (an input, a result, `ipfs get`) from other nodes
DEFAULT_URL_TIMEOUT = 600.0             # one URL input's whole download
DEFAULT_URL_MAX_BYTES = 10 * 1024**3    # one URL input
DEFAULT_RETENTION = 7 * 24 * 3600.0     # results and unpinned blocks older than this are garbage-collected
DEFAULT_MAX_RESULT_SIZE = 10 * 1024**3  # a job's result (apparent sizes) larger than this fails, unpublished
DEFAULT_WASM_MEMORY_LIMIT = 512 * 1024**2   # linear memory of a WASM job that asks for none
DEFAULT_BPROTOCOL_MUX = True            # bprotocol calls share one stream per peer (off: a stream per call)
DEFAULT_AMPLIFY = True                  # requester nodes run the Amplify workflow engine (serve --no-amplify: off)
DEFAULT_AMPLIFY_MAX_RUNNING = 10        # Amplify runs at once
DEFAULT_AMPLIFY_MAX_WAITING = 100       # Amplify runs queued behind them; past this a run request gets a 429
DEFAULT_AMPLIFY_TRIGGER_LABEL = ""      # KEY or KEY=VALUE: a job so labelled that completes queues a run ("": none)
NODE_INFO_TOPIC = "bacalhau/node-info/1.0.0"
ENV_DIR = "BACALHAU_DIR"


def default_repo_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".bacalhau")


def machine_capacity(fraction: float = DEFAULT_CAPACITY_FRACTION) -> Resources:
    cores = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 1024**3
    return Resources(cpu=cores * fraction, memory=int(memory * fraction))


@dataclass(frozen=True)
class JobLimits:
    """What a compute node holds every job to. One instance is shared by the bidder, the capacity accounting
    and the executors, so what a job is counted as and what its container may use cannot disagree."""

    default_cpu: float = DEFAULT_JOB_CPU
    default_memory: int = DEFAULT_JOB_MEMORY
    pids: int = DEFAULT_JOB_PIDS
    max_timeout: float = DEFAULT_MAX_JOB_TIMEOUT
    max_output: int = DEFAULT_MAX_JOB_OUTPUT
    allow_host_network: bool = False
    wasm_memory: int = DEFAULT_WASM_MEMORY_LIMIT   # a WASM job's linear memory when it asks for none

    def size(self, asked: Resources, engine: str | None = None) -> Resources:
        """What a job counts for and is limited to: what it asked, the default job size where it asked nothing
        (for a WASM job's memory, the node's WASM memory cap, which is what its module may really take)."""
        default_memory = self.wasm_memory if engine == "wasm" else self.default_memory
        return Resources(cpu=asked.cpu or self.default_cpu, memory=asked.memory or default_memory)


@dataclass
class NodeConfig:
    repo_dir: Path = field(default_factory=default_repo_dir)
    node_types: tuple[NodeType, ...] = (NodeType.REQUESTER, NodeType.COMPUTE)
    api_host: str = DEFAULT_API_HOST
    api_port: int = DEFAULT_API_PORT          # 0: pick a free port; None-like behaviour is not needed
    serve_api: bool = True
    swarm_host: str = DEFAULT_SWARM_HOST
    swarm_port: int = DEFAULT_SWARM_PORT
    peers: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    capacity: Resources | None = None         # None: DEFAULT_CAPACITY_FRACTION of the machine
    node_info_interval: float = DEFAULT_NODE_INFO_INTERVAL
    node_info_ttl: float = DEFAULT_NODE_INFO_TTL
    bid_timeout: float = DEFAULT_BID_TIMEOUT
    call_timeout: float = DEFAULT_CALL_TIMEOUT
    reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    engines: tuple[str, ...] = ("docker", "wasm", "noop")
    swarm_key: str | None = None              # hex or a key file; None: the repo's swarm.key (made once)
    api_token: str | None = None              # required of non-loopback API clients when set
    ipfs_swarm_port: int = DEFAULT_IPFS_SWARM_PORT
    ipfs_swarm_host: str = DEFAULT_IPFS_SWARM_HOST   # 0.0.0.0 opens the keyless IPFS side to other machines
    ipfs_swarm_addrs: tuple[str, ...] = ()    # IPFS nodes (Kubo among them) the embedded node stays connected to
    ipfs_connect: str | None = None           # an external node's RPC API multiaddr, used instead of the embedded one
    allow_private_urls: bool = False          # URL inputs may reach loopback, private and link-local addresses
    url_timeout: float = DEFAULT_URL_TIMEOUT
    url_max_bytes: int = DEFAULT_URL_MAX_BYTES
    retention: float = DEFAULT_RETENTION      # seconds; 0 keeps finished results and unpinned blocks for ever
    job_limits: JobLimits = field(default_factory=JobLimits)
    max_result_size: int = DEFAULT_MAX_RESULT_SIZE
    bprotocol_mux: bool = DEFAULT_BPROTOCOL_MUX
    amplify: bool = DEFAULT_AMPLIFY
    amplify_workflow: Path | None = None      # None: the shipped default workflow (bacalhau/amplify/default.yaml)
    amplify_max_running: int = DEFAULT_AMPLIFY_MAX_RUNNING
    amplify_max_waiting: int = DEFAULT_AMPLIFY_MAX_WAITING
    amplify_trigger_label: str = DEFAULT_AMPLIFY_TRIGGER_LABEL

    @property
    def is_requester(self) -> bool:
        return NodeType.REQUESTER in self.node_types

    @property
    def is_compute(self) -> bool:
        return NodeType.COMPUTE in self.node_types
