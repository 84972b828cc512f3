"""The code keeps to the project's lint rules (ruff) and type-checks (mypy), both configured in pyproject.toml."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_finds_nothing() -> None:
    out = _run("ruff", "check", "bacalhau", "tests", "benchmarks")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_finds_nothing() -> None:
    stale = Path(sysconfig.get_paths()["purelib"]) / "trio-stubs"
    assert not stale.exists(), f"{stale} (trio 0.22's, from trio-typing) hides trio's own types: run scripts/setup.sh"
    out = _run("mypy")
    assert out.returncode == 0, out.stdout + out.stderr


# Shapes of bugs the type check must fail, each with the error code mypy gives it. The first is the one
# api/logs.py had: _follow rebound its `gone` event to an execution, and a follower of a retried job ended in
# an AttributeError instead of its end frame.
BUG_SHAPES = '''
import trio
from bacalhau.models import Job

async def follow(job: Job, gone: trio.Event) -> None:
    gone = next((e for e in job.executions), None)  # expect: assignment

def untyped(job):  # expect: no-untyped-def
    return job

def implicit_optional(job: Job = None) -> None:  # expect: assignment
    pass

def never_equal(job: Job) -> bool:
    return job.id == 3  # expect: comparison-overlap

def stale_ignore(job: Job) -> str:
    return job.id  # type: ignore[return-value]  # expect: unused-ignore
'''


def test_mypy_fails_a_name_rebound_to_another_type_and_other_bug_shapes(tmp_path: Path) -> None:
    module = tmp_path / "bug_shapes.py"
    module.write_text(BUG_SHAPES)
    out = _run("mypy", "--config-file", str(ROOT / "pyproject.toml"), str(module))
    found = {(int(line), code) for line, code in
             re.findall(r"^.*bug_shapes\.py:(\d+): error: .*\[([a-z-]+)\]$", out.stdout, re.MULTILINE)}
    expected = {(n, code) for n, text in enumerate(BUG_SHAPES.splitlines(), 1)
                for code in re.findall(r"# expect: ([a-z-]+)$", text)}
    assert len(expected) == 5
    assert expected <= found, out.stdout + out.stderr


def _imports_node(path: Path) -> bool:
    """True when the module imports bacalhau.node anywhere, under TYPE_CHECKING and inside functions too."""
    import ast

    for stmt in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(stmt, ast.Import) and any(a.name == "bacalhau.node" or a.name.startswith("bacalhau.node.")
                                                for a in stmt.names):
            return True
        if isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and (
                stmt.module == "bacalhau.node" or (stmt.module == "bacalhau" and any(a.name == "node"
                                                                                     for a in stmt.names))):
            return True
    return False


def test_api_does_not_import_the_node() -> None:
    api = sorted((ROOT / "bacalhau" / "api").rglob("*.py"))
    assert len(api) >= 8
    offenders = [str(p.relative_to(ROOT)) for p in api if _imports_node(p)]
    assert not offenders, f"the API takes api/ports.py's protocols, not the Node: {offenders} import bacalhau.node"


def test_import_check_sees_every_form_of_importing_the_node(tmp_path: Path) -> None:
    forms = ["import bacalhau.node", "from bacalhau.node import Node", "from bacalhau import node",
             "if TYPE_CHECKING:\n    from bacalhau.node import Node",
             "def f() -> None:\n    from bacalhau.node import build_node"]
    for form in forms:
        (tmp_path / "m.py").write_text(f"from typing import TYPE_CHECKING\n{form}\n")
        assert _imports_node(tmp_path / "m.py"), form
    (tmp_path / "m.py").write_text("from bacalhau.nodes import x\nimport bacalhau.api.ports\n")
    assert not _imports_node(tmp_path / "m.py")


def test_importing_the_api_server_loads_no_node() -> None:
    code = "import sys, bacalhau.api.server; print('bacalhau.node' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
