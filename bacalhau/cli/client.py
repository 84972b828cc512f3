"""The API client of the CLI: the standard library's http.client, so a client command starts fast."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from bacalhau.errors import ApiError, DaemonNotRunning, NotFoundError, UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1234
READ_CHUNK = 256 * 1024
MAX_JSON_BODY = 4 * 1024 * 1024     # api/server.py MAX_BODY (not imported: a client command starts fast)


def _state_dir() -> Path:
    return Path(os.environ.get("BACALHAU_DIR") or Path.home() / ".bacalhau")


def _config_file() -> Path:
    return _state_dir() / "config.yaml"


def resolve_api(host: str | None, port: int | None) -> tuple[str, int]:
    """A flag beats the environment (click fills both in), which beats the config file, then the default."""
    if host is None or port is None:
        path = _config_file()
        conf: dict[str, Any] = {}
        if path.exists():
            import yaml

            try:
                conf = yaml.safe_load(path.read_text()) or {}
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
        self._kept = threading.local()      # one kept-alive connection a thread (a benchmark submits from many)
        self._key_cache: Any = None

    def _connection(self, keep: bool) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was used before: `keep` takes this thread's kept-alive one (a request
        whose answer is read whole leaves it reusable), else a new one for a stream the caller closes."""
        if not keep:
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout), False
        conn: http.client.HTTPConnection | None = getattr(self._kept, "conn", None)
        if conn is None:
            conn = self._kept.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return conn, conn.sock is not None

    def _open(self, method: str, path: str, body: Any = None, raw: Any = None,
              extra_headers: dict[str, str] | None = None, *, keep: bool = False) -> http.client.HTTPResponse:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if raw is not None:
            headers = {"Content-Type": "application/octet-stream"}
        headers |= extra_headers or {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        if isinstance(data, bytes) and len(data) > MAX_JSON_BODY:
            raise UserError(f"the request is {len(data)} bytes, over the API's {MAX_JSON_BODY}: make inline inputs "
                            "smaller (add big ones with `bacalhau ipfs add`)")
        retried = False
        while True:
            conn, reused = self._connection(keep)
            try:
                try:
                    conn.request(method, path, body=data, headers=headers)
                except (BrokenPipeError, ConnectionResetError):
                    if reused and not retried:
                        raise
                    pass   # the server answered before reading all the body (a 413, 415, 403): read its answer
                resp = conn.getresponse()
            except (ConnectionRefusedError, socket.gaierror, OSError) as exc:
                conn.close()
                if reused and not retried and isinstance(exc, BrokenPipeError | ConnectionResetError):
                    # a kept-alive connection the server closed while it was idle (no answer came on it): once
                    # more on a new one
                    retried = True
                    continue
                if isinstance(exc, TimeoutError):
                    raise ApiError(f"the bacalhau API at {self.host}:{self.port} did not answer in time") from None
                raise DaemonNotRunning(
                    f"cannot reach the bacalhau API at {self.host}:{self.port} ({exc.__class__.__name__}):"
                    " is `bacalhau serve` running? Point at it with --api-host/--api-port or"
                    " BACALHAU_API_HOST/BACALHAU_API_PORT."
                ) from None
            break
        if resp.status >= 400:
            raw = resp.read()
            try:
                message = json.loads(raw).get("error", raw.decode(errors="replace"))
            except ValueError:
                message = raw.decode(errors="replace") or resp.reason
            if resp.status == 404:
                raise NotFoundError(message)
            if resp.status == 401:
                raise UserError(f"{message}: set BACALHAU_API_TOKEN to the token `bacalhau serve` printed")
            if resp.status in (400, 403, 409, 413, 415):
                raise UserError(message)
            raise ApiError(message, resp.status)
        return resp

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                **query: Any) -> Any:
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        with self._open(method, path, body, extra_headers=headers, keep=True) as resp:
            return json.loads(resp.read())

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
        from bacalhau.signing import load_or_create_client_key

        if self._key_cache is None:
            self._key_cache = load_or_create_client_key(_state_dir() / "client.key")
        return self._key_cache

    def _sign(self, action: Any) -> dict[str, Any]:
        """`action` signed for the cluster this API serves (asked once per client)."""
        from bacalhau.signing import sign

        if self._cluster_id is None:
            self._cluster_id = str(self.node_id().get("cluster_id", ""))
        return sign(self._key(), action, self._cluster_id)

    def submit(self, spec: dict[str, Any]) -> str:
        body = {"spec": spec, **self._sign({"submit": spec})}
        return self.request("POST", "/api/v1/jobs", body)["id"]  # type: ignore[no-any-return]

    def list_jobs(self, limit: int) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/jobs", limit=limit)  # type: ignore[no-any-return]

    def job(self, job_id: str, *, as_owner: bool = False) -> dict[str, Any]:
        """The job; env values in clear only `as_owner` (signed: the API shows them to the submitter alone)."""
        headers = {"X-Bacalhau-Signed": json.dumps(self._sign({"describe": job_id}))} if as_owner else None
        return self.request("GET", f"/api/v1/jobs/{quote(job_id)}", headers=headers)  # type: ignore[no-any-return]

    def wait(self, job_id: str, since: float, timeout: float = 30.0) -> dict[str, Any]:
        return self.request(  # type: ignore[no-any-return]
            "GET", f"/api/v1/jobs/{quote(job_id)}/wait", timeout=timeout, since=repr(since)
        )

    def cancel(self, job_id: str) -> dict[str, Any]:
        full_id = self.job(job_id)["id"]  # the signature covers the full id, whatever prefix was typed
        body = self._sign({"cancel": full_id})
        return self.request("POST", f"/api/v1/jobs/{quote(full_id)}/cancel", body)  # type: ignore[no-any-return]

    def upload(self, path: str, file: Any) -> Any:
        with self._open("POST", path, raw=file) as resp:
            return json.loads(resp.read())

    def result(self, job_id: str, item: str) -> Iterator[bytes]:
        return self.stream(f"/api/v1/jobs/{quote(job_id)}/results/{item}")

    def result_tar(self, job_id: str) -> tuple[int | None, Iterator[bytes]]:
        return self.sized_stream(f"/api/v1/jobs/{quote(job_id)}/results/tar")
