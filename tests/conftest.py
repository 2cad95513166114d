"""Test session setup: a real PostgreSQL and an isolated Airflow home, before anything imports Airflow.

The suite uses the same server as the project (embedded, or ``CART_RECOVERY_DATABASE_URL``) but
never its databases: each pytest process gets its own warehouse and Airflow metadata database,
copied from migrated templates (``database_copies.py``), and a module that truncates or rebuilds
shared tables asks for ``module_database`` and gets a warehouse of its own. So tests pass alone,
in any order (pytest-randomly), under ``pytest -n 2``, and with two sessions on one checkout.
Airflow's home is ``.airflow/test``, so running the tests never touches a local installation.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import secrets
import sys
from collections.abc import Callable, Iterator

import psycopg2
import pytest
from database_copies import (
    check_name_lengths,
    copy_airflow,
    copy_warehouse,
    drop_abandoned_copies,
    drop_copies,
    fingerprint,
    hold_session,
)
from sqlalchemy.engine import make_url

from cart_recovery import bootstrap, settings
from cart_recovery.database import Database
from cart_recovery.environment import project_environment, warehouse_environment

_state: dict[str, object] = {}
_module_numbers = itertools.count(1)

# The server the tests use, as the first pytest process found it. xdist workers inherit these
# (project_environment below points CART_RECOVERY_DATABASE_URL at the controller's own copy).
_BASE_URL_ENV = "CART_RECOVERY_TEST_BASE_URL"
_BASE_EMBEDDED_ENV = "CART_RECOVERY_TEST_BASE_EMBEDDED"


def _base_database() -> Database:
    inherited = os.environ.get(_BASE_URL_ENV)
    if inherited:
        return Database(warehouse=make_url(inherited), embedded=os.environ.get(_BASE_EMBEDDED_ENV) == "1")
    base = Database.from_env()
    os.environ[_BASE_URL_ENV] = base.url
    os.environ[_BASE_EMBEDDED_ENV] = "1" if base.embedded else "0"
    return base


def pytest_configure(config: pytest.Config) -> None:
    base = _base_database()
    token = secrets.token_hex(4)
    session = base.with_suffix(f"_test_s{token}")
    template = base.with_suffix(f"_test_t{fingerprint()}")
    try:
        check_name_lengths(session, template)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc
    if base.embedded:
        # Every session on this checkout holds a shared lock while it runs, taken before the
        # server starts; the last one to finish stops the server if a test session started it.
        data = settings.Paths.from_env().data
        data.mkdir(parents=True, exist_ok=True)
        _state["users"] = users = (data / "test-sessions.lock").open("a")
        fcntl.flock(users, fcntl.LOCK_SH)
        if session.start():
            (data / "test-started-server").touch()
    _state["holder"] = hold_session(base, token)
    os.environ.update(project_environment(session, airflow_profile="test"))
    _state.update(base=base, token=token, session=session, template=template, copies=[])


def pytest_unconfigure(config: pytest.Config) -> None:
    if "airflow.settings" in sys.modules:
        # Close Airflow's pooled connections before its database is dropped or the server stops.
        sys.modules["airflow.settings"].dispose_orm()
    try:
        copies: list[str] = _state.get("copies", [])  # type: ignore[assignment]
        if copies:
            drop_copies(_state["session"], *copies)  # type: ignore[arg-type]
    finally:
        holder = _state.pop("holder", None)
        if holder is not None:
            holder.close()  # type: ignore[attr-defined]
        _stop_the_server_if_last()


def _stop_the_server_if_last() -> None:
    """Stop the embedded server when a test session started it and no other one still uses it."""
    users = _state.get("users")
    if users is None:
        return
    try:
        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
    except BlockingIOError:
        return  # another session (or xdist worker) is still running: it stops the server
    marker = settings.Paths.from_env().data / "test-started-server"
    if marker.exists():
        _state["session"].stop()  # type: ignore[union-attr]
        marker.unlink()


def _copies() -> list[str]:
    return _state["copies"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def session_database() -> Database:
    """This process's warehouse: a copy of the migrated template, dropped when the session ends."""
    session: Database = _state["session"]  # type: ignore[assignment]
    drop_abandoned_copies(_state["base"], _state["token"])  # type: ignore[arg-type]
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
def fresh_airflow_db() -> Callable[[Database], contextlib.AbstractContextManager[Database]]:
    """A context manager that gives ``database`` an Airflow metadata database of its own,
    migrated (a fresh copy of the template, replacing any earlier one), for tests that run
    Airflow's components against it; dropped when the block ends."""

    @contextlib.contextmanager
    def fresh(database: Database) -> Iterator[Database]:
        name = database.airflow.database
        _copies().append(name)
        try:
            copy_airflow(_state["template"], database, os.environ)  # type: ignore[arg-type]
            yield database
        finally:
            drop_copies(_state["session"], name)  # type: ignore[arg-type]
            _copies().remove(name)

    return fresh


@pytest.fixture(scope="session")
def dbt_manifest(session_database: Database) -> None:
    """``dbt_project/target/manifest.json``, which the Cosmos DAGs render from (parsed by one
    session at a time: two sessions or xdist workers on a fresh checkout would both write it)."""
    target = settings.Paths.from_env().dbt_manifest.parent
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".parse.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
