"""Bring a database and Airflow installation to a runnable state, idempotently.

Used by ``cart-recovery init``, ``make up`` and the test suite: create the databases, run the
project's migrations, migrate Airflow's metadata database and write the dbt manifest that the
``cart_transform`` DAG renders from.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping

from cart_recovery import settings
from cart_recovery.database import Database, migrate
from cart_recovery.errors import CartRecoveryError

log = logging.getLogger(__name__)


def run_checked(command: list[str], env: Mapping[str, str], what: str, cwd: str | None = None) -> None:
    """Run a step; on failure raise with the tail of its output so the operator sees why."""
    started = time.monotonic()
    result = subprocess.run(command, env=dict(env), cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-3000:]
        raise CartRecoveryError(f"{what} failed (exit {result.returncode}):\n{output}")
    log.info("%s done in %.1f s", what, time.monotonic() - started)


def dbt_parse(env: Mapping[str, str], paths: settings.Paths | None = None) -> None:
    paths = paths or settings.Paths.from_env()
    run_checked(
        ["dbt", "parse", "--project-dir", str(paths.dbt_project), "--profiles-dir", str(paths.dbt_project)],
        env,
        "dbt parse (writes dbt_project/target/manifest.json)",
        cwd=str(paths.dbt_project),
    )


def prepare(database: Database, env: Mapping[str, str], *, airflow: bool = True, dbt: bool = True) -> None:
    database.ensure_databases()
    applied = migrate.upgrade(database.url)
    log.info("Warehouse migrations: %d applied now", len(applied))
    if airflow:
        run_checked(["airflow", "db", "migrate"], env, "airflow db migrate")
    if dbt:
        dbt_parse(env)
