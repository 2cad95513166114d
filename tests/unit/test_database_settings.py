from __future__ import annotations

import json

import pytest

from cart_recovery.database import Database
from cart_recovery.environment import project_environment
from cart_recovery.errors import ConfigurationError
from cart_recovery.settings import Paths


def test_configured_url_wins_over_embedded(monkeypatch):
    monkeypatch.setenv("CART_RECOVERY_DATABASE_URL", "postgresql://etl:s3cret@db.internal:6543/shopdata")
    database = Database.from_env()
    assert not database.embedded
    assert database.warehouse.database == "shopdata"
    assert database.airflow.database == "shopdata_airflow"
    assert (
        database.airflow_sqlalchemy_url
        == "postgresql+psycopg2://etl:s3cret@db.internal:6543/shopdata_airflow"
    )


def test_embedded_default_listens_on_loopback_tcp(monkeypatch):
    monkeypatch.delenv("CART_RECOVERY_DATABASE_URL", raising=False)
    database = Database.from_env()
    assert database.embedded
    assert database.warehouse.host == "127.0.0.1" and database.warehouse.port


@pytest.mark.parametrize("url", ["mysql://root@localhost/db", "postgresql://localhost", "not a url"])
def test_bad_urls_are_refused_with_the_expected_form(monkeypatch, url):
    monkeypatch.setenv("CART_RECOVERY_DATABASE_URL", url)
    with pytest.raises(ConfigurationError, match="CART_RECOVERY_DATABASE_URL"):
        Database.from_env()


def test_environment_points_airflow_and_dbt_at_the_same_database(monkeypatch, tmp_path):
    monkeypatch.setenv("CART_RECOVERY_DATABASE_URL", "postgresql://etl:pw@db.internal:6543/shopdata")
    monkeypatch.setenv("CART_RECOVERY_HOME", str(tmp_path))
    env = project_environment(
        Database.from_env(), base={"AIRFLOW__CORE__PARALLELISM": "7", "PATH": "/usr/bin"}
    )
    paths = Paths.from_env()
    assert env["AIRFLOW_HOME"] == str(tmp_path / ".airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(paths.dags)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@db.internal:6543/shopdata_airflow")
    assert (env["CART_RECOVERY_DB_HOST"], env["CART_RECOVERY_DB_PORT"], env["CART_RECOVERY_DB_NAME"]) == (
        "db.internal",
        "6543",
        "shopdata",
    )
    connection = json.loads(env["AIRFLOW_CONN_CART_RECOVERY_WAREHOUSE"])
    assert (connection["host"], connection["schema"], connection["password"]) == (
        "db.internal",
        "shopdata",
        "pw",
    )
    assert env["AIRFLOW__CORE__PARALLELISM"] == "7"  # the user's own settings are kept
    assert env["DBT_SEND_ANONYMOUS_USAGE_STATS"] == "false"
    # One JWT secret per installation, stable across calls, so every component accepts the tokens.
    again = project_environment(Database.from_env(), base={})
    assert again["AIRFLOW__API_AUTH__JWT_SECRET"] == env["AIRFLOW__API_AUTH__JWT_SECRET"]
