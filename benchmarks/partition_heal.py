"""Heal after a network partition: a requester and one compute `bacalhau serve`, each in a network namespace of
its own (bacalhau/testing/netns.py, root and iproute2 needed); the compute node's link goes down for
--partition seconds, then up. Measured: seconds from the heal until the requester lists the node again, and
until `bacalhau logs` of a job the node ran answers again. Interleaved A/B: as shipped, and with
BACALHAU_P2P_UNACKED_ABORT=0 (connections to a silent peer are not dropped; see bacalhau/p2p/tcp.py).

    sudo .venv/bin/python benchmarks/partition_heal.py [--runs 2] [--partition 30]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _serve import BIN, free_port

from bacalhau.cli.client import ApiClient
from bacalhau.testing.netns import Lan


def serve(lan: Lan, root: Path, name: str, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], str]:
    addr = lan.add(name)
    log = root / f"{name}.log"
    cmd = [*lan.exec_prefix(name), BIN, "serve", "--port", str(free_port()), "--swarm-port", str(free_port()),
           "--ipfs-swarm-port", str(free_port()), *args]
    if name == "req":
        cmd += ["--host", addr]
    proc = subprocess.Popen(cmd, env={**env, "BACALHAU_DIR": str(root / name)}, stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "To join another machine" in text:
            return proc, text
        time.sleep(0.05)
    raise SystemExit(f"{name} did not start: {log}")


def until(check, timeout: float = 180) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            return float("inf")
        time.sleep(0.1)
    return time.monotonic() - start


def one_run(partition: float, abort: bool) -> tuple[float, float]:
    env = {**os.environ, **({} if abort else {"BACALHAU_P2P_UNACKED_ABORT": "0"})}
    root = Path(tempfile.mkdtemp(prefix="bacalhau-bench-partition-"))
    lan = Lan().open()
    procs = []
    try:
        req, banner = serve(lan, root, "req", env, "--node-type", "requester")
        procs.append(req)
        m = re.search(r"--peer /ip4/[0-9.]+/tcp/(\d+)/p2p/(\w+) --swarm-key ([0-9a-f]{64})", banner)
        token = re.search(r"BACALHAU_API_TOKEN=(\S+)", banner)
        assert m and token, banner
        peer = f"/ip4/{lan.addrs['req']}/tcp/{m.group(1)}/p2p/{m.group(2)}"
        procs.append(serve(lan, root, "c0", env, "--node-type", "compute", "--peer", peer,
                           "--swarm-key", m.group(3))[0])
        client = ApiClient(lan.addrs["req"], int(re.search(r"BACALHAU_API_PORT=(\d+)", banner).group(1)),  # type: ignore[union-attr]
                           token=token.group(1))
        until(lambda: len(client.nodes()) == 1, 30)
        job = client.submit({"engine": "noop", "noop": {"stdout": "x\n"}})
        until(lambda: client.job(job)["state"] == "completed", 30)
        cli_env = {**os.environ, "BACALHAU_API_HOST": client.host, "BACALHAU_API_PORT": str(client.port),
                   "BACALHAU_API_TOKEN": token.group(1)}
        lan.cut("c0")
        until(lambda: not client.nodes(), 30)
        time.sleep(max(0.0, partition - 1))
        lan.heal("c0")
        healed = time.monotonic()
        until(lambda: bool(client.nodes()))
        rejoined = time.monotonic() - healed

        def logs_answer() -> bool:
            out = subprocess.run([BIN, "logs", job], env=cli_env, capture_output=True, text=True, timeout=60,
                                 check=False)
            return out.stdout == "x\n"

        until(logs_answer)
        return rejoined, time.monotonic() - healed
    finally:
        for p in procs:
            p.kill()
            p.wait()
        lan.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--partition", type=float, default=30.0)
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.runs):
        for abort in (False, True):
            results[abort].append(one_run(args.partition, abort))
            print(f"{'as shipped ' if abort else 'no abort   '} rejoin {results[abort][-1][0]:6.1f} s, "
                  f"logs again {results[abort][-1][1]:6.1f} s", file=sys.stderr)
    for abort, label in ((False, "BACALHAU_P2P_UNACKED_ABORT=0"), (True, "as shipped")):
        rejoin = statistics.median(r for r, _ in results[abort])
        logs = statistics.median(x for _, x in results[abort])
        print(f"{label:30s} after a {args.partition:g} s partition: node listed again {rejoin:.1f} s, "
              f"its logs readable again {logs:.1f} s after the heal (medians of {args.runs})")


if __name__ == "__main__":
    main()
