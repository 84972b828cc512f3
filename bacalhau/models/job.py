"""Jobs, executions and their events: the model the API takes and the stores keep."""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bacalhau.models.limits import (
    MAX_ATTEMPTS,
    MAX_BACKOFF,
    MAX_CONCURRENCY,
    MAX_EXIT_CODE,
    MAX_INPUTS,
    MAX_JOB_TIMEOUT,
    MAX_MAP_ITEMS,
    Args,
    Env,
    Module,
    Name,
    Selector,
    Source,
    Stdout,
    Value,
)
from bacalhau.models.resources import Resources
from bacalhau.models.state import ExecutionState, JobState

DEFAULT_JOB_TIMEOUT = 1800.0


class Engine(StrEnum):
    DOCKER = "docker"
    WASM = "wasm"
    NOOP = "noop"


class Network(StrEnum):
    NONE = "none"
    HOST = "host"


class _Strict(BaseModel):
    # no NaN or Infinity anywhere (Python's json takes both literals; see models/limits.py)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DockerSpec(_Strict):
    image: Name
    entrypoint: Args | None = None
    parameters: Args = Field(default_factory=list)
    env: Env = Field(default_factory=dict)
    working_dir: Name | None = None

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("image must not be empty")
        return v


WASM_INLINE_PREFIX = "base64:"


class WasmSpec(_Strict):
    module: Module                 # "base64:<module bytes>" (uploaded with the job)
    entry_point: Name = "_start"
    parameters: Args = Field(default_factory=list)
    env: Env = Field(default_factory=dict)


class NoopSpec(_Strict):
    """Control-plane tests and benchmarks: prints `stdout`, waits `sleep` seconds, exits with `exit_code`."""

    stdout: Stdout = ""
    exit_code: int = Field(default=0, ge=0, le=MAX_EXIT_CODE)
    sleep: float = Field(default=0.0, ge=0, le=MAX_JOB_TIMEOUT)   # the job's timeout cuts it short


class StorageSpec(_Strict):
    source: Source                 # ipfs://CID, https://..., inline:NAME;base64,DATA
    path: Name = "/inputs"         # the directory the job sees it in (read-only)

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/") or "/../" in v + "/" or v.rstrip("/") in ("", "/outputs"):
            raise ValueError(f"input path must be an absolute directory other than / and /outputs, not {v!r}")
        return v.rstrip("/")

    @field_validator("source")
    @classmethod
    def _known(cls, v: str) -> str:
        if not (v.startswith("inline:") or v.split("://", 1)[0].lower() in ("http", "https", "ipfs")):
            raise ValueError(f"input source must be https://..., ipfs://CID or inline data, not {v[:40]!r}")
        return v


class RetrySpec(_Strict):
    """How this job is retried on other nodes when an attempt fails (not when it exits non-zero)."""

    max_attempts: int | None = Field(default=None, le=MAX_ATTEMPTS)   # None: the requester's default
    backoff: float = Field(default=0.0, ge=0, le=MAX_BACKOFF)  # seconds before the 2nd attempt, doubling after
    on_nonzero_exit: bool = False       # also retry (elsewhere) when the command ran and exited non-zero

    @field_validator("max_attempts")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("max_attempts must be at least 1")
        return v


class JobSpec(_Strict):
    engine: Engine = Engine.DOCKER
    docker: DockerSpec | None = None
    wasm: WasmSpec | None = None
    noop: NoopSpec | None = None
    resources: Resources = Field(default_factory=Resources)
    timeout: float = Field(default=DEFAULT_JOB_TIMEOUT, le=MAX_JOB_TIMEOUT)
    network: Network = Network.NONE
    labels: dict[Name, Value] = Field(default_factory=dict, max_length=MAX_MAP_ITEMS)
    # Kubernetes label-selector syntax: 'zone=eu,gpu in (a100,h100)'
    node_selector: Selector = ""
    concurrency: int = Field(default=1, le=MAX_CONCURRENCY)
    inputs: list[StorageSpec] = Field(default_factory=list, max_length=MAX_INPUTS)
    retry: RetrySpec = Field(default_factory=RetrySpec)

    @model_validator(mode="after")
    def _engine_spec(self) -> JobSpec:
        if self.engine == Engine.DOCKER and self.docker is None:
            raise ValueError("engine is docker but the spec has no 'docker' section")
        if self.engine == Engine.WASM and self.wasm is None:
            raise ValueError("engine is wasm but the spec has no 'wasm' section")
        if self.engine == Engine.NOOP and self.noop is None:
            self.noop = NoopSpec()
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        paths = [i.path for i in self.inputs]
        if len(set(paths)) != len(paths):
            raise ValueError("two inputs share a mount path: give each its own (-i SOURCE:/inputs/NAME)")
        if self.node_selector:
            from bacalhau.models.selector import parse_selector

            parse_selector(self.node_selector)
        return self


def new_id() -> str:
    return str(uuid.uuid4())


class Event(_Strict):
    time: float
    kind: str                      # "job" or "execution"
    subject: str                   # job or execution id
    state: str
    reason: str = ""
    node_id: str = ""


TAIL_BYTES = 1024      # the last bytes of a run's stdout and stderr its RunResult holds (decoded: as many characters)


class RunResult(_Strict):
    """What an executor reports: exit code and where the outputs are kept (stdout/stderr in full)."""

    exit_code: int
    error: str = ""                # the executor's own failure (not the job's exit code)
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_tail: str = ""          # the last bytes of stdout, for describe
    stdout_truncated: bool = False  # the stream passed the node's --max-job-output: the rest was dropped
    stderr_truncated: bool = False
    # the last TAIL_BYTES of stderr (a failed job's error, for describe and Go Bacalhau's RunOutput); a result
    # stored before it has none
    stderr_tail: str = Field(default="", max_length=TAIL_BYTES)

    def tail_is_whole(self, stream: Literal["stdout", "stderr"]) -> bool:
        """Whether the stream's tail is all of it. Undecodable bytes read as U+FFFD (3 bytes encoded), so a
        tail holding one is whole only if the stream fits in TAIL_BYTES (an executor reads that much)."""
        tail, size = (self.stdout_tail, self.stdout_bytes) if stream == "stdout" else (self.stderr_tail,
                                                                                      self.stderr_bytes)
        truncated = self.stdout_truncated if stream == "stdout" else self.stderr_truncated
        return not truncated and size <= len(tail.encode()) and (size <= TAIL_BYTES or "\ufffd" not in tail)


class Execution(_Strict):
    id: str = Field(default_factory=new_id)
    job_id: str
    node_id: str
    state: ExecutionState = ExecutionState.NEW
    reason: str = ""
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    result: RunResult | None = None
    result_ref: str = ""           # where the published result lives (node-local path id or a CID)


class Job(_Strict):
    id: str = Field(default_factory=new_id)
    spec: JobSpec
    state: JobState = JobState.PENDING
    reason: str = ""
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    client_id: str = ""
    executions: list[Execution] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "engine": self.spec.engine.value,
            "created_at": self.created_at,
            "reason": self.reason,
        }
