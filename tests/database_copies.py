"""Test databases copied from migrated templates, so tests never share tables they change.

PostgreSQL copies a database from a template in well under a second, where running the
migrations (and ``airflow db migrate``) takes tens of seconds. So the suite keeps two template
databases on the server, named after a fingerprint of what built them (the migration files and
the Airflow version), so an edited migration or another branch gets templates of its own:

- ``<warehouse>_test_t<fingerprint>`` (the project's migrations) and
- ``<warehouse>_test_t<fingerprint>_airflow`` (Airflow's metadata schema).

Every pytest process (each xdist worker, each of two sessions on one checkout or on two
machines sharing a configured server) gets its own copies, named ``<warehouse>_test_s<token>``
after a random token, and a test module that truncates or rebuilds shared tables gets a further
private warehouse (``module_database`` in ``conftest.py``).

A session holds a server-side advisory lock on its token for as long as it runs. Copies whose
lock anybody can take belong to a session that has ended (killed, or crashed before cleaning
up): the next session drops them. Nothing connects to a template except under another advisory
lock, because PostgreSQL refuses to copy a database that has other connections.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping
from importlib.metadata import version

import psycopg2
from psycopg2 import sql

from cart_recovery import bootstrap
from cart_recovery.database import Database, migrate

log = logging.getLogger(__name__)

# pg_advisory_lock keys: one bigint for the templates, (namespace, hashtext(token)) per session.
_TEMPLATE_LOCK = 0x63617274  # "cart"
_SESSION_NAMESPACE = 0x74657374  # "test"
MAX_NAME_BYTES = 63  # PostgreSQL cuts longer names, so two copies could become one database
LONGEST_SUFFIX = "_e2e_airflow"  # tests/integration/test_make_up.py's stack, beside the session's


def fingerprint() -> str:
    """What the templates are built from: the migration files' contents and Airflow's version."""
    digest = hashlib.sha256(version("apache-airflow-core").encode())
    for migration in migrate.available_migrations():
        digest.update(f"{migration.version}:{migration.name}:{migration.sql}".encode())
    return digest.hexdigest()[:8]


def check_name_lengths(*databases: Database) -> None:
    for database in databases:
        longest = f"{database.warehouse.database}{LONGEST_SUFFIX}"
        if len(longest.encode()) > MAX_NAME_BYTES:
            raise ValueError(
                f"The test databases would be named like {longest!r}, longer than PostgreSQL's "
                f"{MAX_NAME_BYTES} bytes: use a shorter warehouse database name in "
                "CART_RECOVERY_DATABASE_URL to run the tests."
            )


def _admin(database: Database):
    conn = psycopg2.connect(
        database.warehouse.set(database="postgres").render_as_string(hide_password=False), connect_timeout=10
    )
    conn.autocommit = True
    return conn


@contextlib.contextmanager
def templates_locked(database: Database) -> Iterator[psycopg2.extensions.connection]:
    """The server-wide lock held while a template is built or copied; yields an admin connection."""
    with contextlib.closing(_admin(database)) as conn:  # closing releases the advisory lock too
        with conn.cursor() as cur:
            cur.execute("select pg_advisory_lock(%s)", (_TEMPLATE_LOCK,))
        yield conn


def hold_session(database: Database, token: str) -> psycopg2.extensions.connection:
    """Take this session's advisory lock; the returned connection holds it until closed."""
    conn = _admin(database)
    with conn.cursor() as cur:
        cur.execute("select pg_advisory_lock(%s, hashtext(%s))", (_SESSION_NAMESPACE, token))
    return conn


def _exists(admin, name: str) -> bool:
    with admin.cursor() as cur:
        cur.execute("select 1 from pg_database where datname = %s", (name,))
        return cur.fetchone() is not None


def _create(admin, name: str, template: str | None = None) -> None:
    with admin.cursor() as cur:
        if template:
            cur.execute(
                sql.SQL("create database {} template {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        else:
            cur.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


def drop(admin, name: str) -> None:
    with admin.cursor() as cur:
        cur.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _names_like(admin, prefix: str) -> list[str]:
    with admin.cursor() as cur:
        cur.execute(
            "select datname from pg_database where datname like %s", (prefix.replace("_", r"\_") + "%",)
        )
        return [name for (name,) in cur.fetchall()]


def _ensure_template_warehouse(admin, template: Database) -> None:
    if not _exists(admin, template.warehouse.database):
        # Templates of another fingerprint are from an older state of the migrations or Airflow.
        prefix = template.warehouse.database[: -len(fingerprint())]
        for name in _names_like(admin, prefix):
            log.info("Dropping %s, a test template of other migrations", name)
            drop(admin, name)
        _create(admin, template.warehouse.database)
    migrate.upgrade(template.url)


def copy_warehouse(template: Database, copy: Database) -> None:
    """``copy``'s warehouse as a fresh copy of the migrated template warehouse."""
    with templates_locked(template) as admin:
        _ensure_template_warehouse(admin, template)
        drop(admin, copy.warehouse.database)
        _create(admin, copy.warehouse.database, template.warehouse.database)


def copy_airflow(template: Database, copy: Database, env: Mapping[str, str]) -> None:
    """``copy``'s Airflow metadata database as a copy of the template, migrated for this Airflow."""
    with templates_locked(template) as admin:
        _ensure_template_warehouse(admin, template)  # it records which Airflow migrated
        if not _exists(admin, template.airflow.database):
            _create(admin, template.airflow.database)
        template_env = {**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": template.airflow_sqlalchemy_url}
        bootstrap.airflow_db_migrate(template, template_env, force=False)
        drop(admin, copy.airflow.database)
        _create(admin, copy.airflow.database, template.airflow.database)


def drop_copies(copy: Database, *names: str) -> None:
    with contextlib.closing(_admin(copy)) as admin:
        for name in names:
            drop(admin, name)


def drop_abandoned_copies(base: Database, mine: str) -> None:
    """Drop the copies of sessions that have ended: their advisory lock is free."""
    prefix = f"{base.warehouse.database}_test_s"
    pattern = re.compile(rf"^{re.escape(prefix)}([0-9a-f]{{8}})(?:_|$)")
    with contextlib.closing(_admin(base)) as admin, admin.cursor() as cur:
        by_token: dict[str, list[str]] = {}
        for name in _names_like(admin, prefix):
            match = pattern.match(name)
            if match and match.group(1) != mine:
                by_token.setdefault(match.group(1), []).append(name)
        for token, names in by_token.items():
            cur.execute("select pg_try_advisory_lock(%s, hashtext(%s))", (_SESSION_NAMESPACE, token))
            if cur.fetchone()[0]:  # nobody holds it: that session is gone
                for name in names:
                    log.info("Dropping %s, left by a test session that did not finish", name)
                    drop(admin, name)
                cur.execute("select pg_advisory_unlock(%s, hashtext(%s))", (_SESSION_NAMESPACE, token))
