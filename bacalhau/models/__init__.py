"""Pydantic models shared by every part of bacalhau. Nothing here imports anything above models/."""

from bacalhau.models.job import (
    DockerSpec,
    Engine,
    Event,
    Execution,
    Job,
    JobSpec,
    Network,
    NoopSpec,
    RunResult,
    StorageSpec,
    WasmSpec,
    new_id,
)
from bacalhau.models.node import NodeInfo, NodeType
from bacalhau.models.resources import Resources
from bacalhau.models.state import ExecutionState, JobState

__all__ = [
    "DockerSpec", "Engine", "Event", "Execution", "ExecutionState", "Job", "JobSpec", "JobState",
    "Network", "NodeInfo", "NodeType", "NoopSpec", "Resources", "RunResult", "StorageSpec", "WasmSpec",
    "new_id",
]
