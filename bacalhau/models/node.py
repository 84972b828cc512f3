"""What a compute node tells the network about itself."""

from __future__ import annotations

import time
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from bacalhau.models.job import Engine
from bacalhau.models.resources import Resources


class NodeType(StrEnum):
    REQUESTER = "requester"
    COMPUTE = "compute"


class NodeInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    node_id: str                   # libp2p peer id
    node_types: list[NodeType] = Field(default_factory=list)
    addrs: list[str] = Field(default_factory=list)
    engines: list[Engine] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    capacity_total: Resources = Field(default_factory=Resources)
    capacity_free: Resources = Field(default_factory=Resources)
    running: int = 0
    queued: int = 0
    version: str = ""
    log_stream_addr: str = ""      # multiaddr of the log-stream server (/bacalhau/compute/logs/1.0.0)
    published_at: float = Field(default_factory=time.time)
