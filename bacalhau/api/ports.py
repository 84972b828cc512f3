"""What the API needs from the node, as narrow protocols (as Go Bacalhau's API server takes a
`requester.Endpoint` and a `jobstore.Store`, not the node): route modules take an `ApiDeps` and call only these.

    RequesterEndpoint  submit, cancel, wait for a change, the live compute nodes
    JobStoreReader     read jobs (one, a page, by id prefix)
    ContentStore       this node's IPFS side: held blocks, fetch a CID from the cluster, a result as a tar, a
                       result item from the compute node that ran it
    NodeIdentity       who this node is (its id, addrs, cluster id)
    DashboardView      the network's figures this node aggregated (dashboard/), and the live node list

`ApiDeps.from_node` builds them from a running Node; nothing in api/ imports node.py at run time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bacalhau.ipfs.blockstore import Blockstore
    from bacalhau.models import Job, JobSpec, NodeInfo


class JobStoreReader(Protocol):
    async def get_job(self, job_id: str, *, full: bool = True) -> Job: ...

    async def list_jobs(self, limit: int | None = 10) -> list[Job]: ...

    async def resolve_id(self, prefix: str) -> str: ...


class RequesterEndpoint(Protocol):
    async def submit(self, spec: JobSpec, client_id: str = "") -> Job: ...

    async def cancel(self, job_id: str, reason: str = "cancelled by the user") -> Job: ...

    async def wait_for_change(self, job_id: str, timeout: float) -> None: ...

    def alive_nodes(self) -> list[NodeInfo]: ...


class ContentStore(Protocol):
    blockstore: Blockstore

    async def ipfs_identity(self) -> dict[str, Any]: ...

    async def fetch_cid(self, cid: bytes) -> None: ...

    async def ipfs_published(self, cid: bytes) -> None: ...

    async def result_tar(self, cid_text: str) -> Path: ...

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


@dataclass(frozen=True)
class ApiDeps:
    requester: RequesterEndpoint
    jobs: JobStoreReader
    content: ContentStore
    identity: NodeIdentity
    repo_dir: Path
    dashboard: DashboardView | None = None

    @classmethod
    def from_node(cls, node: Any) -> ApiDeps:
        """From a running Node with a requester (typed Any: api/ does not import node.py)."""
        requester = node.requester
        assert requester is not None, "the API runs on requester nodes"
        return cls(requester=requester, jobs=requester.store, content=node, identity=node,
                   repo_dir=node.config.repo_dir, dashboard=getattr(node, "dashboard", None))
