"""GitHub workflows: each one passes check-jsonschema's vendored GitHub workflow schema, offline.

A workflow GitHub refuses fails silently on push, so the schema check runs with the tests instead.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT

WORKFLOWS = sorted((PROJECT / ".github" / "workflows").glob("*.yml"))


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    """Run the real validator against the schema check-jsonschema ships, so no network is needed."""
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_workflows_are_found() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "retrain.yml"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_github_schema(workflow: Path) -> None:
    result = _validate(workflow)
    assert result.returncode == 0, result.stdout + result.stderr


def test_validator_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("name: broken\non: 42\njobs:\n  build:\n    name: no runs-on, no steps\n")
    result = _validate(broken)
    assert result.returncode != 0
    assert "runs-on" in result.stdout


def test_retrain_runs_on_data_changes_and_on_demand() -> None:
    workflow = yaml.safe_load((PROJECT / ".github" / "workflows" / "retrain.yml").read_text())
    # YAML 1.1 reads the bare key `on` as the boolean True.
    triggers = workflow[True]
    assert {"push", "workflow_dispatch"} <= set(triggers)
    assert "data/**/*.dvc" in triggers["push"]["paths"]
    assert set(triggers["workflow_dispatch"]["inputs"]) == {"drop", "domain"}
    scripts = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert any("earshot retrain" in script for script in scripts)
    # Dispatch inputs reach the shell through env only, never pasted into a script.
    assert not any("${{" in script for script in scripts)
