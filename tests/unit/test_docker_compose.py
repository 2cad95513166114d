"""docker-compose.yaml as Compose reads it: parsed, interpolated, checked against the Compose Specification.

Docker cannot run here, so the file is loaded the way Compose loads it: YAML (merge keys resolved),
variables interpolated from an env file (``compose_interpolation``), then validated with
``jsonschema`` against the specification's schema, vendored in ``tests/schemas/``. The services
each profile starts are computed as Compose does. The project-specific checks below run on that
interpolated structure. By hand, Debian's docker-compose 1.29 gives the same verdicts on this file
(``docker-compose --env-file <env> [--profile celery] -f docker-compose.yaml config -q``); it does
not check the format of durations, which this test does (Go durations, as Compose parses them).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import yaml
from compose_interpolation import MissingRequiredValue, interpolate_config, parse_env_file
from jsonschema.exceptions import best_match
from sqlalchemy.engine import make_url

from cart_recovery.cli import parse_args

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA_FILE = ROOT / "tests" / "schemas" / "compose-spec.json"

AIRFLOW_COMPONENTS = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}
CELERY_ONLY = {"redis", "airflow-worker"}
# What a user writes into the copy of .env.example (left empty there: never a secret in git).
SECRETS = {"AIRFLOW_JWT_SECRET": "test-jwt-secret", "CART_RECOVERY_ADMIN_PASSWORD": "test-admin-password"}
# name: (what .env changes besides the secrets, the profiles given to Compose)
SCENARIOS = {
    "default": ({}, ()),
    "celery": ({"AIRFLOW_EXECUTOR": "CeleryExecutor"}, ("celery",)),
}

# Compose durations are Go durations ("5s", "1m30s"); the schema marks them "format": "duration".
GO_DURATION = re.compile(r"[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)")
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("duration")
def _is_duration(instance: object) -> bool:
    return not isinstance(instance, str) or GO_DURATION.fullmatch(instance) is not None


# --- loading the file as Compose does -------------------------------------------------------------


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE.read_text())


@pytest.fixture(scope="module")
def filled_env(example_env) -> dict[str, str]:
    return {**example_env, **SECRETS}


def _scenario_env(filled_env: dict[str, str], scenario: str) -> dict[str, str]:
    return {**filled_env, **SCENARIOS[scenario][0]}


@pytest.fixture(scope="module")
def compose(raw, filled_env) -> dict:
    return interpolate_config(raw, filled_env)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema, default=None)
    if cls is None:
        # This copy names its draft "http://json-schema.org/draft/2019-09/schema#"; the draft's own
        # id is https://... Look that up instead of silently validating with the newest draft.
        canonical = schema["$schema"].replace("http://", "https://", 1).rstrip("#")
        cls = jsonschema.validators.validator_for({"$schema": canonical}, default=None)
    assert cls is not None, f"jsonschema knows no validator for $schema {schema['$schema']!r}"
    cls.check_schema(schema)
    return cls(schema, format_checker=FORMATS)


def schema_errors(validator: jsonschema.protocols.Validator, document: dict) -> list[str]:
    """Every schema error, with its path (and, under oneOf/anyOf, the most specific cause)."""
    messages = []
    for error in validator.iter_errors(document):
        message = f"{error.json_path}: {error.message}"
        cause = best_match([error])
        if cause is not error:
            message += f" [{cause.json_path}: {cause.message}]"
        messages.append(message)
    return sorted(messages)


def active_services(services: dict, profiles: tuple[str, ...]) -> set[str]:
    """What Compose starts: a service without profiles always, one with profiles if one is active."""
    return {
        name
        for name, service in services.items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


def dependencies(service: dict) -> dict[str, str]:
    """depends_on as {service: condition}, from the short (list) or the long (mapping) syntax."""
    depends_on = service.get("depends_on", {})
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends_on.items()}


def inactive_dependencies(services: dict, active: set[str]) -> list[str]:
    """ "service -> dependency" for each dependency of an active service that Compose would not start."""
    return sorted(
        f"{name} -> {dependency}"
        for name in active
        for dependency in dependencies(services[name])
        if dependency not in active
    )


def _built(services: dict) -> dict:
    """The services that run the project's image (they share x-airflow-common)."""
    return {name: service for name, service in services.items() if "build" in service}


# --- interpolation with .env.example --------------------------------------------------------------


def test_env_example_leaves_the_secrets_to_the_user(example_env):
    assert {name: example_env.get(name) for name in SECRETS} == dict.fromkeys(SECRETS, "")
    assert example_env["AIRFLOW_EXECUTOR"] == "LocalExecutor"


def test_env_example_as_shipped_is_refused(raw, example_env):
    """As `docker-compose --env-file .env.example config` does: exit 1, with the file's message."""
    with pytest.raises(MissingRequiredValue) as refused:
        interpolate_config(raw, example_env)
    assert refused.value.variable == "AIRFLOW_JWT_SECRET"
    assert refused.value.message == "set AIRFLOW_JWT_SECRET in .env (see .env.example)"
    assert refused.value.path[-1] == "AIRFLOW__API_AUTH__JWT_SECRET"


@pytest.mark.parametrize("how", ["empty", "unset"])
@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_each_secret_is_required(raw, filled_env, secret, how):
    """No default for a secret: the file refuses to start without it, empty or absent."""
    env = dict(filled_env)
    if how == "empty":
        env[secret] = ""
    else:
        del env[secret]
    with pytest.raises(MissingRequiredValue) as refused:
        interpolate_config(raw, env)
    assert refused.value.variable == secret
    assert f"set {secret} in .env" in refused.value.message


# --- the Compose Specification's schema -----------------------------------------------------------


def test_the_vendored_schema_is_the_compose_specification(validator):
    assert isinstance(validator, jsonschema.Draft201909Validator)
    assert validator.schema["title"] == "Compose Specification"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_interpolated_file_is_valid_against_the_compose_spec(raw, filled_env, validator, scenario):
    overrides, profiles = SCENARIOS[scenario]
    document = interpolate_config(raw, _scenario_env(filled_env, scenario))
    assert schema_errors(validator, document) == []
    # The model Compose runs with these profiles (the inactive services left out) is valid too.
    active = active_services(document["services"], profiles)
    project = {**document, "services": {n: s for n, s in document["services"].items() if n in active}}
    assert schema_errors(validator, project) == []
    executor = overrides.get("AIRFLOW_EXECUTOR", "LocalExecutor")
    assert {s["environment"]["AIRFLOW__CORE__EXECUTOR"] for s in _built(project["services"]).values()} == {
        executor
    }


def _misspell_healthcheck(document: dict) -> str:
    postgres = document["services"]["postgres"]
    postgres["helthcheck"] = postgres.pop("healthcheck")
    return "$.services.postgres: 'helthcheck' does not match any of the regexes"


def _misspell_condition(document: dict) -> str:
    document["services"]["webhooks"]["depends_on"]["postgres"]["condition"] = "service_healthyy"
    return "[$.services.webhooks.depends_on.postgres.condition: 'service_healthyy' is not one of"


def _unparsable_duration(document: dict) -> str:
    document["services"]["redis"]["healthcheck"]["interval"] = "5 seconds"
    return "$.services.redis.healthcheck.interval: '5 seconds' is not a 'duration'"


def _misspell_top_level_key(document: dict) -> str:
    document["volume"] = document.pop("volumes")
    return "$: 'volume' does not match any of the regexes: '^x-'"


@pytest.mark.parametrize(
    "break_it", [_misspell_healthcheck, _misspell_condition, _unparsable_duration, _misspell_top_level_key]
)
def test_the_schema_check_catches_a_mistake(compose, validator, break_it: Callable[[dict], str]):
    broken = copy.deepcopy(compose)
    expected = break_it(broken)
    errors = schema_errors(validator, broken)
    assert len(errors) == 1 and expected in errors[0], errors


# --- profiles --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_profile_starts_the_intended_services(services, scenario):
    active = active_services(services, SCENARIOS[scenario][1])
    if scenario == "celery":
        assert active == set(services)
        assert active >= CELERY_ONLY
    else:
        assert active == set(services) - CELERY_ONLY
    assert active >= AIRFLOW_COMPONENTS | {"postgres", "airflow-init", "webhooks"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_dependency_of_a_started_service_is_started(raw, filled_env, scenario):
    services = interpolate_config(raw, _scenario_env(filled_env, scenario))["services"]
    assert inactive_dependencies(services, active_services(services, SCENARIOS[scenario][1])) == []


def test_the_profile_check_catches_a_default_service_needing_a_celery_one(services):
    broken = copy.deepcopy(services)
    broken["webhooks"]["depends_on"]["redis"] = {"condition": "service_healthy"}
    assert inactive_dependencies(broken, active_services(broken, ())) == ["webhooks -> redis"]
    assert inactive_dependencies(broken, active_services(broken, ("celery",))) == []


# --- the project's own expectations, on the interpolated file ---------------------------------------


def test_the_stack_has_every_component(services):
    assert set(services) == AIRFLOW_COMPONENTS | {"postgres", "airflow-init", "webhooks"} | CELERY_ONLY
    assert set(_built(services)) == set(services) - {"postgres", "redis"}
    for name in CELERY_ONLY:
        assert services[name]["profiles"] == ["celery"]


def test_every_long_running_service_has_a_health_check(services):
    for name, service in services.items():
        if name == "airflow-init":
            assert service["restart"] == "no" and "healthcheck" not in service
            continue
        healthcheck = service.get("healthcheck", {})
        assert not healthcheck.get("disable"), f"{name}'s health check is disabled"
        assert healthcheck.get("test", [None])[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"


def test_one_jwt_secret_shared_by_every_airflow_component(services):
    secrets = {svc["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] for svc in _built(services).values()}
    assert secrets == {SECRETS["AIRFLOW_JWT_SECRET"]}  # the user's value, in every component


@pytest.mark.parametrize(
    ("executor_in_env", "expected"),
    [(None, "LocalExecutor"), ("LocalExecutor", "LocalExecutor"), ("CeleryExecutor", "CeleryExecutor")],
)
def test_local_executor_by_default_celery_on_request(raw, filled_env, executor_in_env, expected):
    env = {k: v for k, v in filled_env.items() if k != "AIRFLOW_EXECUTOR"}
    if executor_in_env:
        env["AIRFLOW_EXECUTOR"] = executor_in_env
    services = interpolate_config(raw, env)["services"]
    assert {s["environment"]["AIRFLOW__CORE__EXECUTOR"] for s in _built(services).values()} == {expected}
    assert dependencies(services["airflow-worker"])["redis"] == "service_healthy"
    broker = make_url(services["airflow-worker"]["environment"]["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.host == "redis" and broker.host in services


def test_separate_databases_for_airflow_and_the_warehouse(services):
    (env,) = {json.dumps(s["environment"], sort_keys=True) for s in _built(services).values()}
    env = json.loads(env)  # the same environment in every component
    airflow = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    warehouse = make_url(env["CART_RECOVERY_DATABASE_URL"])
    result_backend = make_url(env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+"))
    assert airflow.database != warehouse.database
    # The project's convention (cart_recovery.database.Database.airflow), so `cart-recovery init` agrees.
    assert airflow.database == f"{warehouse.database}_airflow"
    assert result_backend.database == airflow.database
    for url in (airflow, warehouse, result_backend):
        assert (url.host, url.port) == ("postgres", 5432) and url.host in services
    # dbt's connection (libpq parts) and the Airflow connection name the same warehouse.
    assert {
        "CART_RECOVERY_DB_HOST": warehouse.host,
        "CART_RECOVERY_DB_PORT": str(warehouse.port),
        "CART_RECOVERY_DB_USER": warehouse.username,
        "CART_RECOVERY_DB_PASSWORD": warehouse.password,
        "CART_RECOVERY_DB_NAME": warehouse.database,
    } == {k: env[k] for k in env if k.startswith("CART_RECOVERY_DB_")}
    connection = json.loads(env["AIRFLOW_CONN_CART_RECOVERY_WAREHOUSE"])
    assert (connection["host"], connection["port"], connection["login"], connection["password"]) == (
        warehouse.host,
        warehouse.port,
        warehouse.username,
        warehouse.password,
    )
    assert connection["schema"] == warehouse.database
    # postgres-init.sql, mounted into the postgres service, creates that user and both databases.
    init_sql = (ROOT / "docker" / "postgres-init.sql").read_text()
    users = dict(re.findall(r"create user (\w+) with password '([^']*)'", init_sql, re.IGNORECASE))
    databases = dict(re.findall(r"create database (\w+) owner (\w+)", init_sql, re.IGNORECASE))
    assert users == {warehouse.username: warehouse.password}
    assert databases == {warehouse.database: warehouse.username, airflow.database: warehouse.username}
    assert any(v.startswith("./docker/postgres-init.sql:") for v in services["postgres"]["volumes"])


def _strings(value: object):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_dbt_profile_variables_are_set(services):
    profiles = yaml.safe_load((ROOT / "dbt_project" / "profiles.yml").read_text())
    used = {name for text in _strings(profiles) for name in re.findall(r"env_var\(\s*['\"](\w+)['\"]", text)}
    assert used, "profiles.yml reads no environment variables"
    for name, service in _built(services).items():
        missing = used - set(service["environment"])
        assert not missing, f"{name} lacks {missing}"


# Runs Airflow's own argument parser on argv lists; prints one JSON line: None or the error, per argv.
_AIRFLOW_PARSE = """
import contextlib, io, json, sys
from airflow.cli.cli_parser import get_parser
results = []
for argv in json.loads(sys.argv[1]):
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            get_parser().parse_args(argv)
    except SystemExit as exit:
        results.append(output.getvalue().strip().splitlines()[-1:] or [f"exit {exit.code}"])
    else:
        results.append(None)
print("PARSED " + json.dumps(results))
"""


def _airflow_parse(argvs: list[list[str]], executor: str) -> list[list[str] | None]:
    env = {**os.environ, "AIRFLOW__CORE__EXECUTOR": executor}
    result = subprocess.run(
        [sys.executable, "-c", _AIRFLOW_PARSE, json.dumps(argvs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PARSED ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("PARSED "))


def test_commands_exist(raw, filled_env):
    # Every service, with the celery scenario's environment (where all of them run).
    services = interpolate_config(raw, _scenario_env(filled_env, "celery"))["services"]
    airflow_argvs: dict[str, list[str]] = {}
    for name, service in services.items():
        command = service.get("command")
        if command and command[0] == "cart-recovery":
            try:
                args = parse_args(command[1:])  # as `cart-recovery` parses its command line
            except SystemExit:
                pytest.fail(f"{name}: `cart-recovery` refuses {command[1:]}")
            if args.command == "airflow":
                airflow_argvs[f"{name} command"] = args.args
        test = service.get("healthcheck", {}).get("test", [])
        if test[:1] == ["CMD-SHELL"] and test[1].startswith("airflow "):
            airflow_argvs[f"{name} health check"] = shlex.split(test[1])[1:]
    with pytest.raises(SystemExit):
        parse_args(["no-such-command"])  # the parser does refuse an unknown command

    assert services["airflow-init"]["command"] == ["cart-recovery", "init"]
    assert services["airflow-apiserver"]["command"][:3] == ["cart-recovery", "airflow", "api-server"]
    for service_name in AIRFLOW_COMPONENTS - {"airflow-apiserver"}:
        component = service_name.removeprefix("airflow-")
        assert services[service_name]["command"][:3] == ["cart-recovery", "airflow", component]
    assert services["airflow-worker"]["command"][:4] == ["cart-recovery", "airflow", "celery", "worker"]

    # Airflow's parser accepts every Airflow command line of the file, and refuses a misspelt one.
    executor = services["airflow-worker"]["environment"]["AIRFLOW__CORE__EXECUTOR"]
    control = ["celery", "workerr"]
    verdicts = _airflow_parse([*airflow_argvs.values(), control], executor)
    refused = {what: v for what, v in zip(airflow_argvs, verdicts[:-1], strict=True) if v is not None}
    assert refused == {}
    assert verdicts[-1] is not None and "workerr" in verdicts[-1][0]
    assert len(airflow_argvs) >= len(AIRFLOW_COMPONENTS) + 1  # the components, the worker, health checks


def test_components_wait_for_the_init_job(services):
    assert dependencies(services["airflow-init"]) == {"postgres": "service_healthy"}
    for name in set(_built(services)) - {"airflow-init"}:
        depends = dependencies(services[name])
        assert depends["airflow-init"] == "service_completed_successfully", name
        assert depends["postgres"] == "service_healthy", name


def test_mounted_and_copied_paths_exist(compose, services):
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
            else:
                assert source in compose.get("volumes", {}), f"{name} uses undeclared volume {source}"
        if "build" in service:
            context = service["build"] if isinstance(service["build"], str) else service["build"]["context"]
            assert (ROOT / context / "Dockerfile").is_file(), f"{name} builds from {context}, no Dockerfile"
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?:--chown=\S+ )?(.+?) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is missing"
    assert "requirements.lock" in dockerfile  # the image installs exactly the lock
