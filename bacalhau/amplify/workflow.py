"""Workflows: the YAML a user writes, parsed into pydantic models and checked as a whole at load.

The shape is the original Amplify's (`jobs:` and `graph:`; a graph node takes `inputs` from `root` or a parent
`node_id`, with a `path` to mount it at and a `predicate` on the parent's stdout), extended per node with
`when: {mime: "image/*"}` (only the parent's matching files are mounted), `retries` and `backoff`, and
`on_parent_failure` (skip | run | fail); jobs run on the `docker` or `wasm` engine with resources and a timeout.

What a workflow file may hold is bounded before it is parsed (bytes, no YAML aliases, counts), and every
mistake is one line naming the job or node: an unknown parent or job, a duplicate id, a cycle, no node fed from
root, a mime pattern that is not type/subtype, a predicate that is not a regular expression, a mount path that
is not a plain absolute path.
"""

from __future__ import annotations

import functools
import posixpath
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bacalhau.errors import UserError
from bacalhau.models import Resources

MAX_WORKFLOW_BYTES = 256 * 1024     # a workflow file or the workflow text of a run request
MAX_JOBS = 100
MAX_NODES = 200
MAX_INPUTS = 16
MAX_PREDICATE_CHARS = 1000
MAX_RETRIES = 10
MAX_BACKOFF = 3600.0
MAX_TIMEOUT = 24 * 3600.0
DEFAULT_TIMEOUT = 600.0             # the original's 10m
DEFAULT_OUTPUT = "default"
OUTPUTS_PATH = "/outputs"           # the one directory a job's node publishes
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MIME_PART = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
_MIME = re.compile(rf"(\*/\*|{_MIME_PART}/\*|{_MIME_PART}/{_MIME_PART})")


class WorkflowError(UserError):
    """A workflow that cannot run: the message is one line naming the job or node."""


class OnParentFailure(StrEnum):
    SKIP = "skip"      # a parent failed or was cancelled: this node is skipped
    RUN = "run"        # run without what the failed parent would have given
    FAIL = "fail"      # this node fails too


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def check_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise ValueError(f"id {value[:80]!r} must be 1-64 letters, digits, '_', '.' or '-'")
    return value


def check_mount_path(value: str) -> str:
    """A plain absolute path in the job's container: no '..', no '.', no '//', not '/' itself."""
    if not value.startswith("/") or "\x00" in value or len(value) > 255:
        raise ValueError(f"path {value[:80]!r} must be an absolute path in the job's container")
    parts = value.rstrip("/").split("/")[1:]
    if not parts or any(p in ("", ".", "..") for p in parts) or posixpath.normpath(value) != value.rstrip("/"):
        raise ValueError(f"path {value[:80]!r} must be a plain absolute path (no '..', '.' or '//', not '/')")
    return value.rstrip("/")


def check_mime(value: str) -> str:
    if not _MIME.fullmatch(value):
        raise ValueError(f"mime {value[:80]!r} is not a pattern like image/* or text/csv")
    return value


def compile_predicate(pattern: str) -> Any:
    """A predicate is an RE2 expression (linear time: no pattern can make matching a stdout blow up)."""
    import re2  # type: ignore[import-untyped]

    try:
        return re2.compile(pattern)
    except Exception as exc:   # re2.error: the binding's own exception type
        raise ValueError(f"predicate {pattern[:80]!r} is not a regular expression RE2 accepts: {exc}") from None


def predicate_matches(pattern: str, stdout: str) -> bool:
    """Whether the predicate matches somewhere in `stdout` (unanchored, as the original's MatchString)."""
    return compile_predicate(pattern).search(stdout) is not None


class JobDef(_Strict):
    id: str
    type: Literal["bacalhau", "internal"] = "bacalhau"    # internal: the root job, whose output is the run's CID
    internal_job_id: str | None = None
    engine: Literal["docker", "wasm"] = "docker"
    image: str | None = None
    entrypoint: list[str] | None = None
    parameters: list[str] = Field(default_factory=list, max_length=1024)
    env: dict[str, str] = Field(default_factory=dict, max_length=256)
    wasm_module: str | None = None        # base64:<module bytes>
    entry_point: str = "_start"
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=MAX_TIMEOUT)
    cpu: str | float | None = None
    memory: str | int | None = None

    _check_id = field_validator("id")(check_id)

    @model_validator(mode="after")
    def _engine_fields(self) -> JobDef:
        if self.type == "internal":
            return self
        if self.engine == "docker" and not (self.image or "").strip():
            raise ValueError(f"job {self.id}: a docker job needs an image")
        if self.engine == "wasm" and not (self.wasm_module or "").startswith("base64:"):
            raise ValueError(f"job {self.id}: a wasm job needs wasm_module: base64:<module>")
        try:
            Resources(cpu=self.cpu or 0, memory=self.memory or 0)
        except ValidationError as exc:
            raise ValueError(f"job {self.id}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        return self

    def resources(self) -> Resources:
        return Resources(cpu=self.cpu or 0, memory=self.memory or 0)


class InputDef(_Strict):
    root: bool = False
    node_id: str | None = None
    output_id: str = DEFAULT_OUTPUT
    path: str | None = None               # None: a gate only (its predicate decides), nothing mounted
    predicate: str | None = Field(default=None, max_length=MAX_PREDICATE_CHARS)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is None:
            return None
        path = check_mount_path(v)
        if path == OUTPUTS_PATH or path.startswith(OUTPUTS_PATH + "/"):
            raise ValueError(f"path {path[:80]!r}: an input cannot be mounted over the job's {OUTPUTS_PATH}")
        return path

    @field_validator("predicate")
    @classmethod
    def _predicate(cls, v: str | None) -> str | None:
        if v is not None:
            compile_predicate(v)
        return v

    @model_validator(mode="after")
    def _source(self) -> InputDef:
        if self.root == (self.node_id is not None):
            raise ValueError("an input takes either root: true or a node_id")
        if self.root and self.predicate is not None:
            raise ValueError("a predicate tests a parent's stdout: root has none")
        return self


class OutputDef(_Strict):
    id: str = DEFAULT_OUTPUT
    path: str = OUTPUTS_PATH

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if check_mount_path(v) != OUTPUTS_PATH:
            raise ValueError(f"output path {v[:80]!r}: a job's published output is {OUTPUTS_PATH}")
        return OUTPUTS_PATH


class When(_Strict):
    mime: str

    _check = field_validator("mime")(check_mime)


class NodeDef(_Strict):
    id: str
    job_id: str
    inputs: list[InputDef] = Field(default_factory=list, max_length=MAX_INPUTS)
    outputs: list[OutputDef] = Field(default_factory=lambda: [OutputDef()], max_length=1)
    when: When | None = None
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    backoff: float = Field(default=1.0, ge=0, le=MAX_BACKOFF)   # seconds before the 2nd attempt, doubling after
    on_parent_failure: OnParentFailure = OnParentFailure.SKIP

    _check_id = field_validator("id")(check_id)

    def parents(self) -> list[str]:
        return list(dict.fromkeys(i.node_id for i in self.inputs if i.node_id is not None))


class Workflow(_Strict):
    jobs: list[JobDef] = Field(max_length=MAX_JOBS)
    graph: list[NodeDef] = Field(max_length=MAX_NODES)

    @model_validator(mode="after")
    def _whole(self) -> Workflow:
        check_graph(self)
        return self

    def job(self, job_id: str) -> JobDef:
        return next(j for j in self.jobs if j.id == job_id)

    def node(self, node_id: str) -> NodeDef:
        return next(n for n in self.graph if n.id == node_id)

    def order(self) -> list[str]:
        return topological_order(self.graph)

    def children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n.id: [] for n in self.graph}
        for n in self.graph:
            for p in n.parents():
                out[p].append(n.id)
        return out


def check_graph(wf: Workflow) -> None:
    jobs: set[str] = set()
    for job in wf.jobs:
        if job.id in jobs:
            raise ValueError(f"job {job.id}: the id is used twice")
        jobs.add(job.id)
    nodes: set[str] = set()
    for node in wf.graph:
        if node.id in nodes:
            raise ValueError(f"node {node.id}: the id is used twice")
        nodes.add(node.id)
    if not wf.graph:
        raise ValueError("the graph has no nodes")
    for node in wf.graph:
        if node.job_id not in jobs:
            raise ValueError(f"node {node.id}: job {node.job_id!r} is not among the jobs")
        for parent in node.parents():
            if parent not in nodes:
                raise ValueError(f"node {node.id}: parent {parent!r} is not a node of the graph")
            if parent == node.id:
                raise ValueError(f"node {node.id}: it is its own parent")
        if not node.inputs:
            raise ValueError(f"node {node.id}: it has no inputs (give root: true or a parent node_id)")
        internal = wf.job(node.job_id).type == "internal"
        if internal and not all(i.root for i in node.inputs):
            raise ValueError(f"node {node.id}: an internal job takes only root as input")
        paths = [i.path for i in node.inputs if i.path]
        if len(paths) != len(set(paths)):
            raise ValueError(f"node {node.id}: two inputs are mounted at the same path")
        if node.when is not None and not paths:
            raise ValueError(f"node {node.id}: `when` filters mounted inputs, and it mounts none (give a path)")
    if not any(i.root for n in wf.graph for i in n.inputs):
        raise ValueError("no node takes the run's CID: give one node an input with root: true")
    topological_order(wf.graph)


def topological_order(graph: list[NodeDef]) -> list[str]:
    """Node ids, parents first (Kahn's algorithm); ValueError naming a cycle's nodes when there is one."""
    parents = {n.id: set(n.parents()) for n in graph}
    children: dict[str, list[str]] = {n.id: [] for n in graph}
    for n in graph:
        for p in parents[n.id]:
            children[p].append(n.id)
    waiting = {k: len(v) for k, v in parents.items()}
    ready = [n.id for n in graph if waiting[n.id] == 0]
    order: list[str] = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for child in children[current]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) < len(graph):
        stuck = [n.id for n in graph if waiting[n.id] > 0]
        # follow parents among the stuck nodes until one repeats: that loop is the cycle
        path, seen = [stuck[0]], {stuck[0]}
        nxt = next(p for p in sorted(parents[path[-1]]) if waiting.get(p, 0) > 0)
        while nxt not in seen:
            path.append(nxt)
            seen.add(nxt)
            nxt = next(p for p in sorted(parents[path[-1]]) if waiting.get(p, 0) > 0)
        cycle = path[path.index(nxt):] + [nxt]
        raise ValueError(f"node {cycle[0]}: it is in a cycle ({' <- '.join(cycle)})")
    return order


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors' aliases: a few lines of aliases can stand for billions of nodes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise WorkflowError(f"line {event.start_mark.line + 1}: YAML aliases (*name) are not allowed in a "
                                "workflow")
        return super().compose_node(parent, index)


def parse_workflow(text: str | bytes, where: str = "workflow") -> Workflow:
    """The workflow in `text`, or WorkflowError with one line."""
    if len(text) > MAX_WORKFLOW_BYTES:
        raise WorkflowError(f"{where} is {len(text)} bytes, over the {MAX_WORKFLOW_BYTES} a workflow may be")
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)   # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise WorkflowError(f"{where} is not YAML{line}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:      # the composer recurses once a level: [[[[... past the interpreter's limit
        raise WorkflowError(f"{where} is nested too deep") from None
    if not isinstance(data, dict):
        raise WorkflowError(f"{where} must be a mapping with jobs: and graph:")
    try:
        return Workflow.model_validate(data)
    except ValidationError as exc:
        raise WorkflowError(f"{where}: {describe_error(exc, data)}") from None


@functools.lru_cache(maxsize=64)
def parsed_workflow(text: str) -> Workflow:
    """parse_workflow, remembered: a run's stored workflow is read at each look at the run (treat it as frozen)."""
    return parse_workflow(text)


def load_workflow(path: Path) -> Workflow:
    try:
        size = path.stat().st_size
        if size > MAX_WORKFLOW_BYTES:
            raise WorkflowError(f"{path} is {size} bytes, over the {MAX_WORKFLOW_BYTES} a workflow may be")
        text = path.read_bytes()
    except OSError as exc:
        raise WorkflowError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_workflow(text, str(path))


def describe_error(exc: ValidationError, data: dict[str, Any]) -> str:
    """pydantic's first error as one line naming the job or node it is in."""
    first = exc.errors()[0]
    loc = list(first.get("loc", ()))
    msg = " ".join(str(first.get("msg", "")).removeprefix("Value error, ").split())
    owner = ""
    if len(loc) >= 2 and loc[0] in ("jobs", "graph") and isinstance(loc[1], int):
        items = data.get(loc[0])
        item = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
        name = item.get("id") if isinstance(item, dict) else None
        kind = "job" if loc[0] == "jobs" else "node"
        owner = f"{kind} {name}" if isinstance(name, str) else f"{kind} #{loc[1] + 1}"
        loc = loc[2:]
    field = ".".join(str(p) for p in loc)
    if owner and msg.startswith(owner):
        return msg[:300]
    parts = [p for p in (owner, field) if p]
    return (f"{' '.join(parts)}: {msg}" if parts else msg)[:300]
