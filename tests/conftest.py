"""Test session setup: a real PostgreSQL and an isolated Airflow home, before anything imports Airflow.

The suite uses the same server as the project (embedded, or ``CART_RECOVERY_DATABASE_URL``) but
its own databases, suffixed ``_test``, and its own AIRFLOW_HOME (``.airflow/test``), so running
the tests never touches the data of a local installation.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import psycopg2
import pytest

from cart_recovery import bootstrap
from cart_recovery.database import Database, migrate
from cart_recovery.environment import project_environment

_state: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    database = Database.from_env().with_suffix("_test")
    _state["started"] = database.start()
    database.ensure_databases()
    os.environ.update(project_environment(database, airflow_profile="test"))
    _state["database"] = database


def pytest_unconfigure(config: pytest.Config) -> None:
    is_xdist_worker = hasattr(config, "workerinput")
    if _state.get("started") and not is_xdist_worker:
        if "airflow.settings" in sys.modules:
            # Close Airflow's pooled connections now; at interpreter exit the server is gone.
            sys.modules["airflow.settings"].dispose_orm()
        _state["database"].stop()  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def database() -> Database:
    """The test databases, with the project's migrations applied."""
    database: Database = _state["database"]  # type: ignore[assignment]
    migrate.upgrade(database.url)
    return database


@pytest.fixture(scope="session")
def airflow_db(database: Database) -> Database:
    """Airflow's metadata database, migrated; needed by ``dag.test()`` and the API tests."""
    bootstrap.airflow_db_migrate(database, os.environ, force=False)
    return database


@pytest.fixture(scope="session")
def dbt_manifest(database: Database) -> None:
    """``dbt_project/target/manifest.json``, which the Cosmos DAGs render from."""
    bootstrap.dbt_parse(os.environ, force=False)


@pytest.fixture
def warehouse(database: Database) -> Iterator[psycopg2.extensions.connection]:
    """A connection to the test warehouse (autocommit off; rolled back at the end)."""
    conn = psycopg2.connect(database.url)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()
