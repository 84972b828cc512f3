"""The API client of the CLI: a few lines of HTTP/1.1 over a socket for JSON requests, the standard library's
http.client for streams, so a client command starts fast (nor typing, pathlib or urllib.parse imported for
list and describe: ~10 ms of a 50 ms budget on this machine)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading

from bacalhau.errors import ApiError, BacalhauError, DaemonNotRunning, NotFoundError, UserError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1234
READ_CHUNK = 256 * 1024
MAX_JSON_BODY = 4 * 1024 * 1024     # api/server.py MAX_BODY (not imported: a client command starts fast)
MAX_LINE = 64 * 1024                # of an answer's status or header line
MAX_HEADERS = 100
CLUSTER_CACHE = "cluster_ids.json"  # in the state dir: API address -> the cluster id it gave, for signed submits
MAX_CLUSTER_CACHE = 16 * 1024       # bytes read of it at most (a bigger one is not ours: it is ignored)
MAX_CLUSTER_ENTRIES = 32            # addresses kept in it
_WRONG_CLUSTER = "signed for another cluster"   # signing.verify's refusal: the cached id is asked for again
_HEX = frozenset("0123456789abcdef")


def _state_dir() -> Path:
    from pathlib import Path

    return Path(_state_path())


def _state_path() -> str:
    return os.environ.get("BACALHAU_DIR") or os.path.join(os.path.expanduser("~"), ".bacalhau")


def _config_file() -> str:
    return os.path.join(_state_path(), "config.yaml")


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def quote(text: str) -> str:
    """urllib.parse.quote, imported only for text it would change (a job id is hex and dashes)."""
    if _SAFE.issuperset(text):
        return text
    from urllib.parse import quote as _quote

    return _quote(text)


def urlencode(query: dict[str, Any]) -> str:
    pairs = [(str(k), str(v)) for k, v in query.items()]
    if all(_SAFE.issuperset(k) and _SAFE.issuperset(v) for k, v in pairs):
        return "&".join(f"{k}={v}" for k, v in pairs)
    from urllib.parse import urlencode as _urlencode

    return _urlencode(pairs)


def resolve_api(host: str | None, port: int | None) -> tuple[str, int]:
    """A flag beats the environment (click fills both in), which beats the config file, then the default."""
    if host is None or port is None:
        path = _config_file()
        conf: dict[str, Any] = {}
        if os.path.exists(path):
            import yaml

            try:
                with open(path) as file:
                    conf = yaml.safe_load(file.read()) or {}
            except yaml.YAMLError as exc:
                raise UserError(f"cannot read {path}: {exc}") from None
        host = host or conf.get("api_host") or DEFAULT_HOST
        port = port or conf.get("api_port") or DEFAULT_PORT
    return str(host), int(port)


class ApiClient:
    def __init__(self, host: str, port: int, timeout: float = 90.0, token: str | None = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.token = token if token is not None else os.environ.get("BACALHAU_API_TOKEN", "")
        self._cluster_id: str | None = None
        self._rsa_key: Any = None
        self._kept = threading.local()      # one kept-alive connection a thread (a benchmark submits from many)

    def close(self) -> None:
        """Close this thread's kept-alive connection (a process that exits needs not)."""
        conn: _Connection | None = getattr(self._kept, "conn", None)
        if conn is not None:
            conn.close()

    def _headers(self, body: Any, raw: Any, extra: dict[str, str] | None) -> tuple[dict[str, str], Any]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if raw is not None:
            headers = {"Content-Type": "application/octet-stream"}
        headers |= extra or {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        if isinstance(data, bytes) and len(data) > MAX_JSON_BODY:
            raise UserError(f"the request is {len(data)} bytes, over the API's {MAX_JSON_BODY}: make inline inputs "
                            "smaller (add big ones with `bacalhau ipfs add`)")
        return headers, data

    def _unreachable(self, exc: OSError) -> BacalhauError:
        if isinstance(exc, TimeoutError):
            return ApiError(f"the bacalhau API at {self.host}:{self.port} did not answer in time")
        return DaemonNotRunning(
            f"cannot reach the bacalhau API at {self.host}:{self.port} ({exc.__class__.__name__}):"
            " is `bacalhau serve` running? Point at it with --api-host/--api-port or"
            " BACALHAU_API_HOST/BACALHAU_API_PORT."
        )

    def _open(self, method: str, path: str, body: Any = None, raw: Any = None,
              extra_headers: dict[str, str] | None = None) -> Any:
        """A response to read as a stream (an http.client.HTTPResponse on a connection of its own)."""
        import http.client

        headers, data = self._headers(body, raw, extra_headers)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            try:
                conn.request(method, path, body=data, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                pass   # the server answered before reading all the body (a 413, 415, 403): read its answer
            resp = conn.getresponse()
        except (ConnectionRefusedError, socket.gaierror, OSError) as exc:
            conn.close()
            raise self._unreachable(exc) from None
        if resp.status >= 400:
            _raise_for(resp.status, resp.reason, resp.read())
        return resp

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                **query: Any) -> Any:
        """A JSON request on this thread's kept-alive connection; its JSON answer."""
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        return json.loads(self._exchange(method, path, body, headers))

    def _exchange(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> bytes:
        """A request on this thread's kept-alive connection; its answer's body, read whole."""
        head, data = self._headers(body, None, headers)
        conn: _Connection | None = getattr(self._kept, "conn", None)
        if conn is None:
            conn = self._kept.conn = _Connection(self.host, self.port, self.timeout)
        retried = False
        while True:
            reused = conn.sock is not None
            try:
                status, reason, answer = conn.exchange(method, path, head, data)
            except (ConnectionRefusedError, socket.gaierror, OSError) as exc:
                conn.close()
                if reused and not retried and isinstance(exc, BrokenPipeError | ConnectionResetError):
                    # a kept-alive connection the server closed while it was idle (no answer came on it): once
                    # more on a new one
                    retried = True
                    continue
                raise self._unreachable(exc) from None
            break
        if status >= 400:
            _raise_for(status, reason, answer)
        return answer

    def stream(self, path: str) -> Iterator[bytes]:
        return self.sized_stream(path)[1]

    def sized_stream(self, path: str) -> tuple[int | None, Iterator[bytes]]:
        """The response's length when the server gave one, and its body in chunks."""
        resp = self._open("GET", path)
        length = resp.getheader("Content-Length")

        def chunks() -> Iterator[bytes]:
            try:
                while chunk := resp.read(READ_CHUNK):
                    yield chunk
            finally:
                resp.close()

        return (int(length) if length and length.isdigit() else None), chunks()

    # -- the API, one method per route ----------------------------------------------------------------------
    # (a JSON answer is Any to mypy: each method states the shape api/server.py documents, hence the ignores)

    def version(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/version")  # type: ignore[no-any-return]

    def node_id(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/id")  # type: ignore[no-any-return]

    def nodes(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/nodes")  # type: ignore[no-any-return]

    def _key(self) -> Any:
        """The client's RSA key, `user_id.pem` in its state dir (signing.py), made on first use."""
        if self._rsa_key is None:
            from bacalhau.signing import load_client_key

            self._rsa_key = load_client_key(_state_path())
        return self._rsa_key

    def _owner_key(self, owner: str) -> Any | None:
        """The key of ours whose client id is `owner`: user_id.pem, or the legacy client.key for a job it
        submitted (a state dir of the old layout keeps the jobs it owns); None if neither is."""
        from bacalhau.signing import client_id_of, load_legacy_key

        if owner and client_id_of(self._key()) == owner:
            return self._key()
        legacy = load_legacy_key(_state_dir())
        if legacy is not None and client_id_of(legacy) == owner:
            return legacy
        return None

    def _sign(self, action: Any, key: Any = None, cluster_id: str | None = None) -> dict[str, Any]:
        """`action` signed by `key` or user_id.pem for `cluster_id`, or the cluster this API serves (asked once
        per client)."""
        from bacalhau.signing import sign

        return sign(key if key is not None else self._key(), action, cluster_id or self._confirmed_cluster_id())

    def _confirmed_cluster_id(self) -> str:
        """The cluster id this API gave (asked once per client; a local: threads share a client)."""
        cluster_id = self._cluster_id
        if cluster_id is None:
            cluster_id = self._cluster_id = str(self.node_id().get("cluster_id", ""))
        return cluster_id

    def submit(self, spec: dict[str, Any]) -> str:
        """The new job's id. Signed for the cluster id this API gave the last submit that it took (kept in the
        state dir by address: asking for it was one more request on every `docker run`'s way); where the API
        refuses that id as another cluster's, it is asked for once and the submit signed again. A wrong cached
        id (stale or forged) only makes this API refuse the first signature: no submit is signed for an id the
        API did not give but one sent to this API."""
        address = f"{self.host}:{self.port}"
        # locals only until a submit is taken: threads share a client (a benchmark's 16 did, and one thread
        # resetting the shared id between another's look and its signature had it sign for cluster None)
        confirmed = self._cluster_id
        cached = _cached_cluster_id(address) if confirmed is None else None
        cluster_id = confirmed or cached
        try:
            job_id = self._submit_signed(spec, cluster_id or self._confirmed_cluster_id())
        except UserError as exc:
            if cached is None or _WRONG_CLUSTER not in str(exc):
                raise
            cached = None                # refused: asked of the API, which is then the one trusted
            cluster_id = self._confirmed_cluster_id()
            job_id = self._submit_signed(spec, cluster_id)
        if confirmed is None:
            if cached is not None:
                self._cluster_id = cached    # taken by the API: as good as asked
            else:
                _keep_cluster_id(address, cluster_id or self._confirmed_cluster_id())
        return job_id

    def _submit_signed(self, spec: dict[str, Any], cluster_id: str) -> str:
        body = {"spec": spec, **self._sign({"submit": spec}, cluster_id=cluster_id)}
        return self.request("POST", "/api/v1/jobs", body)["id"]  # type: ignore[no-any-return]

    def list_jobs(self, limit: int) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/jobs", limit=limit)  # type: ignore[no-any-return]

    def job(self, job_id: str, *, as_owner: bool = False) -> dict[str, Any]:
        """The job; its env values in clear `as_owner` when we own it (the API shows them to the submitter
        alone, on a signed request). A job without env values needs no signature: none is made."""
        job: dict[str, Any] = self.request("GET", f"/api/v1/jobs/{quote(job_id)}")
        if not as_owner or not _has_env(job):
            return job
        key = self._owner_key(str(job.get("client_id") or ""))
        if key is None:
            return job   # not ours: what anyone sees
        proof = json.dumps(self._sign({"describe": job["id"]}, key))
        return self.request("GET", f"/api/v1/jobs/{quote(job['id'])}",  # type: ignore[no-any-return]
                            headers={"X-Bacalhau-Signed": proof})

    def wait(self, job_id: str, since: float, timeout: float = 30.0) -> dict[str, Any]:
        return self.request(  # type: ignore[no-any-return]
            "GET", f"/api/v1/jobs/{quote(job_id)}/wait", timeout=timeout, since=repr(since)
        )

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.job(job_id)   # the signature covers the full id, whatever prefix was typed
        full_id = job["id"]
        body = self._sign({"cancel": full_id}, self._owner_key(str(job.get("client_id") or "")))
        return self.request("POST", f"/api/v1/jobs/{quote(full_id)}/cancel", body)  # type: ignore[no-any-return]

    def upload(self, path: str, file: Any) -> Any:
        with self._open("POST", path, raw=file) as resp:
            return json.loads(resp.read())

    def result(self, job_id: str, item: str) -> Iterator[bytes]:
        return self.stream(f"/api/v1/jobs/{quote(job_id)}/results/{item}")

    def small_result(self, job_id: str, item: str) -> bytes:
        """A result item known to be small, read whole on the kept-alive connection (no http.client)."""
        return self._exchange("GET", f"/api/v1/jobs/{quote(job_id)}/results/{item}")

    def result_tar(self, job_id: str) -> tuple[int | None, Iterator[bytes]]:
        return self.sized_stream(f"/api/v1/jobs/{quote(job_id)}/results/tar")


def _cluster_ids() -> dict[str, str]:
    """The cluster ids kept by API address; {} for a file that is missing, too big or not what we write."""
    import stat

    try:    # non-blocking and a regular file only: a FIFO put there would hang every submit on its open
        fd = os.open(os.path.join(_state_path(), CLUSTER_CACHE), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            raw = f.read(MAX_CLUSTER_CACHE + 1) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        kept = json.loads(raw) if 0 < len(raw) <= MAX_CLUSTER_CACHE else None
    except (OSError, ValueError):
        return {}
    if not isinstance(kept, dict):
        return {}
    return {k: v for k, v in kept.items() if isinstance(k, str) and isinstance(v, str)}


def _cached_cluster_id(address: str) -> str | None:
    cluster_id = _cluster_ids().get(address)
    # what the API gives: 32 hex digits (signing.cluster_id_of); anything else is not from it
    return cluster_id if cluster_id and len(cluster_id) == 32 and _HEX.issuperset(cluster_id) else None


def _keep_cluster_id(address: str, cluster_id: str) -> None:
    """Remember the id the API at `address` gave (written whole, then renamed over the old file). A state dir
    that cannot take it only costs the next submit a request."""
    kept = _cluster_ids()
    if kept.get(address) == cluster_id:
        return
    kept.pop(address, None)
    kept[address] = cluster_id
    kept = dict(list(kept.items())[-MAX_CLUSTER_ENTRIES:])
    path = os.path.join(_state_path(), CLUSTER_CACHE)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"   # threads of one client write apart
    try:
        with open(tmp, "w") as f:
            json.dump(kept, f)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _has_env(job: dict[str, Any]) -> bool:
    spec = job.get("spec") or {}
    return any((spec.get(engine) or {}).get("env") for engine in ("docker", "wasm"))


def _raise_for(status: int, reason: str, raw: bytes) -> None:
    try:
        message = json.loads(raw).get("error", raw.decode(errors="replace"))
    except (ValueError, AttributeError):
        message = raw.decode(errors="replace") or reason
    if status == 404:
        raise NotFoundError(message)
    if status == 401:
        raise UserError(f"{message}: set BACALHAU_API_TOKEN to the token `bacalhau serve` printed")
    if status in (400, 403, 409, 413, 415):
        raise UserError(message)
    raise ApiError(message, status)


class _Connection:
    """HTTP/1.1 kept alive over a socket, for requests whose answer is read whole. http.client's import (the
    email package, whose regexes compile at every start, and ssl) was the largest part of a client command's
    start; streams still take http.client (imported then)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self._file: Any = None

    def close(self) -> None:
        if self.sock is not None:
            self._file.close()
            self.sock.close()
            self.sock = self._file = None

    def exchange(self, method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, str, bytes]:
        if self.sock is None:
            # an ASCII host goes as bytes: a str is encoded by the idna codec, whose import (stringprep,
            # unicodedata) took 1-8 ms of a client command's start
            host = self.host.encode("ascii") if self.host.isascii() else self.host
            self.sock = socket.create_connection((host, self.port), timeout=self.timeout)  # type: ignore[arg-type]
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._file = self.sock.makefile("rb")
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        try:
            self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        except (BrokenPipeError, ConnectionResetError) as exc:
            sent: OSError | None = exc      # the server may have answered before reading it all (a 401, 413)
        else:
            sent = None
        try:
            status_line = self._line()
        except OSError:
            if sent is not None:
                raise sent from None
            raise
        if not status_line:
            raise sent or ConnectionResetError("the server closed the connection without an answer")
        parts = status_line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ConnectionResetError(f"not an HTTP answer: {status_line[:80]!r}")
        status, reason = int(parts[1]), parts[2].strip() if len(parts) > 2 else ""
        fields: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = self._line()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        else:
            raise ConnectionResetError("the answer has too many header lines")
        if "chunked" in fields.get("transfer-encoding", "").lower():
            answer = self._chunked()
        elif fields.get("content-length", "").isdigit():
            answer = self._exactly(int(fields["content-length"]))
        elif method == "HEAD" or status in (204, 304):
            answer = b""
        else:
            answer = self._file.read()
            fields["connection"] = "close"
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, reason, answer

    def _line(self) -> bytes:
        line: bytes = self._file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise ConnectionResetError("an answer's line is too long")
        return line

    def _exactly(self, n: int) -> bytes:
        data: bytes = self._file.read(n)
        if len(data) != n:
            raise ConnectionResetError(f"the answer ended after {len(data)} of its {n} bytes")
        return data

    def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ConnectionResetError(f"a bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while self._line() not in (b"\r\n", b"\n", b""):
                    pass   # trailers
                return b"".join(parts)
            parts.append(self._exactly(size))
            self._line()
