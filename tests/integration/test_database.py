"""The embedded server and the migrations, against real PostgreSQL servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from cart_recovery.database import Database, migrate
from cart_recovery.database.embedded import EmbeddedPostgres
from cart_recovery.errors import DatabaseError

CLI = str(Path(sys.executable).parent / "cart-recovery")


@pytest.fixture
def throwaway_server(tmp_path_factory):
    """A second, independent PostgreSQL: stands in for "another server" in configured mode."""
    root = tmp_path_factory.mktemp("pg")
    root.chmod(0o755)
    server = EmbeddedPostgres(root / "data", preferred_port=_free_port())
    assert server.start() is True
    yield server
    server.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_embedded_server_starts_once_and_stops(throwaway_server):
    assert throwaway_server.is_running()
    assert throwaway_server.start() is False  # already running: reused, not started twice
    with psycopg2.connect(throwaway_server.url()) as conn, conn.cursor() as cur:
        cur.execute("show listen_addresses")
        assert cur.fetchone()[0] == "127.0.0.1"
    throwaway_server.stop()
    assert not throwaway_server.is_running()
    assert throwaway_server.start() is True  # the data folder is reused
    with psycopg2.connect(throwaway_server.url()) as conn, conn.cursor() as cur:
        cur.execute("select 1")


def test_port_taken_by_someone_else_is_a_clear_error(throwaway_server, tmp_path):
    other = EmbeddedPostgres(tmp_path / "other", preferred_port=throwaway_server.port)
    # An initialised data folder pinned to a port that another server now holds.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "PG_VERSION").write_text("18")
    (tmp_path / "other" / "postgresql.auto.conf").write_text(f"port = {throwaway_server.port}\n")
    with pytest.raises(DatabaseError, match="taken by another program"):
        other.start()


def test_migrations_are_idempotent(database):
    assert migrate.upgrade(database.url) == []  # the session fixture already applied them
    with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
        cur.execute("select version from ops.schema_migrations order by version")
        versions = [row[0] for row in cur.fetchall()]
    assert versions == [m.version for m in migrate.available_migrations()]


def test_configured_url_is_used_for_everything(throwaway_server, monkeypatch):
    url = throwaway_server.url("shopdata")
    env = {**os.environ, "CART_RECOVERY_DATABASE_URL": url}
    printed = subprocess.run([CLI, "db", "url"], env=env, capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == url
    subprocess.run([CLI, "db", "upgrade"], env=env, check=True, capture_output=True)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from ops.schema_migrations")
        assert cur.fetchone()[0] == len(migrate.available_migrations())
        cur.execute("select to_regclass('raw.webhook_events') is not null")
        assert cur.fetchone()[0]
    # Airflow's metadata goes to its own database on the same server.
    result = subprocess.run([CLI, "airflow", "db", "check"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    with psycopg2.connect(throwaway_server.url("postgres")) as conn, conn.cursor() as cur:
        cur.execute("select datname from pg_database where datname like 'shopdata%' order by 1")
        assert [row[0] for row in cur.fetchall()] == ["shopdata", "shopdata_airflow"]


def test_unreachable_server_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CART_RECOVERY_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{_free_port()}/x")
    with pytest.raises(DatabaseError, match="Cannot connect"):
        Database.from_env().ensure_databases()
