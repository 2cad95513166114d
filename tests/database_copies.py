"""Test databases copied from migrated templates, so tests never share tables they change.

PostgreSQL copies a database from a template in well under a second, where running the
migrations (and ``airflow db migrate``) takes tens of seconds. So the suite keeps two template
databases on the server, migrated once and refreshed when the migrations or Airflow change:

- ``<warehouse>_test_template`` (the project's migrations) and
- ``<warehouse>_test_template_airflow`` (Airflow's metadata schema).

Every pytest process (each xdist worker, each of two sessions on one checkout) gets its own
copies, named after its process id, and a test module that truncates or rebuilds shared tables
gets a further private warehouse (``module_database`` in ``conftest.py``). Copies are dropped
when the process ends; copies left by a process that was killed are dropped by the next session.

Nothing connects to a template except under a server-wide advisory lock, because PostgreSQL
refuses to copy a database that has other connections.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping

import psycopg2
from psycopg2 import sql

from cart_recovery import bootstrap
from cart_recovery.database import Database, migrate

log = logging.getLogger(__name__)

# Any constant shared by every test process on the server: pg_advisory_lock's key.
_TEMPLATE_LOCK = 0x63617274  # "cart"


def _admin(database: Database):
    conn = psycopg2.connect(database.warehouse.set(database="postgres").render_as_string(hide_password=False))
    conn.autocommit = True
    return conn


@contextlib.contextmanager
def templates_locked(database: Database) -> Iterator[psycopg2.extensions.connection]:
    """The server-wide lock held while a template is migrated or copied; yields an admin connection."""
    conn = _admin(database)
    try:
        with conn.cursor() as cur:
            cur.execute("select pg_advisory_lock(%s)", (_TEMPLATE_LOCK,))
        yield conn
    finally:
        conn.close()  # releases the session-level advisory lock


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


def copy_warehouse(template: Database, copy: Database) -> None:
    """``copy``'s warehouse as a fresh copy of the migrated template warehouse."""
    with templates_locked(template) as admin:
        if not _exists(admin, template.warehouse.database):
            _create(admin, template.warehouse.database)
        migrate.upgrade(template.url)  # a no-op unless a migration was added since
        drop(admin, copy.warehouse.database)
        _create(admin, copy.warehouse.database, template.warehouse.database)


def copy_airflow(template: Database, copy: Database, env: Mapping[str, str]) -> None:
    """``copy``'s Airflow metadata database as a copy of the template, migrated for this Airflow."""
    with templates_locked(template) as admin:
        if not _exists(admin, template.warehouse.database):
            _create(admin, template.warehouse.database)
        migrate.upgrade(template.url)  # holds the record of which Airflow migrated the template
        if not _exists(admin, template.airflow.database):
            _create(admin, template.airflow.database)
        template_env = {
            **env,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": template.airflow_sqlalchemy_url,
        }
        bootstrap.airflow_db_migrate(template, template_env, force=False)
        drop(admin, copy.airflow.database)
        _create(admin, copy.airflow.database, template.airflow.database)


def drop_copies(copy: Database, *names: str) -> None:
    with contextlib.closing(_admin(copy)) as admin:
        for name in names:
            drop(admin, name)


def drop_abandoned_copies(base: Database, prefix: str) -> None:
    """Drop copies named ``<prefix><pid>...`` whose process is gone and that nobody uses."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)(?:_|$)")
    with contextlib.closing(_admin(base)) as admin, admin.cursor() as cur:
        cur.execute(
            """
            select datname from pg_database d
            where datname like %s
              and not exists (select 1 from pg_stat_activity a where a.datname = d.datname)
            """,
            (prefix.replace("_", r"\_") + "%",),
        )
        for (name,) in cur.fetchall():
            match = pattern.match(name)
            if match and not _process_alive(int(match.group(1))):
                log.info("Dropping %s, left by a test session that did not finish", name)
                drop(admin, name)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
