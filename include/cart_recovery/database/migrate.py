"""Versioned, idempotent migrations of the operational schemas (``raw`` and ``ops``).

Each ``migrations/NNNN_name.sql`` file runs once, in its own transaction, recorded in
``ops.schema_migrations``. An advisory lock keeps two processes from migrating at once.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg2

from cart_recovery.errors import DatabaseError

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 7_402_118_001  # arbitrary, constant: "cart-recovery migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("cart_recovery.database").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise DatabaseError(f"Two migration files share a version number: {sorted(versions)}")
    return sorted(found, key=lambda m: m.version)


def upgrade(url: str) -> list[Migration]:
    """Apply the migrations that have not run yet; returns the ones applied by this call."""
    applied_now = []
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
            cur.execute("create schema if not exists ops")
            cur.execute(
                """
                    create table if not exists ops.schema_migrations (
                        version     integer primary key,
                        name        text not null,
                        applied_at  timestamptz not null default now()
                    )
                    """
            )
            cur.execute("select version from ops.schema_migrations")
            done = {row[0] for row in cur.fetchall()}
        for migration in available_migrations():
            if migration.version in done:
                continue
            log.info("Applying migration %04d_%s", migration.version, migration.name)
            with conn, conn.cursor() as cur:
                cur.execute(migration.sql)
                cur.execute(
                    "insert into ops.schema_migrations (version, name) values (%s, %s)",
                    (migration.version, migration.name),
                )
            applied_now.append(migration)
    except psycopg2.Error as exc:
        raise DatabaseError(f"Migration failed and was rolled back: {str(exc).strip()}") from exc
    finally:
        with conn.cursor() as cur:
            cur.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))
        conn.commit()
        conn.close()
    return applied_now
