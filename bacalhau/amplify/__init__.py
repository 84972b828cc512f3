"""Amplify: workflows (DAGs of jobs) over a CID, run by the requester node as real cluster jobs, durably, with
lineage by CID. workflow.py is the YAML model and its checks, engine.py runs it (jobs.py: a step as a cluster
job and what its result gives), store.py keeps it; api/amplify.py and cli/amplify.py are its faces."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bacalhau.amplify.engine import Amplify
    from bacalhau.config import NodeConfig

DEFAULT_WORKFLOW = "default.yaml"     # shipped beside this file


def default_workflow_text(config: NodeConfig) -> str:
    """The workflow a run without one follows: --amplify-workflow's file, else the shipped default (checked
    now: a node does not start with a workflow that cannot run)."""
    from bacalhau.amplify.workflow import load_workflow, parse_workflow

    if config.amplify_workflow is not None:
        load_workflow(config.amplify_workflow)
        return config.amplify_workflow.read_text()
    shipped = resources.files(__package__).joinpath(DEFAULT_WORKFLOW)
    if not shipped.is_file():
        return ""
    text = shipped.read_text()
    parse_workflow(text, f"the shipped {DEFAULT_WORKFLOW}")
    return text


def open_amplify(config: NodeConfig, requester: Any, content: Any, stores: list[Any]) -> Amplify:
    """The engine for a requester node, its store added to `stores` (closed with the node's)."""
    from bacalhau.amplify.engine import Amplify, AmplifyLimits
    from bacalhau.amplify.store import AmplifyStore

    text = default_workflow_text(config)
    store = AmplifyStore(config.repo_dir / "amplify.db")
    stores.append(store)
    limits = AmplifyLimits(max_running=config.amplify_max_running, max_waiting=config.amplify_max_waiting)
    engine = Amplify(store, requester, requester.store, content, default_workflow=text, limits=limits,
                     trigger_label=config.amplify_trigger_label)
    if config.amplify_trigger_label:
        requester.on_change.append(engine.job_changed)
    return engine
