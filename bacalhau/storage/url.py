"""Inputs fetched over HTTP(S) by the compute node, which must not become a way into what the node can reach.

- Every connection goes to an address that was checked: the host is resolved once, each address is checked
  (loopback, link-local, private, shared, multicast, unspecified and reserved ranges refused, IPv4-mapped IPv6
  too), and the socket is opened to that checked address: no second lookup a rebinding DNS server could
  answer differently. TLS still verifies the URL's host name. An operator allows private addresses with
  `bacalhau serve --allow-private-urls`.
- Redirects are followed by hand, http(s) only, at most MAX_REDIRECTS, each new host checked as above.
- Bytes are counted as they stream, not taken from Content-Length; past the cap the download is cut.
- One deadline for the whole download, not per read; a cancelled job cancels it at once (trio all through,
  httpcore on trio: no thread left reading).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import httpcore
import trio

from bacalhau.config import DEFAULT_URL_MAX_BYTES, DEFAULT_URL_TIMEOUT
from bacalhau.errors import ExecutorError
from bacalhau.models import StorageSpec

MAX_REDIRECTS = 5


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


class RefusedAddress(ExecutorError):
    pass


def is_public(ip: Address) -> bool:
    """Whether an address is one a URL input may reach without --allow-private-urls."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None or ip.teredo is not None:
            return False          # tunnels to an IPv4 address the check would not see
    return ip.is_global and not (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_multicast
                                 or ip.is_unspecified or ip.is_reserved)


async def resolve(host: str, port: int) -> list[str]:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class UrlPolicy:
    allow_private: bool = False
    max_bytes: int = DEFAULT_URL_MAX_BYTES
    timeout: float = DEFAULT_URL_TIMEOUT
    resolve: Resolver = resolve                               # a hook for tests: names without a DNS server
    allowed: Callable[[Address], bool] = field(default=is_public)

    def permits(self, ip: Address) -> bool:
        return self.allow_private or self.allowed(ip)


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own trio backend, connecting only to addresses the policy permits, the ones it checked."""

    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.TrioBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            candidates = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            try:
                candidates = [ipaddress.ip_address(a.split("%")[0]) for a in await self._policy.resolve(host, port)]
            except OSError as exc:
                raise ExecutorError(f"{host} does not resolve: {exc.strerror or exc}") from None
        permitted = [ip for ip in candidates if self._policy.permits(ip)]
        if not permitted:
            shown = ", ".join(map(str, candidates)) or "nothing"
            named = f"{host} is" if shown == host else f"{host} is {shown},"
            raise RefusedAddress(f"{named} an address URL inputs may not reach (a node's operator "
                                 "allows private addresses with --allow-private-urls)")
        return await self._inner.connect_tcp(str(permitted[0]), port, timeout=timeout, local_address=local_address,
                                             socket_options=socket_options)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise ExecutorError("URL inputs do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


def file_name(url: str) -> str:
    """The last path segment, decoded, or `download` where that is no plain name."""
    name = unquote(PurePosixPath(urlsplit(url).path).name)
    if name in ("", ".", "..") or "/" in name or "\0" in name or len(name.encode()) > 255:
        return "download"
    return name


async def download(url: str, target: Path, policy: UrlPolicy) -> int:
    """Fetch `url` into the new file `target`; the bytes written. ExecutorError with the reason."""
    current = url
    async with httpcore.AsyncConnectionPool(network_backend=_CheckedBackend(policy), retries=0) as pool:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(current)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ExecutorError(f"redirected to {current[:100]!r}: only http and https URLs are followed")
            async with pool.stream("GET", current, headers=[(b"User-Agent", b"bacalhau-py")]) as resp:
                if resp.status in (301, 302, 303, 307, 308):
                    location = next((v for k, v in resp.headers if k.lower() == b"location"), None)
                    if not location:
                        raise ExecutorError(f"HTTP {resp.status} without a Location")
                    current = urljoin(current, location.decode("latin-1"))
                    continue
                if resp.status >= 400:
                    reason = resp.extensions.get("reason_phrase", b"").decode("latin-1", "replace")
                    raise ExecutorError(f"HTTP {resp.status} {reason}".rstrip())
                length = next((v for k, v in resp.headers if k.lower() == b"content-length"), None)
                if length is not None and length.isdigit() and int(length) > policy.max_bytes:
                    raise ExecutorError(f"it is {int(length)} bytes, over the {policy.max_bytes}-byte limit")
                return await _save(resp.aiter_stream(), target, policy.max_bytes)
    raise ExecutorError(f"more than {MAX_REDIRECTS} redirects")


async def _save(chunks: Any, target: Path, limit: int) -> int:
    fd = await trio.to_thread.run_sync(os.open, target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                       | os.O_CLOEXEC, 0o644)
    received = 0
    async with await trio.open_file(fd, "wb") as out:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:       # counted here: a server may send more than it announced
                raise ExecutorError(f"it sent more than the {limit}-byte limit")
            await out.write(chunk)
    return received


class UrlStorage:
    schemes = ("http", "https")

    def __init__(self, policy: UrlPolicy | None = None) -> None:
        self.policy = policy or UrlPolicy()

    async def prepare(self, spec: StorageSpec, dest: Path) -> None:
        target = dest / file_name(spec.source)
        shown = spec.source[:200]
        try:
            with trio.fail_after(self.policy.timeout):
                await download(spec.source, target, self.policy)
        except trio.TooSlowError:
            await _remove(target)
            raise ExecutorError(f"input {shown} could not be fetched: not done within "
                                f"{self.policy.timeout:g}s") from None
        except ExecutorError as exc:
            await _remove(target)
            raise ExecutorError(f"input {shown} could not be fetched: {exc}") from None
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol,
                OSError, ValueError) as exc:
            await _remove(target)
            raise ExecutorError(f"input {shown} could not be fetched: {type(exc).__name__}: {exc}") from None
        except BaseException:
            with trio.CancelScope(shield=True):
                await _remove(target)
            raise


async def _remove(path: Path) -> None:
    await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
