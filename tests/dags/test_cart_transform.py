"""``cart_transform`` runs end to end with ``dag.test()`` against the real test PostgreSQL."""

from __future__ import annotations

import psycopg2
import pytest


@pytest.fixture(scope="module")
def cart_transform(airflow_db, dbt_manifest):
    from airflow.dag_processing.dagbag import DagBag

    from cart_recovery.settings import Paths

    bag = DagBag(dag_folder=str(Paths.from_env().dags / "cart_transform.py"))
    assert bag.import_errors == {}
    return bag.dags["cart_transform"]


def test_renders_every_dbt_node_as_a_task(cart_transform):
    task_ids = set(cart_transform.task_ids)
    assert "dbt.recovery_stages.seed" in task_ids
    assert "publish_recovery_plan" in task_ids


def test_runs_against_postgres(cart_transform, database):
    with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
        cur.execute("drop schema if exists policy cascade")

    dag_run = cart_transform.test()

    assert dag_run.state == "success"
    failed = [ti.task_id for ti in dag_run.get_task_instances() if ti.state != "success"]
    assert failed == []
    with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
        cur.execute("select stage, delay_minutes from policy.recovery_stages order by stage")
        assert cur.fetchall() == [(1, 30), (2, 240), (3, 1440)]
