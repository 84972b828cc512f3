"""A late joiner's catch-up (issue 13) from a requester with N jobs recorded: the requester's answer (the
aggregate of its jobs that ended up to the mark, plus its newest 1,000 ended and its unfinished jobs in detail)
timed and sized, and the joiner's taking of it, on real SQLite files (the wire's framing included, no libp2p).

    .venv/bin/python benchmarks/dashboard_totals.py [--jobs N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import trio

from bacalhau.bprotocol.framing import parse_reply
from bacalhau.dashboard import events as ev
from bacalhau.dashboard.service import Dashboard
from bacalhau.dashboard.store import DashboardStore
from tests.test_dashboard_totals import REQ, history


async def main(jobs: int) -> None:
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        req, joiner = DashboardStore(Path(tmp) / "req.db"), DashboardStore(Path(tmp) / "joiner.db")
        lives = history(jobs, now)
        for i in range(0, len(lives), 2000):
            await req.ingest(e for life in lives[i:i + 2000] for e in life)
        d = Dashboard(node_id=REQ, store=req, node_info_ttl=5, hello_interval=1, clock=lambda: now)
        t0 = time.perf_counter()
        raw = await d._answer_totals("QmJoiner", ev.TotalsRequest().model_dump_json().encode())
        t1 = time.perf_counter()
        reply = parse_reply(raw, ev.TotalsReply)
        ev.check_aggregate(reply.aggregate, 0.0, now)
        t2 = time.perf_counter()
        await joiner.apply_totals(REQ, reply)
        t3 = time.perf_counter()
        assert (await joiner.summary()) == (await req.summary())
        print(f"{jobs} jobs: answer {len(raw) / 1024:.0f} KiB ({len(reply.events)} jobs in detail, "
              f"{reply.aggregate.totals.get('jobs', 0)} as figures, {len(reply.aggregate.buckets)} buckets) "
              f"built in {1000 * (t1 - t0):.0f} ms, parsed and checked in {1000 * (t2 - t1):.0f} ms, "
              f"taken in {1000 * (t3 - t2):.0f} ms; the joiner's summary equals the requester's")
        req.close()
        joiner.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000)
    trio.run(main, parser.parse_args().jobs)
