"""What a client signs (signing.py) to request an Amplify run or cancel one: shared by the API, which checks,
and the CLI, which signs (kept apart from both so a client command imports neither the server nor the engine)."""

from __future__ import annotations

import hashlib
from typing import Any


def run_action(run_id: str, cid: str, workflow: str | None, no_cache: bool = False) -> dict[str, Any]:
    """A run request: its id, CID and workflow (by its SHA-256; "" for the node's default), and no_cache when
    set (absent otherwise, so a request signed before it existed still verifies)."""
    digest = hashlib.sha256(workflow.encode()).hexdigest() if workflow is not None else ""
    action: dict[str, Any] = {"id": run_id, "cid": cid, "workflow": digest}
    if no_cache:
        action["no_cache"] = True
    return {"amplify_run": action}


def cancel_action(run_id: str) -> dict[str, Any]:
    return {"amplify_cancel": run_id}
