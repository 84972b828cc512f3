"""What the API needs from the node, as narrow protocols (as Go Bacalhau's API server takes a
`requester.Endpoint` and a `jobstore.Store`, not the node): route modules take an `ApiDeps` and call only these.

    RequesterEndpoint  submit, cancel, wait for a change, the live compute nodes, a job's logs
    JobStoreReader     read jobs (one, a page, by id prefix)
    ContentStore       this node's IPFS side: held blocks, fetch a CID from the cluster, a result as a tar or
                       one entry of it, a result item from the compute node that ran it (bacalhau/content.py)
    NodeIdentity       who this node is (its id, addrs, cluster id)
    DashboardView      the network's figures this node aggregated (dashboard/), and the live node list

Node.api_deps() builds them (node.py); nothing in api/ imports node.py, not even for types
(tests/test_lint.py checks).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bacalhau.amplify.engine import Amplify
    from bacalhau.ipfs.blockstore import Blockstore
    from bacalhau.log_frames import LogEvent
    from bacalhau.models import Job, JobSpec, NodeInfo


class JobStoreReader(Protocol):
    async def get_job(self, job_id: str, *, full: bool = True) -> Job: ...

    async def list_jobs(self, limit: int | None = 10, *, client_id: str | None = None,
                        oldest_first: bool = False) -> list[Job]: ...

    async def resolve_id(self, prefix: str) -> str: ...


class RequesterEndpoint(Protocol):
    async def submit(self, spec: JobSpec, client_id: str = "", *, signature: tuple[str, float] | None = None
                     ) -> Job: ...

    async def cancel(self, job_id: str, reason: str = "cancelled by the user") -> Job: ...

    async def wait_for_change(self, job_id: str, timeout: float) -> None: ...

    def alive_nodes(self) -> list[NodeInfo]: ...

    def read_logs(self, job_id: str, *, execution_id: str = "", stdout_offset: int = 0, stderr_offset: int = 0,
                  follow: bool = True) -> AsyncGenerator[LogEvent, None]: ...


class ContentStore(Protocol):
    blockstore: Blockstore

    async def ipfs_identity(self) -> dict[str, Any]: ...

    async def fetch_cid(self, cid: bytes, *, max_blocks: int | None = None) -> None: ...

    async def ipfs_published(self, cid: bytes) -> None: ...

    async def result_tar(self, cid_text: str) -> Path: ...

    async def result_file(self, cid_text: str, item: str) -> Path: ...

    def open_result(self, node_id: str, execution_id: str, item: str) -> AsyncIterator[bytes]: ...


class NodeIdentity(Protocol):
    node_id: str

    @property
    def cluster_id(self) -> str: ...

    def identity(self) -> dict[str, Any]: ...


class DashboardView(Protocol):
    store: Any          # dashboard/store.py's DashboardStore: its async reads

    def nodes(self) -> list[dict[str, Any]]: ...

    async def wait_changed(self, timeout: float) -> None: ...


@dataclass(frozen=True, eq=False)   # one per API, known by identity (api/logs.py keys its followers by it)
class ApiDeps:
    requester: RequesterEndpoint
    jobs: JobStoreReader
    content: ContentStore
    identity: NodeIdentity
    repo_dir: Path
    amplify: Amplify | None = None    # the Amplify engine (amplify/engine.py) where the node runs it
    dashboard: DashboardView | None = None

    @classmethod
    def from_node(cls, node: Any) -> ApiDeps:
        """Node.api_deps(), kept for callers written before it (typed Any: api/ does not import node.py)."""
        deps: ApiDeps = node.api_deps()
        return deps
