"""dbt runs through the project's environment: connection from the environment, no tracking."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cart_recovery.settings import Paths

BIN = Path(sys.executable).parent
CLI = str(BIN / "cart-recovery")
PROJECT = Paths.from_env().dbt_project


def _dbt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "dbt", *args], env=env or os.environ, capture_output=True, text=True, timeout=300
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def _project_files(paths_key: str, suffix: str) -> dict[str, str]:
    """{name: path relative to the project} of the files under the project's model or seed paths."""
    project = yaml.safe_load((PROJECT / "dbt_project.yml").read_text())
    return {
        path.stem: path.relative_to(PROJECT).as_posix()
        for directory in project[paths_key]
        for path in (PROJECT / directory).rglob(f"*{suffix}")
    }


@pytest.fixture(scope="module")
def dbt_target(tmp_path_factory) -> Path:
    """dbt's target path for `dbt ls`: its manifest goes here, not to dbt_project/target, which
    the DAG tests read (the second `ls` re-uses the first one's partial parse)."""
    return tmp_path_factory.mktemp("dbt-target")


def _listed(resource_type: str, target: Path) -> dict[str, str]:
    """{name: original_file_path} of what `cart-recovery dbt ls --resource-type <type>` lists."""
    # Global flags after the subcommand: `cart-recovery dbt --quiet ls` is refused by the wrapper's
    # argparse (REMAINDER does not take a leading option); dbt accepts them in either place.
    result = _dbt(
        "ls",
        "--quiet",
        "--resource-type",
        resource_type,
        "--output",
        "json",
        "--output-keys",
        "name resource_type original_file_path",
        "--target-path",
        str(target),
    )
    assert result.returncode == 0, _output(result)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert {row["resource_type"] for row in rows} == {resource_type}, rows
    listed = {row["name"]: row["original_file_path"] for row in rows}
    assert len(listed) == len(rows), "a name is listed twice"
    return listed


def test_dbt_debug_connects_to_the_configured_warehouse(database):
    result = _dbt("debug")
    assert result.returncode == 0, result.stdout[-2000:]
    assert "All checks passed" in result.stdout
    assert f"database: {database.warehouse.database}" in result.stdout
    assert f"port: {database.warehouse.port}" in result.stdout


def test_dbt_ls_lists_every_model_on_disk(database, dbt_target):
    on_disk = _project_files("model-paths", ".sql")
    assert len(on_disk) >= 3, on_disk  # the project's model-paths, found
    assert _listed("model", dbt_target) == on_disk


def test_dbt_ls_lists_every_seed_on_disk(database, dbt_target):
    on_disk = _project_files("seed-paths", ".csv")
    assert on_disk, "no seed on disk"
    assert _listed("seed", dbt_target) == on_disk


@pytest.mark.parametrize(
    ("args", "dbt_exit_code", "dbt_message"),
    [
        # A handled error: dbt exits 1, a code the wrapper never produces itself.
        (["debug", "--target", "no_such_target"], 1, "no_such_target"),
        # A usage error: click's exit code 2.
        (["ls", "--resource-type", "nonsense"], 2, "'nonsense' is not one of"),
    ],
    ids=["unknown-target", "bad-option-value"],
)
def test_dbt_errors_exit_with_dbt_exit_code(database, args, dbt_exit_code, dbt_message):
    direct = subprocess.run(
        [str(BIN / "dbt"), *args], env=os.environ, cwd=PROJECT, capture_output=True, text=True, timeout=300
    )
    assert direct.returncode == dbt_exit_code, _output(direct)
    wrapped = _dbt(*args)
    assert wrapped.returncode == dbt_exit_code, _output(wrapped)
    assert dbt_message in wrapped.stdout + wrapped.stderr, _output(wrapped)
    assert "cart-recovery:" not in wrapped.stderr  # dbt's own error, not one of the wrapper's


def test_plain_dbt_in_the_project_does_not_track():
    """Outside the wrapper (the image's `dbt parse`, a hand-run dbt), dbt_project.yml turns it off."""
    project = yaml.safe_load((PROJECT / "dbt_project.yml").read_text())
    assert project["flags"]["send_anonymous_usage_stats"] is False


def test_dbt_through_the_wrapper_never_tracks(database):
    """The wrapper turns tracking off even when the caller's environment turns it on."""
    env = {k: v for k, v in os.environ.items() if k not in ("DO_NOT_TRACK", "NO_PROXY", "no_proxy")}
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "true"  # beats dbt_project.yml's flag unless overridden
    # Should an event be sent after all, it goes to a closed local port, not to dbt Labs.
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[proxy] = "http://127.0.0.1:9"
    result = _dbt("debug", "--log-level", "debug", env=env)
    assert result.returncode == 0, _output(result)
    flags = re.findall(r"'send_anonymous_usage_stats': '(\w+)'", result.stdout)
    assert flags == ["False"], _output(result)  # dbt logs its resolved flags at debug level
    assert "Sending event" not in result.stdout


@pytest.mark.slow
def test_docs_generate_includes_the_marts_and_exposures(database, tmp_path):
    result = _dbt("docs", "generate", "--target-path", str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    models = {node["name"] for node in manifest["nodes"].values() if node["resource_type"] == "model"}
    assert models == set(_project_files("model-paths", ".sql"))
    exposures = {exposure["name"] for exposure in manifest["exposures"].values()}
    declared = yaml.safe_load((PROJECT / "models" / "marts" / "_exposures.yml").read_text())["exposures"]
    assert exposures == {exposure["name"] for exposure in declared}
    assert (tmp_path / "catalog.json").exists()
