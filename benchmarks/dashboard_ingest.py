"""The dashboard store's CPU a job for the events a noop job gossips (pending, in progress, completed), taken in
batches of 30 as the write loop takes a busy node's: DashboardStore.ingest alone, in process, no node.

    env -u PYTHONDONTWRITEBYTECODE PYTHONPATH=/work/wt-X .venv/bin/python benchmarks/dashboard_ingest.py [--jobs N]

Measured (2026-12-02, the shared 2-core machine, 3,000 jobs, 5 interleaved rounds): main at d7ac9e4 139/112/121/
146/121 us a job (median 121), revdash (a later snapshot compared with the row's first; the batch flushed before
a take-back under a mark) 106/93/105/127/126 (median 106): no cost seen within the noise.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time
import uuid

import trio

from bacalhau.dashboard.events import ExecutionBrief, JobEvent
from bacalhau.dashboard.store import DashboardStore
from bacalhau.models import Engine, ExecutionState, JobState


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=30)
    args = parser.parse_args()
    t0 = time.time() - 3000
    events = []
    for i in range(args.jobs):
        job = str(uuid.uuid4())
        for k, state in enumerate((JobState.PENDING, JobState.IN_PROGRESS, JobState.COMPLETED)):
            done = [ExecutionBrief(node_id="QmNode", state=ExecutionState.COMPLETED)] if state.terminal else []
            events.append(JobEvent(job_id=job, requester="QmRequester", state=state, engine=Engine.NOOP,
                                   image="noop", client="client-1", labels={"team": "a"}, created_at=t0 + i * 0.5,
                                   updated_at=t0 + i * 0.5 + k, executions=done))
    events.sort(key=lambda e: e.updated_at)

    async def run() -> None:
        store = DashboardStore(pathlib.Path(tempfile.mkdtemp()) / "dashboard.db")
        cpu = time.process_time()
        for i in range(0, len(events), args.batch):
            await store.ingest(events[i:i + args.batch])
        print(f"{(time.process_time() - cpu) / args.jobs * 1e6:.0f} us of CPU a job ({args.jobs} jobs)")
        store.close()

    trio.run(run)


if __name__ == "__main__":
    main()
