"""Unit tests of the models: state machines, selectors, resources, job specs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bacalhau.errors import IllegalTransitionError
from bacalhau.models import DockerSpec, Engine, ExecutionState, JobSpec, JobState, Resources
from bacalhau.models.resources import parse_cpu, parse_size
from bacalhau.models.selector import matches, parse_selector
from bacalhau.models.state import (
    EXECUTION_TRANSITIONS,
    JOB_TRANSITIONS,
    check_execution_transition,
    check_job_transition,
)


def test_terminal_states_have_no_way_out() -> None:
    for state in JobState:
        assert (JOB_TRANSITIONS[state] == frozenset()) == state.terminal
    for state in ExecutionState:
        assert (EXECUTION_TRANSITIONS[state] == frozenset()) == state.terminal


def test_illegal_transitions_raise_a_typed_error() -> None:
    check_job_transition("j", JobState.PENDING, JobState.IN_PROGRESS)
    with pytest.raises(IllegalTransitionError, match="completed -> in_progress"):
        check_job_transition("j", JobState.COMPLETED, JobState.IN_PROGRESS)
    check_execution_transition("e", ExecutionState.RUNNING, ExecutionState.PUBLISHING)
    with pytest.raises(IllegalTransitionError):
        check_execution_transition("e", ExecutionState.BID_REJECTED, ExecutionState.RUNNING)
    with pytest.raises(IllegalTransitionError):
        check_execution_transition("e", ExecutionState.ASKED_FOR_BID, ExecutionState.RUNNING)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("zone=eu", {"zone": "eu"}, True),
        ("zone==eu", {"zone": "us"}, False),
        ("zone!=eu", {}, True),
        ("zone!=eu", {"zone": "eu"}, False),
        ("gpu in (a100,h100)", {"gpu": "h100"}, True),
        ("gpu in (a100, h100)", {"gpu": "t4"}, False),
        ("gpu notin (t4)", {"gpu": "a100"}, True),
        ("gpu notin (t4)", {}, True),
        ("gpu", {"gpu": ""}, True),
        ("!gpu", {"gpu": "x"}, False),
        ("zone=eu,gpu in (a100,h100)", {"zone": "eu", "gpu": "a100"}, True),
        ("zone=eu,gpu in (a100,h100)", {"zone": "us", "gpu": "a100"}, False),
        ("", {}, True),
    ],
)
def test_kubernetes_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert matches(parse_selector(selector), labels) is expected


@pytest.mark.parametrize("bad", ["zone in (", "=eu", "zone in ()", "a b c", "zone=e u"])
def test_bad_selectors_are_rejected_with_the_requirement_named(bad: str) -> None:
    with pytest.raises(ValueError, match="selector"):
        parse_selector(bad)


def test_sizes_and_cpu_parse_like_docker_and_kubernetes() -> None:
    assert parse_size("512Mb") == 512 * 1000**2
    assert parse_size("1Gi") == 1024**3
    assert parse_size("100") == 100
    assert parse_cpu("500m") == 0.5
    assert parse_cpu("2") == 2.0
    with pytest.raises(ValueError):
        parse_size("lots")
    with pytest.raises(ValueError):
        parse_cpu("fast")
    assert Resources(cpu=1, memory=10).fits_in(Resources(cpu=1, memory=10))
    assert not Resources(cpu=1.5).fits_in(Resources(cpu=1, memory=10))


def test_job_spec_validation_names_the_problem() -> None:
    with pytest.raises(ValidationError, match="no 'docker' section"):
        JobSpec(engine=Engine.DOCKER)
    with pytest.raises(ValidationError, match="concurrency"):
        JobSpec(docker=DockerSpec(image="x"), concurrency=0)
    with pytest.raises(ValidationError, match="extra"):
        JobSpec.model_validate({"docker": {"image": "x"}, "colour": "blue"})
    with pytest.raises(ValidationError, match="selector"):
        JobSpec(docker=DockerSpec(image="x"), node_selector="zone in (")
    spec = JobSpec(docker=DockerSpec(image="x"), resources={"cpu": "250m", "memory": "64Mb"})  # type: ignore[arg-type]
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec
