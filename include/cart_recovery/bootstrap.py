"""Bring a database and Airflow installation to a runnable state, idempotently and cheaply.

Used by ``cart-recovery init``, ``cart-recovery airflow``, ``make up``, the containers and the
tests: create the databases, run the project's migrations, migrate Airflow's metadata database
and write the dbt manifest that the ``cart_transform`` DAG renders from. Steps that are already
current are skipped, so calling this before every command costs well under a second.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from collections.abc import Mapping
from importlib.metadata import version

import psycopg2

from cart_recovery import settings
from cart_recovery.database import Database, migrate
from cart_recovery.errors import CartRecoveryError

log = logging.getLogger(__name__)

_DBT_SOURCE_SUFFIXES = {".sql", ".yml", ".yaml", ".csv", ".md"}


def run_checked(command: list[str], env: Mapping[str, str], what: str, cwd: str | None = None) -> None:
    """Run a step; on failure raise with the tail of its output so the operator sees why."""
    started = time.monotonic()
    log.info("%s ...", what)
    result = subprocess.run(command, env=dict(env), cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-3000:]
        raise CartRecoveryError(f"{what} failed (exit {result.returncode}):\n{output}")
    log.info("%s done in %.1f s", what, time.monotonic() - started)


def manifest_is_current(paths: settings.Paths) -> bool:
    manifest = paths.dbt_manifest
    if not manifest.exists():
        return False
    built = manifest.stat().st_mtime
    for folder in ("models", "seeds", "macros", "tests", "analyses"):
        for source in (paths.dbt_project / folder).rglob("*"):
            if source.suffix in _DBT_SOURCE_SUFFIXES and source.stat().st_mtime > built:
                return False
    return (paths.dbt_project / "dbt_project.yml").stat().st_mtime <= built


def dbt_parse(env: Mapping[str, str], paths: settings.Paths | None = None, *, force: bool = True) -> None:
    paths = paths or settings.Paths.from_env()
    if not force and manifest_is_current(paths):
        return
    run_checked(
        ["dbt", "parse", "--project-dir", str(paths.dbt_project), "--profiles-dir", str(paths.dbt_project)],
        env,
        "dbt parse (writes dbt_project/target/manifest.json)",
        cwd=str(paths.dbt_project),
    )


def _airflow_migrated_version(database: Database) -> str | None:
    # closing(): psycopg2's `with connection` ends the transaction but leaves the connection open.
    with contextlib.closing(psycopg2.connect(database.url)) as conn, conn, conn.cursor() as cur:
        cur.execute(
            "select airflow_version from ops.airflow_metadata where database_name = %s",
            (database.airflow.database,),
        )
        row = cur.fetchone()
    return row[0] if row else None


def airflow_db_migrate(database: Database, env: Mapping[str, str], *, force: bool = True) -> None:
    """``airflow db migrate``, skipped when this Airflow version already migrated that database."""
    installed = version("apache-airflow-core")
    if not force and _airflow_migrated_version(database) == installed:
        return
    run_checked(["airflow", "db", "migrate"], env, "airflow db migrate")
    with contextlib.closing(psycopg2.connect(database.url)) as conn, conn, conn.cursor() as cur:
        cur.execute(
            """
            insert into ops.airflow_metadata (database_name, airflow_version, migrated_at)
            values (%s, %s, now())
            on conflict (database_name) do update
                set airflow_version = excluded.airflow_version, migrated_at = excluded.migrated_at
            """,
            (database.airflow.database, installed),
        )


def prepare(database: Database, env: Mapping[str, str], *, force: bool = False) -> None:
    """Everything Airflow and dbt need; with ``force`` each step runs even if it looks current."""
    database.ensure_databases()
    applied = migrate.upgrade(database.url)
    if applied:
        log.info("Warehouse migrations applied: %s", ", ".join(f"{m.version:04d}_{m.name}" for m in applied))
    airflow_db_migrate(database, env, force=force)
    dbt_parse(env, force=force)
