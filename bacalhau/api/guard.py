"""ASGI middleware that keeps web pages out of the API.

A loopback client needs no token (the official Bacalhau SDK sends none), so a page open in a browser on the
node's machine could otherwise reach the API: by a cross-origin request (a form POST needs no CORS
preflight), or by DNS rebinding (a name of the attacker's that turns into 127.0.0.1, after which the page
reads the answers as same-origin). So every request and websocket must name this API in `Host`, must not
come from another origin (`Origin` absent, as CLI and SDK clients send it, or this API's own), and a body
sent with POST must be JSON (`application/json` is not a CORS "simple" type: a browser asks first with a
preflight, which this API never answers positively). Uploads of raw bytes take `application/octet-stream`,
which needs a preflight too.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
JSON = "application/json"
RAW_UPLOAD_TYPES = frozenset({"application/octet-stream", "application/x-tar"})
RAW_UPLOAD_PATHS = frozenset({"/api/v1/ipfs/add"})
WS_FORBIDDEN = 4403


def split_host(value: str) -> tuple[str, int | None]:
    """`name:port`, `[v6]:port` or a bare name -> (lower-case name, port or None); ("", None) if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return "", None
        port_text = rest[1:]
    else:
        name, _, port_text = value.partition(":") if value.count(":") <= 1 else (value, "", "")
    if port_text:
        if not port_text.isdigit():
            return "", None
        return name, int(port_text)
    return name, None


def is_loopback(client: str) -> bool:
    return client.startswith("127.") or client in ("::1", "localhost")


class RequestGuard:
    """Host, Origin and Content-Type checks (see the module docstring); `api_host` is the `--host` the API
    listens on, whose name is accepted in `Host` too."""

    def __init__(self, app: Any, api_host: str, extra_hosts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.wildcard = api_host in WILDCARD_HOSTS
        self.names = LOOPBACK_NAMES | {h.strip("[]").lower() for h in (api_host, *extra_hosts)} - WILDCARD_HOSTS

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal = self._refusal(scope)
            if refusal is not None:
                status, message, code = refusal
                if scope["type"] == "websocket":
                    # closing before accepting: the server answers the handshake with 403
                    await send({"type": "websocket.close", "code": WS_FORBIDDEN, "reason": message})
                    return
                await JSONResponse({"error": message, "code": code}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: dict[str, Any]) -> tuple[int, str, str] | None:
        headers: dict[bytes, bytes] = {}
        for key, value in scope.get("headers") or []:
            if key in headers and key in (b"host", b"origin", b"content-type"):
                return 400, f"the request has two {key.decode()} headers", "bad_request"
            headers[key] = value
        host = headers.get(b"host", b"").decode("latin-1")
        if not self._host_ok(host, scope):
            return 403, f"this API does not answer to Host {host!r}: use 127.0.0.1 or the node's address", \
                "forbidden_host"
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1").strip().lower()
            scheme, sep, rest = text.partition("://")
            if not sep or scheme not in ("http", "https") or rest != host.strip().lower():
                return 403, "requests from web pages of other origins are refused", "forbidden_origin"
        if scope["type"] == "http" and scope.get("method") in ("POST", "PUT", "PATCH", "DELETE"):
            media = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            allowed = {JSON} | (RAW_UPLOAD_TYPES if scope.get("path") in RAW_UPLOAD_PATHS else set())
            if media not in allowed:
                want = " or ".join(sorted(allowed))
                return 415, f"the request body must be sent as {want}, not {media or 'no content type'}", \
                    "unsupported_media_type"
        return None

    def _host_ok(self, host: str, scope: dict[str, Any]) -> bool:
        name, port = split_host(host)
        if not name:
            return False
        server = scope.get("server")
        if server is not None and (80 if port is None else port) != server[1]:
            return False
        if name in self.names:
            return True
        # Listening on all interfaces, remote clients name the machine however they reach it; they carry the
        # token (TokenGuard), which a rebinding page cannot have. A loopback client must name loopback.
        client = (scope.get("client") or ("",))[0] or ""
        return self.wildcard and not is_loopback(client)
