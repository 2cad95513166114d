"""Test session setup: a real PostgreSQL and an isolated Airflow home, before anything imports Airflow.

The suite uses the same server as the project (embedded, or ``CART_RECOVERY_DATABASE_URL``) but
never its databases: each pytest process gets its own warehouse and Airflow metadata database,
copied from migrated templates (``database_copies.py``), and a module that truncates or rebuilds
shared tables asks for ``module_database`` and gets a warehouse of its own. So tests pass alone,
in any order (pytest-randomly), under ``pytest -n 2``, and with two sessions on one checkout.
Airflow's home is ``.airflow/test``, so running the tests never touches a local installation.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import sys
from collections.abc import Iterator

import psycopg2
import pytest
from database_copies import copy_airflow, copy_warehouse, drop_abandoned_copies, drop_copies

from cart_recovery import bootstrap, settings
from cart_recovery.database import Database
from cart_recovery.environment import project_environment, warehouse_environment

_state: dict[str, object] = {}
_module_numbers = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    base = Database.from_env()
    prefix = f"{base.warehouse.database}_test_p"
    session = base.with_suffix(f"_test_p{os.getpid()}")
    _state["started"] = session.start()
    if session.embedded:
        # Every session on this checkout holds a shared lock while it runs: the embedded server
        # is stopped only by the session that started it, and only when no other one still uses it.
        lock_path = settings.Paths.from_env().data / "test-sessions.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        _state["users"] = users = lock_path.open("a")
        fcntl.flock(users, fcntl.LOCK_SH)
    os.environ.update(project_environment(session, airflow_profile="test"))
    _state.update(
        base=base, prefix=prefix, session=session, template=base.with_suffix("_test_template"), copies=[]
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if "airflow.settings" in sys.modules:
        # Close Airflow's pooled connections before its database is dropped or the server stops.
        sys.modules["airflow.settings"].dispose_orm()
    copies: list[str] = _state.get("copies", [])  # type: ignore[assignment]
    if copies:
        drop_copies(_state["session"], *copies)  # type: ignore[arg-type]
    is_xdist_worker = hasattr(config, "workerinput")
    if _state.get("started") and not is_xdist_worker and _sole_user():
        _state["session"].stop()  # type: ignore[union-attr]


def _sole_user() -> bool:
    """True when no other test session (or xdist worker) still holds the embedded server."""
    users = _state.get("users")
    if users is None:
        return True
    try:
        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
    except BlockingIOError:
        print("\nThe embedded PostgreSQL stays up: another test session is still using it.")
        return False
    return True


def _copies() -> list[str]:
    return _state["copies"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def session_database() -> Database:
    """This process's warehouse: a copy of the migrated template, dropped when the session ends."""
    session: Database = _state["session"]  # type: ignore[assignment]
    drop_abandoned_copies(_state["base"], _state["prefix"])  # type: ignore[arg-type]
    _copies().append(session.warehouse.database)
    copy_warehouse(_state["template"], session)  # type: ignore[arg-type]
    return session


@pytest.fixture(scope="session")
def database(session_database: Database) -> Database:
    """The test warehouse, migrated. A module that changes shared tables overrides this fixture
    with ``module_database`` (see ``tests/dags/test_cart_transform.py``)."""
    return session_database


@pytest.fixture(scope="module")
def module_database(session_database: Database) -> Iterator[Database]:
    """A warehouse for this module alone (a fresh copy of the template), and the environment
    (Airflow connection, dbt's variables, ``CART_RECOVERY_DATABASE_URL``) pointing at it."""
    copy = session_database.with_suffix(f"_m{next(_module_numbers)}")
    _copies().append(copy.warehouse.database)
    copy_warehouse(_state["template"], copy)  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in warehouse_environment(copy).items():
            patch.setenv(name, value)
        yield copy
    drop_copies(copy, copy.warehouse.database)
    _copies().remove(copy.warehouse.database)


@pytest.fixture(scope="session")
def airflow_db(session_database: Database) -> Database:
    """Airflow's metadata database for this process, migrated; needed by ``dag.test()`` and the API tests."""
    _copies().append(session_database.airflow.database)
    copy_airflow(_state["template"], session_database, os.environ)  # type: ignore[arg-type]
    return session_database


@pytest.fixture(scope="session")
def dbt_manifest(session_database: Database) -> None:
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
