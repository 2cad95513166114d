"""dbt runs through the project's environment: connection from the environment, no tracking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cart_recovery.settings import Paths

CLI = str(Path(sys.executable).parent / "cart-recovery")


def _dbt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "dbt", *args], env=os.environ, capture_output=True, text=True, timeout=300)


def test_dbt_debug_connects_to_the_configured_warehouse(database):
    result = _dbt("debug")
    assert result.returncode == 0, result.stdout[-2000:]
    assert "All checks passed" in result.stdout
    assert f"database: {database.warehouse.database}" in result.stdout
    assert f"port: {database.warehouse.port}" in result.stdout


def test_anonymous_usage_stats_are_off():
    project = (Paths.from_env().dbt_project / "dbt_project.yml").read_text()
    assert "send_anonymous_usage_stats: false" in project
    assert os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] == "false"


@pytest.mark.slow
def test_docs_generate_includes_the_marts_and_exposures(database, tmp_path):
    result = _dbt("docs", "generate", "--target-path", str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    models = {node["name"] for node in manifest["nodes"].values() if node["resource_type"] == "model"}
    assert {"abandoned_carts", "recovery_plan", "customers"} <= models
    exposures = {exposure["name"] for exposure in manifest["exposures"].values()}
    assert len(exposures) >= 2, exposures
    assert (tmp_path / "catalog.json").exists()
