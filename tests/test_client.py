"""The CLI's API client over a real socket: a kept-alive connection the server closed while idle, chunked
answers, and answers that are not HTTP."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from bacalhau.cli.client import ApiClient
from bacalhau.errors import DaemonNotRunning, NotFoundError, UserError


@contextmanager
def http_server(answer: Callable[[int], bytes], per_connection: int) -> Iterator[tuple[int, list[int]]]:
    """A server answering `per_connection` requests on each connection, then closing it; yields its port and
    the number of requests each connection carried."""
    listener = socket.create_server(("127.0.0.1", 0))
    counts: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        served = 0
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn, conn.makefile("rb") as f:
                counts.append(0)
                for _ in range(per_connection):
                    line = f.readline()
                    if not line:
                        break
                    length = 0
                    while (header := f.readline()) not in (b"\r\n", b""):
                        if header.lower().startswith(b"content-length:"):
                            length = int(header.split(b":")[1])
                    f.read(length)
                    conn.sendall(answer(served))
                    served += 1
                    counts[-1] += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], counts
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def json_answer(body: object, status: str = "200 OK") -> bytes:
    data = json.dumps(body).encode()
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data


def test_requests_share_one_connection_while_the_server_keeps_it() -> None:
    with http_server(lambda n: json_answer({"n": n}), per_connection=100) as (port, counts):
        client = ApiClient("127.0.0.1", port)
        assert [client.request("GET", "/x")["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
        client.close()
    assert counts == [5]


def test_a_request_after_the_server_closed_the_idle_connection_goes_again_on_a_new_one() -> None:
    with http_server(lambda n: json_answer({"n": n}), per_connection=1) as (port, counts):
        client = ApiClient("127.0.0.1", port)
        assert [client.request("POST", "/x", {"a": 1})["n"] for _ in range(4)] == [0, 1, 2, 3]
    assert counts == [1, 1, 1, 1]


def test_a_chunked_answer_and_an_error_answer_are_read_whole() -> None:
    def answer(n: int) -> bytes:
        if n == 0:
            return b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{"a\r\n5\r\n": 7}\r\n0\r\n\r\n'
        return json_answer({"error": "no job with id 'x'"}, "404 Not Found")

    with http_server(answer, per_connection=100) as (port, counts):
        client = ApiClient("127.0.0.1", port)
        assert client.request("GET", "/x") == {"a": 7}
        with pytest.raises(NotFoundError, match="no job with id"):
            client.request("GET", "/y")
        client.close()
    assert counts == [2]


def test_an_answer_that_is_not_http_is_one_clear_error() -> None:
    with http_server(lambda n: b"SSH-2.0-OpenSSH\r\n\r\n", per_connection=1) as (port, _):
        with pytest.raises(DaemonNotRunning, match=f"127.0.0.1:{port}"):
            ApiClient("127.0.0.1", port).request("GET", "/x")


def test_an_answer_given_before_a_big_body_was_read_is_the_error_shown() -> None:
    """A server that refuses a request from its headers (a bad token) answers and closes without reading the
    body: the client shows that answer, not a connection error."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as f:
            while f.readline() not in (b"\r\n", b""):
                pass
            conn.sendall(json_answer({"error": "a valid API token is required"}, "401 Unauthorized"))
            conn.shutdown(socket.SHUT_WR)
        # closed with most of the body unread: the client's send fails with a reset or a broken pipe

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(UserError, match="a valid API token is required: set BACALHAU_API_TOKEN"):
            ApiClient("127.0.0.1", listener.getsockname()[1]).request("POST", "/x", {"big": "x" * 3_000_000})
    finally:
        thread.join(5)
        listener.close()
