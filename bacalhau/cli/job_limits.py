"""The `serve` flags that box a compute node's jobs in (--default-job-cpu and friends), parsed into one
JobLimits; kept out of serve.py so the flags and their checks read together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from bacalhau.config import (
    DEFAULT_JOB_CPU,
    DEFAULT_JOB_MEMORY,
    DEFAULT_JOB_PIDS,
    DEFAULT_MAX_JOB_OUTPUT,
    DEFAULT_MAX_JOB_TIMEOUT,
    JobLimits,
)
from bacalhau.models import Resources
from bacalhau.models.resources import parse_cpu, parse_size

DOCKER_MIN_MEMORY = 6 * 1024**2   # Docker refuses to create a container with a smaller memory limit
DOCKER_MIN_CPU = 0.01             # or a smaller CPU limit

_OPTIONS = [
    click.option("--default-job-cpu", default=f"{DEFAULT_JOB_CPU:g}", show_default=True, metavar="CPU",
                 help="CPU a job that asks for none is counted as and limited to."),
    click.option("--default-job-memory", default=f"{DEFAULT_JOB_MEMORY // 1000**2}Mb", show_default=True,
                 metavar="SIZE", help="Memory a job that asks for none is counted as and limited to."),
    click.option("--job-pids-limit", default=DEFAULT_JOB_PIDS, show_default=True, type=click.IntRange(min=1),
                 metavar="N", help="Processes and threads a job's container may hold at once."),
    click.option("--max-job-timeout", default=f"{DEFAULT_MAX_JOB_TIMEOUT:g}", show_default=True, metavar="SECONDS",
                 help="Jobs asking a longer timeout are refused."),
    click.option("--max-job-output", default=f"{DEFAULT_MAX_JOB_OUTPUT // 1024**2}Mi", show_default=True,
                 metavar="SIZE",
                 help="Bytes kept of each of a job's stdout and stderr; the rest is dropped and the job told so."),
    click.option("--allow-host-network", is_flag=True,
                 help="Run jobs that ask for --network host (they reach this machine's network and beyond)."),
]
NAMES = ("default_job_cpu", "default_job_memory", "job_pids_limit", "max_job_timeout", "max_job_output",
         "allow_host_network")


def job_limit_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The flags, as click options; the command receives them as `**job_limits` (see NAMES)."""
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None


def _parsed(fn: Callable[[str], float], text: str, flag: str, least: float, what: str) -> float:
    try:
        value = fn(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None
    if not value >= least:   # NaN too
        raise click.BadParameter(f"must be at least {what}", param_hint=flag)
    return value


def parse_job_limits(capacity: Resources, *, default_job_cpu: str, default_job_memory: str, job_pids_limit: int,
                     max_job_timeout: str, max_job_output: str, allow_host_network: bool) -> JobLimits:
    """The flags as JobLimits; a wrong one is a click.BadParameter naming it."""
    limits = JobLimits(
        default_cpu=_parsed(parse_cpu, default_job_cpu, "--default-job-cpu", DOCKER_MIN_CPU, "10m (Docker's least)"),
        default_memory=int(_parsed(parse_size, default_job_memory, "--default-job-memory", DOCKER_MIN_MEMORY,
                                   "6Mi (Docker's least)")),
        pids=job_pids_limit, allow_host_network=allow_host_network,
        max_timeout=_parsed(_seconds, max_job_timeout, "--max-job-timeout", 0.001, "1ms"),
        max_output=int(_parsed(parse_size, max_job_output, "--max-job-output", 1, "1 byte")),
    )
    if not limits.size(Resources()).fits_in(capacity):
        raise click.BadParameter(
            f"the default job size ({limits.default_cpu:g} CPU, {limits.default_memory} bytes) is more than this "
            f"node offers ({capacity.cpu:g} CPU, {capacity.memory} bytes)",
            param_hint="--default-job-cpu/--default-job-memory")
    return limits
