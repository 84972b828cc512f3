"""Inputs cannot reach what the node can: URL inputs to this machine or its networks, redirects, liars and
tricklers; ipfs:// inputs whose DAG repeats a child. Each test is the attack, against the real parts."""

from __future__ import annotations

import http.server
import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bacalhau.errors import ExecutorError
from bacalhau.models import StorageSpec
from bacalhau.node import Node
from bacalhau.storage.url import UrlPolicy, UrlStorage, is_public, resolve
from bacalhau.testing.jsipfs import JsIpfs
from tests.conftest import Served, node_config, run_cli

IMAGE = "bacalhau/busybox:latest"





@pytest.mark.docker
@pytest.mark.slow
def test_two_identical_input_files_under_ipfs_connect_do_not_end_the_node(served, jsipfs: JsIpfs,  # type: ignore[no-untyped-def]
                                                                         tmp_path: Path) -> None:
    node: Served = served("node", "--ipfs-connect", jsipfs.api_maddr).start()
    node.wait_ready()
    src = tmp_path / "twins"
    src.mkdir()
    (src / "a.txt").write_text("same\n")
    (src / "b.txt").write_text("same\n")       # one CID, linked twice by the directory
    added = node.cli("ipfs", "add", "-r", str(src))
    assert added.returncode == 0, added.stderr
    root = added.stdout.splitlines()[-1].split()[1]
    res = node.cli("docker", "run", "-i", f"ipfs://{root}:/in", IMAGE, "--", "sh", "-c", "cat /in/a.txt /in/b.txt")
    assert node.proc is not None and node.proc.poll() is None, node.log.read_text()[-3000:]
    assert res.returncode == 0, res.stderr
    assert res.stdout == "same\nsame\n"
    after = node.cli("docker", "run", IMAGE, "--", "echo", "still serving")
    assert after.returncode == 0 and after.stdout == "still serving\n", after.stderr
    jobs = json.loads(node.cli("list", "-o", "json").stdout)
    assert len(jobs) == 2


# -- URL inputs ---------------------------------------------------------------------------------------------

class Site:
    """A real HTTP server on a loopback address, with routes a test sets: what it was asked, and whether a
    client that was sent a trickle went away."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.hits: list[tuple[str, str]] = []       # (path, Host header)
        self.routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]] = {}
        self.client_gone = threading.Event()
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                site.hits.append((self.path, self.headers.get("Host", "")))
                route = site.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                route(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def file(self, path: str, body: bytes) -> None:
        def send(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        self.routes[path] = send

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        def send(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Location", location)
            h.send_header("Content-Length", "0")
            h.end_headers()
        self.routes[path] = send

    def endless(self, path: str, *, content_length: int | None = None, every: float = 0.0,
                chunk: bytes = b"x" * 65536) -> None:
        """Bytes until the client goes: with no Content-Length, or a small false one, or slowly."""
        def send(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            if content_length is not None:
                h.send_header("Content-Length", str(content_length))
            h.send_header("Connection", "close")
            h.end_headers()
            try:
                while True:
                    h.wfile.write(chunk)
                    h.wfile.flush()
                    if every:
                        time.sleep(every)
            except OSError:
                self.client_gone.set()
        self.routes[path] = send

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.close()


@pytest.fixture
def public_site() -> Iterator[Site]:
    """A server on 127.0.0.2, which the policy of these tests treats as a public address (no test can reach
    the internet): the node's real check still refuses 127.0.0.1 and every other loopback address."""
    s = Site("127.0.0.2")
    yield s
    s.close()


def lab_policy(**kw: object) -> UrlPolicy:
    """127.0.0.2 plays the internet; `public.test` resolves to it, `rebind.test` to it once and then to
    127.0.0.1 (a rebinding DNS server); everything else is checked as on a real node."""
    answers = {"public.test": ["127.0.0.2"], "rebind.test": ["127.0.0.2"]}

    async def resolver(host: str, port: int) -> list[str]:
        if host in answers:
            got = answers[host]
            if host == "rebind.test":
                answers[host] = ["127.0.0.1"]
            return got
        return await resolve(host, port)

    settings: dict[str, Any] = dict(resolve=resolver,
                                    allowed=lambda ip: str(ip) == "127.0.0.2" or is_public(ip))
    settings.update(kw)
    return UrlPolicy(**settings)


async def fetch(url: str, dest: Path, policy: UrlPolicy) -> str:
    """The error a URL input fails with ('' when it is fetched)."""
    await trio.Path(dest).mkdir(parents=True, exist_ok=True)
    try:
        await UrlStorage(policy).prepare(StorageSpec(source=url, path="/inputs"), dest)
    except ExecutorError as exc:
        assert "\n" not in str(exc)
        return str(exc)
    return ""


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "0.0.0.0", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "224.0.0.1", "239.1.2.3", "240.0.0.1", "255.255.255.255", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "::ffff:10.0.0.1", "2002:7f00:1::1", "64:ff9b::7f00:1", "2001:db8::1",
])
def test_addresses_of_this_machine_and_its_networks_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_internet_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.docker
async def test_a_url_input_to_this_machine_is_refused_without_the_flag(single_node, site: Site) -> None:  # type: ignore[no-untyped-def]
    site.file("/secret", b"the node's own service\n")
    port = site.url.rsplit(":", 1)[1]
    for url in (f"{site.url}/secret", f"http://localhost:{port}/secret", f"http://[::ffff:127.0.0.1]:{port}/secret"):
        res = await run_cli(single_node, "docker", "run", "-i", url, IMAGE, "--", "cat", "/inputs/secret")
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert "--allow-private-urls" in res.stderr and url in res.stderr, res.stderr
        assert "the node's own service" not in res.stdout
    assert site.hits == []          # not even a connection made
    ok = await run_cli(single_node, "docker", "run", IMAGE, "--", "echo", "alive")
    assert ok.returncode == 0 and ok.stdout == "alive\n"


async def test_redirects_to_this_machine_or_to_other_schemes_are_refused(tmp_path: Path, site: Site,
                                                                         public_site: Site) -> None:
    site.file("/secret", b"metadata\n")
    port = public_site.url.rsplit(":", 1)[1]
    public_site.file("/fine.csv", b"a,b\n")
    public_site.redirect("/to-loopback", f"{site.url}/secret")
    public_site.redirect("/to-localhost", f"http://localhost:{site.url.rsplit(':', 1)[1]}/secret", 307)
    public_site.redirect("/to-file", "file:///etc/passwd")
    public_site.redirect("/to-ftp", "ftp://127.0.0.2/x")
    public_site.redirect("/loop", "/loop", 301)
    policy = lab_policy()
    # the lab itself works: a name resolving to the "public" address, connected to that address
    assert await fetch(f"http://public.test:{port}/fine.csv", tmp_path / "ok", policy) == ""
    assert (tmp_path / "ok" / "fine.csv").read_bytes() == b"a,b\n"
    assert public_site.hits[-1] == ("/fine.csv", f"public.test:{port}")

    for path, why in [("/to-loopback", "127.0.0.1"), ("/to-localhost", "may not reach"),
                      ("/to-file", "only http and https"), ("/to-ftp", "only http and https"),
                      ("/loop", "redirects")]:
        dest = tmp_path / path.strip("/")
        error = await fetch(f"http://public.test:{port}{path}", dest, policy)
        assert why in error and f"public.test:{port}{path}" in error, error
        assert not list(dest.iterdir())
    assert site.hits == []


async def test_a_name_that_rebinds_to_loopback_is_connected_to_the_address_that_was_checked(
        tmp_path: Path, public_site: Site) -> None:
    port = int(public_site.url.rsplit(":", 1)[1])
    public_site.file("/data", b"from the checked address\n")
    trap = Site("127.0.0.1", port)          # what a second lookup (answered 127.0.0.1 now) would reach
    trap.file("/data", b"from the node's own service\n")
    try:
        error = await fetch(f"http://rebind.test:{port}/data", tmp_path / "d", lab_policy())
        assert error == "" and (tmp_path / "d" / "data").read_bytes() == b"from the checked address\n"
        assert trap.hits == []
    finally:
        trap.close()


async def test_a_server_sending_past_the_cap_is_cut_whatever_it_announced(tmp_path: Path,
                                                                          public_site: Site) -> None:
    public_site.endless("/no-length")
    public_site.file("/big", b"y" * 5000)
    policy = lab_policy(max_bytes=100_000)
    with trio.fail_after(20):
        error = await fetch(f"{public_site.url}/no-length", tmp_path / "a", policy)
    assert "more than the 100000-byte limit" in error, error
    assert not list((tmp_path / "a").iterdir())           # the partial file is gone
    error = await fetch(f"{public_site.url}/big", tmp_path / "b", lab_policy(max_bytes=4000))
    assert "5000 bytes, over the 4000-byte limit" in error


async def test_a_server_that_trickles_forever_meets_one_deadline(tmp_path: Path, public_site: Site) -> None:
    public_site.endless("/slow", every=0.05, chunk=b"z")     # every read is quick; the download never ends
    start = trio.current_time()
    error = await fetch(f"{public_site.url}/slow", tmp_path / "a", lab_policy(timeout=1.5))
    assert "not done within 1.5s" in error, error
    assert trio.current_time() - start < 10
    assert not list((tmp_path / "a").iterdir())


@pytest.mark.docker
async def test_cancelling_the_job_stops_its_download(tmp_path: Path, site: Site) -> None:
    site.endless("/forever", every=0.05, chunk=b"z")
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(node_config(tmp_path / "node", allow_private_urls=True)).run)
        job = await run_cli(node, "docker", "run", "--id-only", "-i", f"{site.url}/forever",
                            IMAGE, "--", "true")
        job_id = job.stdout.strip()
        assert job.returncode == 0 and job_id, job.stderr
        with trio.fail_after(15):
            while not site.hits:
                await trio.sleep(0.05)
        cancelled = await run_cli(node, "cancel", job_id)
        assert cancelled.returncode == 0, cancelled.stderr
        with trio.fail_after(10):       # the server sees the connection closed: nothing reads on
            await trio.to_thread.run_sync(site.client_gone.wait, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


@pytest.mark.docker
@pytest.mark.slow
def test_the_operator_allows_private_urls_with_a_serve_flag(served, site: Site) -> None:  # type: ignore[no-untyped-def]
    site.file("/data.csv", b"x,y\n")
    node: Served = served("node", "--allow-private-urls", "--url-input-timeout", "30").start()
    node.wait_ready()
    res = node.cli("docker", "run", "-i", f"{site.url}/data.csv", IMAGE, "--", "cat", "/inputs/data.csv")
    assert res.returncode == 0 and res.stdout == "x,y\n", res.stderr
    bad = node.cli("docker", "run", "-i", f"{site.url}/nope", IMAGE, "--", "true")
    assert bad.returncode == 1 and "HTTP 404" in bad.stderr and "Traceback" not in bad.stderr
