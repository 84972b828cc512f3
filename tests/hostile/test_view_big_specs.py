"""Any API client may submit jobs whose specs are megabytes (inline inputs, 128 KiB env values): the requester's
in-memory view of unfinished jobs (4096 of them) must not keep those, or a few thousand submits pin gigabytes
in the requester for as long as the jobs stay queued."""

from __future__ import annotations

from pathlib import Path

from bacalhau.models import Job, JobSpec, JobState
from bacalhau.requester.store import JobStore


def _big_job() -> Job:
    env = {f"K{i}": "v" * (128 * 1024) for i in range(8)}      # ~1 MiB, within the model's limits
    return Job(spec=JobSpec.model_validate({"engine": "docker", "docker": {"image": "alpine", "env": env}}))


async def test_view_does_not_hold_megabyte_specs(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    small = Job(spec=JobSpec.model_validate({"engine": "noop"}))
    await store.create_job(small)
    big = [_big_job() for _ in range(3)]
    for job in big:
        await store.create_job(job)
    assert store.view.job(small.id) is not None                  # the usual job is held
    assert all(store.view.job(job.id) is None for job in big)    # a megabyte one is read from disk instead
    got = await store.get_job(big[0].id, full=False)
    assert got.state == JobState.PENDING and len(got.spec.docker.env) == 8    # type: ignore[union-attr]
    store.close()
    reopened = JobStore(tmp_path / "jobs.db")                    # and not loaded into the view at start
    assert reopened.view.job(small.id) is not None
    assert all(reopened.view.job(job.id) is None for job in big)
    reopened.close()
