"""The warehouse database: which server, which databases, and making sure they exist.

``CART_RECOVERY_DATABASE_URL`` names the warehouse (any PostgreSQL 14+). When it is unset the
embedded server under ``.data/postgres`` is used. Airflow's metadata lives in its own database
on the same server, named after the warehouse with an ``_airflow`` suffix.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, replace

from sqlalchemy.engine import URL, make_url

from cart_recovery import settings
from cart_recovery.database.embedded import EmbeddedPostgres
from cart_recovery.errors import ConfigurationError, DatabaseError

log = logging.getLogger(__name__)


def embedded_server(paths: settings.Paths | None = None) -> EmbeddedPostgres:
    paths = paths or settings.Paths.from_env()
    port = int(os.environ.get(settings.EMBEDDED_PORT_ENV, settings.DEFAULT_EMBEDDED_PORT))
    return EmbeddedPostgres(paths.embedded_pgdata, preferred_port=port)


@dataclass(frozen=True)
class Database:
    """The warehouse URL plus where Airflow's metadata lives."""

    warehouse: URL
    embedded: bool

    @classmethod
    def from_env(cls) -> Database:
        configured = os.environ.get(settings.DATABASE_URL_ENV)
        if configured:
            try:
                url = make_url(configured)
            except Exception as exc:
                raise ConfigurationError(
                    f"{settings.DATABASE_URL_ENV} is not a valid URL ({exc}); expected "
                    "postgresql://user:password@host:5432/database"
                ) from exc
            if not url.drivername.startswith("postgresql") or not url.database:
                raise ConfigurationError(
                    f"{settings.DATABASE_URL_ENV} must be a postgresql:// URL that names a database, "
                    f"got {url.render_as_string(hide_password=True)}"
                )
            return cls(warehouse=url.set(drivername="postgresql"), embedded=False)
        server = embedded_server()
        return cls(warehouse=make_url(server.url(settings.DEFAULT_WAREHOUSE_DB)), embedded=True)

    def with_suffix(self, suffix: str) -> Database:
        """The same server with differently named databases, e.g. ``_test`` for the test suite."""
        return replace(self, warehouse=self.warehouse.set(database=f"{self.warehouse.database}{suffix}"))

    @property
    def airflow(self) -> URL:
        return self.warehouse.set(database=f"{self.warehouse.database}_airflow")

    @property
    def url(self) -> str:
        return self.warehouse.render_as_string(hide_password=False)

    @property
    def airflow_sqlalchemy_url(self) -> str:
        return self.airflow.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)

    def start(self) -> bool:
        """Start the embedded server when it is the one in use. True when this call started it."""
        return embedded_server().start() if self.embedded else False

    def stop(self) -> None:
        if self.embedded:
            embedded_server().stop()

    def ensure_databases(self) -> None:
        """Create the warehouse and Airflow databases when missing (idempotent)."""
        import psycopg2
        from psycopg2 import sql

        admin = self.warehouse.set(database="postgres")
        try:
            conn = psycopg2.connect(admin.render_as_string(hide_password=False), connect_timeout=10)
        except psycopg2.OperationalError as exc:
            where = (
                "the embedded server (try `cart-recovery db start`)"
                if self.embedded
                else (f"{settings.DATABASE_URL_ENV}")
            )
            raise DatabaseError(
                f"Cannot connect to PostgreSQL at {admin.render_as_string(hide_password=True)}: "
                f"{str(exc).strip()}. Check {where}."
            ) from exc
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for name in (self.warehouse.database, self.airflow.database):
                    cur.execute("select 1 from pg_database where datname = %s", (name,))
                    if cur.fetchone() is None:
                        log.info("Creating database %s", name)
                        # Another process may create it in the meantime (parallel test workers).
                        with contextlib.suppress(psycopg2.errors.DuplicateDatabase):
                            cur.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        except psycopg2.errors.InsufficientPrivilege as exc:
            raise DatabaseError(
                f"The user in {settings.DATABASE_URL_ENV} may not create databases. Create "
                f"{self.warehouse.database!r} and {self.airflow.database!r} yourself, then retry."
            ) from exc
        finally:
            conn.close()
