"""`bacalhau docker run` without click: its start was the larger part of a short job's overhead (click's
imports ~26 ms of CPU, of ~75 ms for the whole client process). The forms read here are those the click
command takes (docker_run.py), option for option, building the same spec (job_args.py) and waiting the same way
(waiting.py); anything else is left to click, which runs it or says what is wrong: `--help`, -f (the logs
follower imports click all the same), an option given twice that takes one value, a value that starts with "-",
one click would convert otherwise or refuse (--timeout, --concurrency, --network, a K=V, an -i file), a
`BACALHAU_DOCKER_RUN_*` setting, a typo."""

from __future__ import annotations

import os
import sys

from bacalhau.cli.job_args import ArgError, docker_spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# option -> the docker_spec keyword it fills; the three repeatable ones collect a list
_VALUED = {"-e": "env", "--env": "env", "-i": "inputs", "--input": "inputs", "-l": "labels", "--labels": "labels",
           "-w": "workdir", "--workdir": "workdir", "--entrypoint": "entrypoint", "--cpu": "cpu",
           "--memory": "memory", "--timeout": "timeout", "-s": "selector", "--selector": "selector",
           "--concurrency": "concurrency", "--network": "network"}
_REPEATABLE = ("env", "inputs", "labels")
_FLAGS = {"--id-only": ("id_only", True), "--wait": ("wait", True), "--no-wait": ("wait", False)}
_NETWORKS = ("none", "host")


def parse_docker_run(argv: list[str], host: str | None, port: int | None,
                     environ: dict[str, str] | os._Environ[str]) -> Callable[[], None] | None:
    """What `docker <argv>` does, or None where click is to read it."""
    if argv[:1] != ["run"] or any(k.startswith("BACALHAU_DOCKER_RUN_") and v for k, v in environ.items()):
        return None
    args = iter(argv[1:])
    positional: list[str] = []
    repeated: dict[str, list[str]] = {key: [] for key in _REPEATABLE}
    single: dict[str, str] = {}
    flags: dict[str, bool] = {}
    for arg in args:
        if arg == "--":
            positional.extend(args)
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg[:2], "", arg[2:])
        if name in _FLAGS:
            flag, on = _FLAGS[name]
            if eq or flag in flags:
                return None
            flags[flag] = on
            continue
        key = _VALUED.get(name)
        if key is None or key in single:
            return None
        if not eq and not value:
            value = next(args, "-")
            if value.startswith("-"):
                return None     # click would take it as the value (or miss one): rare enough to leave to it
        if key in repeated:
            repeated[key].append(value)
        else:
            single[key] = value
    if not positional or single.get("network", "none") not in _NETWORKS:
        return None
    try:
        timeout = float(single["timeout"]) if "timeout" in single else None
        concurrency = int(single.get("concurrency", "1"))
    except ValueError:
        return None
    if concurrency < 1:
        return None
    try:
        spec = docker_spec(positional[0], positional[1:], env=repeated["env"], inputs=repeated["inputs"],
                           workdir=single.get("workdir"), entrypoint=single.get("entrypoint"), cpu=single.get("cpu"),
                           memory=single.get("memory"), timeout=timeout, labels=repeated["labels"],
                           selector=single.get("selector", ""), concurrency=concurrency,
                           network=single.get("network", "none"))
    except ArgError:
        return None     # click says what is wrong, in its words

    def run() -> None:
        from bacalhau.cli.client import ApiClient, resolve_api
        from bacalhau.cli.waiting import submit_and_report

        try:
            submit_and_report(ApiClient(*resolve_api(host, port)), spec, id_only=flags.get("id_only", False),
                              wait=flags.get("wait", True), follow=False)
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)      # as click does: the blank line closes the terminal's ^C
            print("Aborted.", file=sys.stderr)
            sys.exit(130)

    return run
