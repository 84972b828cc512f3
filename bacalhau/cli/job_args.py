"""What `docker run` and `wasm run` make of their arguments (K=V pairs, -i inputs, the Docker job's spec),
without click: the click commands and the click-free `docker run` (fast_run.py) build the same spec here. A
wrong argument is an ArgError naming its flag; the click commands raise it as click's BadParameter."""

from __future__ import annotations

MAX_INLINE_BYTES = 1024 * 1024


class ArgError(ValueError):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def pairs(values: tuple[str, ...] | list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        for part in item.split(",") if what == "label" else [item]:
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise ArgError(f"{part!r} is not KEY=VALUE", f"--{what}")
            out[key.strip()] = value
    return out


def parse_inputs(values: tuple[str, ...] | list[str]) -> list[dict[str, str]]:
    """-i SOURCE[:/PATH]: a URL (https://, ipfs://) or a small local file, uploaded with the job."""
    inputs = []
    for value in values:
        source, path = value, "/inputs"
        if "://" in value:
            scheme, rest = value.split("://", 1)
            if ":/" in rest:
                rest, path = rest.rsplit(":/", 1)
                path = "/" + path
            source = f"{scheme}://{rest}"
        else:
            from pathlib import Path

            local, sep, target = value.rpartition(":/")
            if sep and local:
                source, path = local, "/" + target
            file = Path(source)
            if not file.is_file():
                raise ArgError(f"{source!r} is neither a URL nor a local file", "-i")
            if file.stat().st_size > MAX_INLINE_BYTES:
                raise ArgError(f"{source} is over {MAX_INLINE_BYTES} bytes: serve it over https:// and pass the URL",
                               "-i")
            from bacalhau.storage.inline import encode_inline

            source = encode_inline(file.name, file.read_bytes())
        inputs.append({"source": source, "path": path})
    return inputs


def docker_spec(image: str, command: tuple[str, ...] | list[str], *, env: tuple[str, ...] | list[str] = (),
                inputs: tuple[str, ...] | list[str] = (), workdir: str | None = None, entrypoint: str | None = None,
                cpu: str | None = None, memory: str | None = None, timeout: float | None = None,
                labels: tuple[str, ...] | list[str] = (), selector: str = "", concurrency: int = 1,
                network: str = "none") -> dict[str, object]:
    """The spec of `bacalhau docker run` (its flags' defaults are the keywords')."""
    spec: dict[str, object] = {
        "engine": "docker",
        "docker": {
            "image": image,
            "parameters": list(command),
            "env": pairs(env, "env"),
            "working_dir": workdir,
            "entrypoint": entrypoint.split() if entrypoint else None,
        },
        "resources": {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None},
        "network": network,
        "labels": pairs(labels, "label"),
        "node_selector": selector,
        "concurrency": concurrency,
        "inputs": parse_inputs(inputs),
    }
    if timeout is not None:
        spec["timeout"] = timeout
    return spec
