"""docker-compose.yaml and the Dockerfile agree with the project (Docker cannot run here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cart_recovery.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_COMPONENTS = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _airflow_services(services: dict) -> dict:
    return {name: svc for name, svc in services.items() if name.startswith("airflow-") or name == "webhooks"}


def test_the_stack_has_every_component(services):
    assert AIRFLOW_COMPONENTS | {"postgres", "airflow-init", "webhooks"} <= set(services)
    assert {"redis", "airflow-worker"} <= set(services)
    assert services["redis"]["profiles"] == ["celery"]
    assert services["airflow-worker"]["profiles"] == ["celery"]


def test_every_long_running_service_has_a_health_check(services):
    for name, service in services.items():
        if name != "airflow-init":
            assert "healthcheck" in service, f"{name} has no health check"


def test_one_jwt_secret_shared_by_every_airflow_component(services):
    secrets = {
        svc["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] for svc in _airflow_services(services).values()
    }
    assert len(secrets) == 1
    assert secrets.pop().startswith("${AIRFLOW_JWT_SECRET:?")  # required, never a default in git


def test_local_executor_by_default_celery_on_request(services):
    executor = services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"]
    assert executor == "${AIRFLOW_EXECUTOR:-LocalExecutor}"
    assert "redis" in services["airflow-worker"]["depends_on"]


def test_separate_databases_for_airflow_and_the_warehouse(services):
    env = services["airflow-scheduler"]["environment"]
    airflow_db = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[1]
    warehouse_db = env["CART_RECOVERY_DATABASE_URL"].rsplit("/", 1)[1]
    assert airflow_db != warehouse_db
    # The project's convention (cart_recovery.database.Database.airflow), so `cart-recovery init` agrees.
    assert airflow_db == f"{warehouse_db}_airflow"
    init_sql = (ROOT / "docker" / "postgres-init.sql").read_text()
    assert f"create database {airflow_db}" in init_sql and f"create database {warehouse_db}" in init_sql


def test_dbt_profile_variables_are_set(services):
    profile = (ROOT / "dbt_project" / "profiles.yml").read_text()
    used = set(re.findall(r"env_var\('([A-Z_]+)'", profile))
    assert used, "profiles.yml reads no environment variables"
    for name, service in _airflow_services(services).items():
        missing = used - set(service["environment"])
        assert not missing, f"{name} lacks {missing}"


def test_commands_exist(services):
    parser = build_parser()
    subcommands = set(parser._subparsers._group_actions[0].choices)
    for name, service in services.items():
        command = service.get("command")
        if command and command[0] == "cart-recovery":
            assert command[1] in subcommands, f"{name} runs unknown subcommand {command[1]!r}"
    assert services["airflow-init"]["command"] == ["cart-recovery", "init"]
    for service_name in AIRFLOW_COMPONENTS - {"airflow-apiserver"}:
        component = service_name.removeprefix("airflow-")
        assert services[service_name]["command"][:3] == ["cart-recovery", "airflow", component]


def test_components_wait_for_the_init_job(services):
    for name in AIRFLOW_COMPONENTS | {"webhooks"}:
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"


def test_mounted_and_copied_paths_exist(services):
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{source} is mounted but missing"
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?:--chown=\S+ )?(.+?) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is missing"
    assert "requirements.lock" in dockerfile  # the image installs exactly the lock
