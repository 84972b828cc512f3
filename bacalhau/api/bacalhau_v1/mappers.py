"""Bacalhau 1.0's job JSON <-> our one job model (bacalhau/models), both ways. The Bacalhau shapes exist
only here, at the edge: jobs are stored and run as our JobSpec.

In: a submit payload's Spec, validated as Go v1.0.3 does (pkg/job/validate.go), with enum values parsed
case-insensitively and struct keys matched case-insensitively. What we cannot honour (a verifier, a
publisher, a storage source, a network mode, ...) is a BadRequest naming it: never dropped silently.

    Engine Docker|Wasm|Noop        -> engine docker|wasm|noop
    Docker.Entrypoint              -> docker.entrypoint (the whole command, as Docker's entrypoint override)
    Docker.EnvironmentVariables    ["K=V"] -> docker.env
    Wasm.EntryModule               Inline data URL (gzipped or a gzipped tar of one file) or IPFS CID
                                   (fetched by routes.py) -> wasm.module
    inputs IPFS|URLDownload|Inline -> inputs ipfs://CID | https://... | inline:NAME (path = dir/NAME)
    Resources CPU|Memory           -> resources; Disk and GPU refused
    Network None|Full              -> network none|host; HTTP (domain filtering) refused
    NodeSelectors                  -> node_selector (Kubernetes syntax)
    Deal.Concurrency               -> concurrency
    Annotations ["k" | "k=v"]      -> labels {k: "" | v} (Go's `--labels` flag filled Annotations)

Out: Job, JobState, ExecutionState, PublishedResult and JobHistory with Go's irregular casing copied exactly
(`NodeId`, a single `PublishedResults`, `path`, `inputs`/`outputs`, lower-case RunOutput keys).
"""

from __future__ import annotations

import base64
import posixpath
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from bacalhau.api.bacalhau_v1 import dataurl
from bacalhau.api.bacalhau_v1.envelope import BadRequest, field
from bacalhau.errors import NotFoundError
from bacalhau.models import Engine, Execution, ExecutionState, Job, JobSpec, JobState, Network
from bacalhau.models.job import DEFAULT_JOB_TIMEOUT, WASM_INLINE_PREFIX
from bacalhau.models.limits import MAX_MODULE_CHARS, MAX_SOURCE_CHARS

MAX_MODULE_BYTES = MAX_MODULE_CHARS // 4 * 3      # what fits our model's base64 module field
MAX_INLINE_BYTES = MAX_SOURCE_CHARS // 4 * 3 - 1024
OUTPUTS = [{"StorageSource": "IPFS", "Name": "outputs", "path": "/outputs"}]
ZERO_TIME = "0001-01-01T00:00:00Z"


def _enum(*names: str) -> dict[str, str]:
    return {n.lower(): n for n in names}


ENGINES = _enum("Noop", "Docker", "Wasm", "Language", "PythonWasm")
VERIFIERS = _enum("Noop", "Deterministic", "External")
PUBLISHERS = _enum("Noop", "Ipfs", "Filecoin", "Estuary", "S3")
SOURCES = _enum("IPFS", "RepoClone", "RepoCloneLFS", "URLDownload", "FilecoinUnsealed", "Filecoin", "Estuary",
                "Inline", "LocalDirectory", "S3")
NETWORKS = _enum("None", "Full", "HTTP")
SELECTOR_OPS = {"in": "in", "notin": "notin", "=": "=", "==": "=", "!=": "!=", "exists": "exists", "!": "!exists"}

JOB_STATES = {JobState.PENDING: "New", JobState.IN_PROGRESS: "InProgress", JobState.COMPLETED: "Completed",
              JobState.FAILED: "Error", JobState.CANCELLED: "Cancelled"}
_E = ExecutionState
EXECUTION_STATES = {_E.NEW: "New", _E.ASKED_FOR_BID: "AskForBid", _E.BID_ACCEPTED: "BidAccepted",
                    _E.BID_REJECTED: "BidRejected", _E.RUNNING: "BidAccepted", _E.PUBLISHING: "ResultAccepted",
                    _E.COMPLETED: "Completed", _E.FAILED: "Failed", _E.CANCELLED: "Cancelled"}


_JOB_REF = re.compile(r"[0-9a-fA-F-]{1,36}")


def job_ref(value: object) -> str:
    """A job id or a prefix of one as a client gives it (our ids are UUIDs); NotFoundError for anything else,
    so no store is searched for a 10 MB pattern."""
    if not isinstance(value, str) or not _JOB_REF.fullmatch(value):
        raise NotFoundError(f"no job with id {str(value)[:40]!r}")
    return value.lower()


# -- typed reads of a decoded payload (Go's decoder refuses a value of the wrong JSON type) ------------------

def _type_error(where: str, want: str, value: Any) -> BadRequest:
    got = {dict: "object", list: "array", str: "string", bool: "bool", type(None): "null"}.get(type(value), "number")
    return BadRequest(f"error decoding request: {where} must be {want}, not {got}")


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _type_error(where, "an object", value)
    return value


def _str(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _type_error(where, "a string", value)
    return value


def _int(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(where, "an integer", value)
    return value


def _num(value: Any, where: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(where, "a number", value)
    return float(min(max(value, -1e18), 1e18))


def _strs(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _type_error(where, "an array", value)
    return [_str(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _str_map(value: Any, where: str) -> dict[str, str]:
    return {k: _str(v, f"{where}.{k[:40]}") for k, v in _obj(value, where).items()}


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _type_error(where, "an array", value)
    return value


def _enum_value(value: Any, names: dict[str, str], where: str) -> str:
    """Go's ParseX: case-insensitive, whitespace trimmed; "" for an absent value (Go's zero)."""
    text = _str(value, where).strip()
    if not text:
        return ""
    try:
        return names[text.lower()]
    except KeyError:
        raise BadRequest(f"error decoding request: {where}: unknown value {text[:40]!r} "
                         f"(one of {', '.join(names.values())})") from None


def _refuse(what: str, why: str) -> BadRequest:
    return BadRequest(f"error validating job: {what} is not supported here: {why}")


# -- in -------------------------------------------------------------------------------------------------------

def entry_module_cid(payload: dict[str, Any]) -> str | None:
    """The CID of a WASM job's entry module given as IPFS storage (routes.py fetches it), or None."""
    spec = _obj(field(payload, "Spec"), "Spec")
    module = _obj(field(_obj(field(spec, "Wasm"), "Spec.Wasm"), "EntryModule"), "Spec.Wasm.EntryModule")
    source = _enum_value(field(module, "StorageSource"), SOURCES, "Spec.Wasm.EntryModule.StorageSource")
    if source != "IPFS":
        return None
    cid = _str(field(module, "CID"), "Spec.Wasm.EntryModule.CID").strip()
    if not cid:
        raise BadRequest("error validating job: Spec.Wasm.EntryModule: an IPFS module needs a CID")
    return cid


def spec_from_payload(payload: dict[str, Any], ipfs_module: bytes | None = None) -> JobSpec:
    """Our JobSpec for a submit payload `{"APIVersion", "ClientID", "Spec"}` (see the module docstring);
    `ipfs_module` is the entry module already fetched when entry_module_cid() named one."""
    if not _str(field(payload, "APIVersion"), "APIVersion").strip():
        raise BadRequest("error validating job: APIVersion is empty")
    spec = _obj(field(payload, "Spec"), "Spec")
    if not spec:
        raise BadRequest("error validating job: job spec is empty")
    engine = _enum_value(field(spec, "Engine"), ENGINES, "Spec.Engine")
    if not engine:
        raise BadRequest("error validating job: invalid job engine type: Spec.Engine is missing")
    verifier = _enum_value(field(spec, "Verifier"), VERIFIERS, "Spec.Verifier")
    if not verifier:
        raise BadRequest("error validating job: invalid verifier type: Spec.Verifier is missing")
    if verifier != "Noop":
        raise _refuse(f"Verifier {verifier}", "results are not verified on this network (use Noop)")
    _publisher(spec)
    out: dict[str, Any] = {"timeout": _timeout(spec), "concurrency": _deal(spec), "network": _network(spec),
                           "resources": _resources(spec), "node_selector": _selector(spec),
                           "labels": _annotations(spec), "inputs": _inputs(spec)}
    _outputs(spec)
    if any(_truthy(v) for v in _obj(field(spec, "Language"), "Spec.Language").values()):
        raise _refuse("Spec.Language", "the Language engine does not exist here")
    if engine == "Docker":
        out |= {"engine": Engine.DOCKER, "docker": _docker(_obj(field(spec, "Docker"), "Spec.Docker"))}
    elif engine == "Wasm":
        out |= {"engine": Engine.WASM, "wasm": _wasm(_obj(field(spec, "Wasm"), "Spec.Wasm"), ipfs_module)}
    elif engine == "Noop":
        out |= {"engine": Engine.NOOP}
    else:
        raise _refuse(f"Engine {engine}", "this network runs Docker, Wasm and Noop jobs")
    try:
        return JobSpec.model_validate(out)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))[:200]
        message = str(first.get("msg", "")).removeprefix("Value error, ")
        raise BadRequest(f"error validating job: {where or 'spec'}: {message}") from None


def _truthy(value: Any) -> bool:
    return value not in (None, "", 0, False, [], {}) and not (isinstance(value, dict) and not any(
        _truthy(v) for v in value.values()))


def _publisher(spec: dict[str, Any]) -> None:
    publisher_spec = _obj(field(spec, "PublisherSpec"), "Spec.PublisherSpec")
    kind = _enum_value(field(publisher_spec, "Type"), PUBLISHERS, "Spec.PublisherSpec.Type")
    if not kind:      # clients up to 0.3.25 set only the legacy field
        kind = _enum_value(field(spec, "Publisher"), PUBLISHERS, "Spec.Publisher")
    if not kind:
        raise BadRequest("error validating job: invalid publisher type: Spec.PublisherSpec.Type is missing")
    if kind not in ("Ipfs", "Noop"):
        raise _refuse(f"Publisher {kind}", "results are published to IPFS (use Ipfs)")
    if _truthy(field(publisher_spec, "Params")):
        raise _refuse("Spec.PublisherSpec.Params", "the IPFS publisher takes none")


def _deal(spec: dict[str, Any]) -> int:
    deal = _obj(field(spec, "Deal"), "Spec.Deal")
    if not deal:
        raise BadRequest("error validating job: the job's Deal is empty")
    concurrency = _int(field(deal, "Concurrency"), "Spec.Deal.Concurrency")
    confidence = _int(field(deal, "Confidence"), "Spec.Deal.Confidence")
    min_bids = _int(field(deal, "MinBids"), "Spec.Deal.MinBids")
    if concurrency < 1:
        raise BadRequest("error validating job: concurrency must be >= 1")
    if not 0 <= confidence <= concurrency:
        raise BadRequest("error validating job: confidence must be >= 0 and <= concurrency")
    if confidence > 0:
        raise _refuse("Spec.Deal.Confidence", "results are not verified on this network (use 0)")
    if not 0 <= min_bids <= concurrency:
        raise _refuse("Spec.Deal.MinBids above Concurrency", "a job is placed on Concurrency nodes that bid")
    return concurrency


def _timeout(spec: dict[str, Any]) -> float:
    timeout = _num(field(spec, "Timeout"), "Spec.Timeout")
    return timeout if timeout > 0 else DEFAULT_JOB_TIMEOUT


def _network(spec: dict[str, Any]) -> Network:
    network = _obj(field(spec, "Network"), "Spec.Network")
    kind = _enum_value(field(network, "Type"), NETWORKS, "Spec.Network.Type") or "None"
    if _strs(field(network, "Domains"), "Spec.Network.Domains"):
        raise _refuse("Spec.Network.Domains", "jobs get no network or the full network (Type None or Full)")
    if kind == "HTTP":
        raise _refuse("Network HTTP", "jobs get no network or the full network (Type None or Full)")
    return Network.HOST if kind == "Full" else Network.NONE


def _resources(spec: dict[str, Any]) -> dict[str, Any]:
    res = _obj(field(spec, "Resources"), "Spec.Resources")
    cpu = _str(field(res, "CPU"), "Spec.Resources.CPU").strip()
    memory = _str(field(res, "Memory"), "Spec.Resources.Memory").strip()
    if _str(field(res, "Disk"), "Spec.Resources.Disk").strip():
        raise _refuse("Spec.Resources.Disk", "disk use is not limited here")
    if _str(field(res, "GPU"), "Spec.Resources.GPU").strip() not in ("", "0"):
        raise _refuse("Spec.Resources.GPU", "no node offers GPUs")
    out: dict[str, Any] = {}
    if cpu:
        out["cpu"] = cpu
    if memory:
        out["memory"] = memory
    return out


def _selector(spec: dict[str, Any]) -> str:
    parts = []
    for i, item in enumerate(_list(field(spec, "NodeSelectors"), "Spec.NodeSelectors")):
        where = f"Spec.NodeSelectors[{i}]"
        req = _obj(item, where)
        key = _str(field(req, "Key"), f"{where}.Key").strip()
        op_text = _str(field(req, "Operator"), f"{where}.Operator").strip().lower()
        values = _strs(field(req, "Values"), f"{where}.Values")
        op = SELECTOR_OPS.get(op_text)
        if op is None:
            raise _refuse(f"{where}.Operator {op_text[:20]!r}", "selectors take in, notin, =, ==, !=, exists, !")
        if not key or any(c in key + "".join(values) for c in ",()! "):
            raise BadRequest(f"error validating job: {where}: malformed key or values")
        if op in ("exists", "!exists"):
            if values:
                raise BadRequest(f"error validating job: {where}: {op_text} takes no values")
            parts.append(("!" if op == "!exists" else "") + key)
        elif op in ("=", "!="):
            if len(values) != 1:
                raise BadRequest(f"error validating job: {where}: {op_text} takes exactly one value")
            parts.append(f"{key}{op}{values[0]}")
        else:
            if not values:
                raise BadRequest(f"error validating job: {where}: {op_text} needs values")
            parts.append(f"{key} {op} ({','.join(values)})")
    return ",".join(parts)


def _annotations(spec: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for tag in _strs(field(spec, "Annotations"), "Spec.Annotations"):
        key, sep, value = tag.partition("=")
        if sep and key:
            labels[key] = value
        else:
            labels[tag] = ""
    return labels


def _input_path(where: str, item: dict[str, Any]) -> str:
    path = _str(field(item, "path"), f"{where}.path").strip()
    if not path.startswith("/"):
        raise BadRequest(f"error validating job: {where}.path must be an absolute path, not {path[:80]!r}")
    return path


def _inputs(spec: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for i, value in enumerate(_list(field(spec, "inputs"), "Spec.inputs")):
        where = f"Spec.inputs[{i}]"
        item = _obj(value, where)
        source = _enum_value(field(item, "StorageSource"), SOURCES, f"{where}.StorageSource")
        if not source:
            raise BadRequest(f"error validating job: {where}: invalid storage source type")
        if field(item, "ReadWrite") is True:
            raise _refuse(f"{where}.ReadWrite", "inputs are mounted read-only")
        path = _input_path(where, item)
        if source == "IPFS":
            cid = _str(field(item, "CID"), f"{where}.CID").strip()
            if not cid:
                raise BadRequest(f"error validating job: {where}: an IPFS input needs a CID")
            out.append({"source": f"ipfs://{cid}", "path": path})
        elif source == "URLDownload":
            url = _str(field(item, "URL"), f"{where}.URL").strip()
            if not url.lower().startswith(("http://", "https://")):
                raise BadRequest(f"error validating job: {where}.URL must be http:// or https://, not {url[:40]!r}")
            out.append({"source": url, "path": path})
        elif source == "Inline":
            media, data = dataurl.decode(_str(field(item, "URL"), f"{where}.URL"), where, MAX_INLINE_BYTES)
            if media in dataurl.GZIP_TYPES:
                raise _refuse(f"{where}: a gzipped (directory) Inline input", "give each file its own input")
            # Go mounts the data as the file at `path`; our inline inputs are a file NAME in a directory
            directory, name = posixpath.split(path.rstrip("/"))
            if not name or directory in ("", "/"):
                raise BadRequest(f"error validating job: {where}.path must name a file in a directory, such as "
                                 f"/inputs/data.txt, not {path[:80]!r}")
            out.append({"source": f"inline:{name};base64,{base64.b64encode(data).decode()}", "path": directory})
        else:
            raise _refuse(f"{where}: storage source {source}", "inputs come from IPFS, URLDownload or Inline")
    return out


def _outputs(spec: dict[str, Any]) -> None:
    for i, value in enumerate(_list(field(spec, "outputs"), "Spec.outputs")):
        item = _obj(value, f"Spec.outputs[{i}]")
        path = _str(field(item, "path"), f"Spec.outputs[{i}].path").strip().rstrip("/")
        if path != "/outputs":
            raise _refuse(f"Spec.outputs[{i}] at {path[:80]!r}", "a job's one output is /outputs")


def _docker(docker: dict[str, Any]) -> dict[str, Any]:
    image = _str(field(docker, "Image"), "Spec.Docker.Image").strip()
    if not image:
        raise BadRequest("error validating job: Spec.Docker.Image is empty")
    env: dict[str, str] = {}
    for i, pair in enumerate(_strs(field(docker, "EnvironmentVariables"), "Spec.Docker.EnvironmentVariables")):
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise BadRequest(f"error validating job: Spec.Docker.EnvironmentVariables[{i}] must be NAME=VALUE")
        env[name] = value
    out: dict[str, Any] = {"image": image, "env": env}
    entrypoint = _strs(field(docker, "Entrypoint"), "Spec.Docker.Entrypoint")
    if entrypoint:
        out["entrypoint"] = entrypoint
    if workdir := _str(field(docker, "WorkingDirectory"), "Spec.Docker.WorkingDirectory"):
        out["working_dir"] = workdir
    return out


def _wasm(wasm: dict[str, Any], ipfs_module: bytes | None) -> dict[str, Any]:
    if _list(field(wasm, "ImportModules"), "Spec.Wasm.ImportModules"):
        raise _refuse("Spec.Wasm.ImportModules", "a job is one module (link them into it)")
    module = _obj(field(wasm, "EntryModule"), "Spec.Wasm.EntryModule")
    source = _enum_value(field(module, "StorageSource"), SOURCES, "Spec.Wasm.EntryModule.StorageSource")
    if source == "Inline":
        code = dataurl.wasm_module(_str(field(module, "URL"), "Spec.Wasm.EntryModule.URL"),
                                   "Spec.Wasm.EntryModule", MAX_MODULE_BYTES)
    elif source == "IPFS" and ipfs_module is not None:
        code = ipfs_module
    elif not source:
        raise BadRequest("error validating job: Spec.Wasm.EntryModule is missing")
    else:
        raise _refuse(f"Spec.Wasm.EntryModule from {source}", "a module is given Inline or by IPFS CID")
    return {"module": WASM_INLINE_PREFIX + base64.b64encode(code).decode(),
            "entry_point": _str(field(wasm, "EntryPoint"), "Spec.Wasm.EntryPoint") or "_start",
            "parameters": _strs(field(wasm, "Parameters"), "Spec.Wasm.Parameters"),
            "env": _str_map(field(wasm, "EnvironmentVariables"), "Spec.Wasm.EnvironmentVariables")}


# -- out ------------------------------------------------------------------------------------------------------

def timestamp(t: float) -> str:
    """RFC 3339 with nanoseconds, as Go's time.Time marshals."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def compute_reference(execution: Execution) -> str:
    """Bacalhau's execution id on the compute node (`e-<uuid>`): ours prefixed."""
    return f"e-{execution.id}"


def spec_out(spec: JobSpec) -> dict[str, Any]:
    engine = {Engine.DOCKER: "Docker", Engine.WASM: "Wasm", Engine.NOOP: "Noop"}[spec.engine]
    docker: dict[str, Any] = {}
    if spec.docker is not None:
        docker = {"Image": spec.docker.image}
        if spec.docker.entrypoint or spec.docker.parameters:
            docker["Entrypoint"] = [*(spec.docker.entrypoint or []), *spec.docker.parameters]
        if spec.docker.env:
            docker["EnvironmentVariables"] = [f"{k}={v}" for k, v in spec.docker.env.items()]
        if spec.docker.working_dir:
            docker["WorkingDirectory"] = spec.docker.working_dir
    wasm: dict[str, Any] = {"EntryModule": {}}
    if spec.wasm is not None:
        wasm = {"EntryModule": {"StorageSource": "Inline", "URL": "data:application/wasm;base64,"
                                + spec.wasm.module.removeprefix(WASM_INLINE_PREFIX)},
                "EntryPoint": spec.wasm.entry_point}
        if spec.wasm.parameters:
            wasm["Parameters"] = spec.wasm.parameters
        if spec.wasm.env:
            wasm["EnvironmentVariables"] = spec.wasm.env
    resources = {"GPU": ""}
    if spec.resources.cpu:
        resources["CPU"] = f"{spec.resources.cpu:g}"
    if spec.resources.memory:
        resources["Memory"] = str(spec.resources.memory)
    out: dict[str, Any] = {
        "Engine": engine, "Verifier": "Noop", "Publisher": "Ipfs", "PublisherSpec": {"Type": "Ipfs"},
        "Docker": docker, "Language": {"JobContext": {}}, "Wasm": wasm, "Resources": resources,
        "Network": {"Type": "Full" if spec.network == Network.HOST else "None"},
        "Timeout": int(spec.timeout) if spec.timeout == int(spec.timeout) else spec.timeout,
    }
    if spec.labels:
        out["Annotations"] = [f"{k}={v}" if v else k for k, v in spec.labels.items()]
    if spec.node_selector:
        out["NodeSelectors"] = _selector_out(spec.node_selector)
    if spec.inputs:
        out["inputs"] = [_input_out(i.source, i.path) for i in spec.inputs]
    out["outputs"] = OUTPUTS
    out["Deal"] = {"Concurrency": spec.concurrency}
    return out


def _selector_out(text: str) -> list[dict[str, Any]]:
    from bacalhau.models.selector import parse_selector

    ops = {"=": "=", "!=": "!=", "in": "in", "notin": "notin", "exists": "exists", "!exists": "!"}
    return [{"Key": r.key, "Operator": ops[r.op], "Values": sorted(r.values)} for r in parse_selector(text)]


def _input_out(source: str, path: str) -> dict[str, Any]:
    if source.startswith("ipfs://"):
        return {"StorageSource": "IPFS", "CID": source.removeprefix("ipfs://"), "path": path}
    if source.startswith("inline:"):
        name, _, data = source.removeprefix("inline:").partition(";base64,")
        return {"StorageSource": "Inline", "URL": "data:application/octet-stream;base64," + data,
                "path": posixpath.join(path, name)}
    return {"StorageSource": "URLDownload", "URL": source, "path": path}


def job_out(job: Job, requester_id: str) -> dict[str, Any]:
    return {"APIVersion": "V1beta1",
            "Metadata": {"ID": job.id, "CreatedAt": timestamp(job.created_at), "ClientID": job.client_id,
                         "Requester": {"RequesterNodeID": requester_id}},
            "Spec": spec_out(job.spec)}


def _versions(job: Job) -> dict[str, int]:
    """Go counts each job's and execution's updates; ours: the state events of each (at least 1)."""
    counts: dict[str, int] = {}
    for event in job.events:
        counts[event.subject] = counts.get(event.subject, 0) + 1
    return counts


def execution_out(execution: Execution, version: int = 1) -> dict[str, Any]:
    ran = execution.result is not None
    out: dict[str, Any] = {
        "JobID": execution.job_id, "NodeId": execution.node_id, "ComputeReference": compute_reference(execution),
        "State": EXECUTION_STATES[execution.state],
        "AcceptedAskForBid": execution.state not in (_E.NEW, _E.ASKED_FOR_BID, _E.BID_REJECTED),
        "VerificationResult": {"Complete": False, "Result": False}, "PublishedResults": {}, "RunOutput": None,
        "Version": max(version, 1), "CreateTime": timestamp(execution.created_at),
        "UpdateTime": timestamp(execution.updated_at)}
    if execution.reason:
        out["Status"] = execution.reason
    if ran and execution.state in (_E.PUBLISHING, _E.COMPLETED):
        # no verifier here: what ran and was accepted is verified, as Go's Noop verifier says {true, true}
        out["VerificationResult"] = {"Complete": True, "Result": True}
    if execution.result_ref.startswith("ipfs://"):
        cid = execution.result_ref.removeprefix("ipfs://")
        out["PublishedResults"] = {"StorageSource": "IPFS", "Name": execution.result_ref, "CID": cid}
    if execution.result is not None:
        r = execution.result
        # Go's RunOutput holds the outputs themselves, cut to a size: ours, their tails (all of them: `get`)
        out["RunOutput"] = {"stdout": r.stdout_tail, "stdouttruncated": not r.tail_is_whole("stdout"),
                            "stderr": r.stderr_tail, "stderrtruncated": not r.tail_is_whole("stderr"),
                            "exitCode": r.exit_code, "runnerError": r.error}
    return out


def job_state_out(job: Job) -> dict[str, Any]:
    versions = _versions(job)
    state = JOB_STATES[job.state]
    if job.state == JobState.PENDING and job.executions:
        state = "InProgress"     # waiting for another attempt
    return {"JobID": job.id,
            "Executions": [execution_out(e, versions.get(e.id, 1)) for e in job.executions] or None,
            "State": state, "Version": max(versions.get(job.id, 1), 1), "CreateTime": timestamp(job.created_at),
            "UpdateTime": timestamp(job.updated_at), "TimeoutAt": ZERO_TIME}


def results_out(job: Job) -> list[dict[str, Any]]:
    """Go's GetResults: the executions that completed and verified, each with its published result."""
    return [{"NodeID": e.node_id, "Data": execution_out(e)["PublishedResults"]} for e in job.executions
            if e.state == _E.COMPLETED and e.result is not None and e.result_ref.startswith("ipfs://")]


def _job_state_name(state: str) -> str:
    try:
        return JOB_STATES[JobState(state)]
    except ValueError:
        return state


def _execution_state_name(state: str) -> str:
    try:
        return EXECUTION_STATES[ExecutionState(state)]
    except ValueError:
        return state


def history_out(job: Job, *, since: float = 0, exclude_job_level: bool = False,
                exclude_execution_level: bool = False) -> list[dict[str, Any]]:
    """JobHistory entries from our events, each with the state it left (Previous omitted for New, as Go's
    omitempty drops the zero state)."""
    execution_ids = {e.id: e for e in job.executions}
    previous: dict[str, str] = {}
    versions: dict[str, int] = {}
    out = []
    for event in job.events:
        versions[event.subject] = versions.get(event.subject, 0) + 1
        job_level = event.kind == "job"
        name = _job_state_name(event.state) if job_level else _execution_state_name(event.state)
        before = previous.get(event.subject, "New")
        previous[event.subject] = name
        if event.time < since or (job_level and exclude_job_level) or (not job_level and exclude_execution_level):
            continue
        change: dict[str, str] = {"New": name}
        if before != "New":
            change["Previous"] = before
        item: dict[str, Any] = {"Type": "JobLevel" if job_level else "ExecutionLevel", "JobID": job.id}
        if not job_level:
            execution = execution_ids.get(event.subject)
            item["NodeID"] = event.node_id or (execution.node_id if execution else "")
            item["ComputeReference"] = compute_reference(execution) if execution else f"e-{event.subject}"
            item["ExecutionState"] = change
        else:
            item["JobState"] = change
        item["NewVersion"] = versions[event.subject]
        if event.reason:
            item["Comment"] = event.reason
        item["Time"] = timestamp(event.time)
        out.append(item)
    return out
