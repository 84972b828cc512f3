"""`bacalhau list`, `bacalhau describe` and `bacalhau docker run` (fast_run.py) in their plain forms, run
without importing click: a client command's start was mostly click's imports (inspect, uuid, datetime: ~17 of
list's 61 ms) and describe's PyYAML (~15 ms more). A form read here prints exactly what the click command prints
(both call views.py, or waiting.py); any other form (`--help`, an option or value this reader does not take, a
`BACALHAU_LIST_*` setting, a typo) is left to click, which parses it or says what is wrong."""

from __future__ import annotations

import os

from bacalhau.cli.output import FORMATS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_GLOBAL = {"--api-host": "api_host", "--api-port": "api_port"}
_OPTIONS = {
    "list": {"-n": "number", "--number": "number", "--all": "all", "--wide": "wide", "-o": "output",
             "--output": "output"},
    "describe": {"-o": "output", "--output": "output"},
}
_FLAGS = {"all", "wide"}


def run_plain(argv: list[str]) -> bool:
    """Run `argv` if it is a plain form of list or describe; False, having done nothing, if not."""
    plan = parse(argv, os.environ)
    if plan is None:
        return False
    plan()
    return True


def parse(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> Callable[[], None] | None:
    """What running `argv` does, or None where click is to read it."""
    found: dict[str, str] = {}
    args = iter(argv)
    verb = None
    for arg in args:
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in _GLOBAL and name not in found:
            if not eq:
                value = next(args, "")
            found[_GLOBAL[name]] = value
            continue
        verb = arg
        break
    if verb == "docker":
        api = _api(found, environ)
        if api is None:
            return None
        from bacalhau.cli.fast_run import parse_docker_run

        return parse_docker_run(list(args), *api, environ)
    if verb not in _OPTIONS or any(k.startswith(f"BACALHAU_{verb.upper()}_") and v for k, v in environ.items()):
        return None
    options = _OPTIONS[verb]
    positional: list[str] = []
    for arg in args:
        if not arg.startswith("-"):
            positional.append(arg)
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg[:2], "", arg[2:])
        key = options.get(name)
        if key is None or key in found:
            return None
        if key in _FLAGS:
            if eq or value:
                return None
            value = "1"
        elif not eq and not value:
            value = next(args, "")
        found[key] = value
    api = _api(found, environ)
    number = found.get("number", "10")
    output = found.get("output", "table" if verb == "list" else "yaml")
    if api is None or not number.isdigit() or int(number) < 1 or output not in FORMATS \
            or len(positional) != (1 if verb == "describe" else 0):
        return None
    host, port = api

    def run() -> None:
        from bacalhau.cli import views
        from bacalhau.cli.client import ApiClient, resolve_api

        client = ApiClient(*resolve_api(host, port))
        if verb == "list":
            views.list_jobs(client, int(number), "all" in found, "wide" in found, output)
        else:
            views.describe(client, positional[0], output)

    return run


def _api(found: dict[str, str], environ: dict[str, str] | os._Environ[str]) -> tuple[str | None, int | None] | None:
    """The API's host and port as the flags and the environment give them (None where neither does); None
    where click is to read them (a port that is not a number, an empty --api-host)."""
    host = found.get("api_host") or environ.get("BACALHAU_API_HOST") or None
    port_text = found.get("api_port") or environ.get("BACALHAU_API_PORT") or None
    if (port_text is not None and not port_text.isdigit()) or "api_host" in found and not found["api_host"]:
        return None
    return host, int(port_text) if port_text is not None else None
