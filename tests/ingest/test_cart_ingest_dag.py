"""The cart_ingest DAG run end to end with dag.test() against the simulator and the test warehouse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from polling_helpers import INTERVAL_END, expected_counts, newest_update
from sqlalchemy import func, select

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "cart_ingest.py"


@pytest.mark.slow
def test_dag_polls_every_shop_for_its_interval(simulator, airflow_db, warehouse, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    shops_file = tmp_path / "shops.yaml"
    shops_file.write_text(simulator.shops_yaml())
    monkeypatch.setenv("CART_RECOVERY_SHOPS_FILE", str(shops_file))
    dag = DagBag(dag_folder=str(DAG_FILE)).dags["cart_ingest"]
    events_before = _raw_asset_events()

    run = dag.test(logical_date=INTERVAL_END)

    assert run.state == "success"
    shop_ids = [s.id for s in simulator.shops]
    expected = {shop_id: expected_counts(simulator, shop_id) for shop_id in shop_ids}
    with warehouse.cursor() as cur:
        cur.execute(
            "select shop_id, entity, count(*) from raw.polled_records where shop_id = any(%s) group by 1, 2",
            (shop_ids,),
        )
        stored: dict[str, dict[str, int]] = {}
        for shop_id, entity, count in cur.fetchall():
            stored.setdefault(shop_id, {})[entity] = count
        cur.execute(
            "select shop_id, entity, watermark from ops.ingest_watermarks where shop_id = any(%s)",
            (shop_ids,),
        )
        watermarks = {(shop_id, entity): mark for shop_id, entity, mark in cur.fetchall()}
    assert stored == expected  # every record of every shop, once
    # One watermark per shop and entity: the newest record's time, never past the interval's end.
    assert set(watermarks) == {(shop_id, entity) for shop_id in expected for entity in expected[shop_id]}
    for (shop_id, entity), mark in watermarks.items():
        assert mark == newest_update(simulator, shop_id, entity), (shop_id, entity)
    # The raw Asset got exactly one event, and the totals the run published add up.
    assert _raw_asset_events() == events_before + 1
    records = sum(sum(counts.values()) for counts in expected.values())
    assert _publish_raw_totals(run) == {
        "shops": len(shop_ids),
        "fetched": records,
        "loaded": records,
        "unchanged": 0,
        "quarantined": 0,
    }


def _publish_raw_totals(run) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        totals = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == "cart_ingest",
                XComModel.run_id == run.run_id,
                XComModel.task_id == "publish_raw",
                XComModel.key == "return_value",
            )
        )
    return json.loads(totals) if isinstance(totals, str) else totals


def _raw_asset_events() -> int:
    """How many events the raw Asset (what cart_transform is scheduled on) has had."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from cart_recovery.transform import ASSET_RAW

    with create_session() as session:
        return session.scalar(
            select(func.count())
            .select_from(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == ASSET_RAW)
        )


@pytest.mark.slow
def test_a_failing_shop_does_not_hold_back_the_others(
    simulator, airflow_db, warehouse, tmp_path, monkeypatch
):
    """One shop's API is down: the others land and the raw Asset is published for them; the
    failed shop's task and the run stay failed, so the failure is visible in the grid."""
    from airflow.dag_processing.dagbag import DagBag

    shops = [shop.model_dump(mode="json") for shop in simulator.shop_models()]
    down = next(s for s in shops if s["platform"] == "woocommerce")
    down_connection = simulator.connection(down["id"])
    down_connection["host"] = "http://127.0.0.1:9/wp-json/wc/v3"  # nothing listens on port 9
    monkeypatch.setenv(f"AIRFLOW_CONN_{down['conn_id'].upper()}", json.dumps(down_connection))
    shops_file = tmp_path / "shops.yaml"
    shops_file.write_text(yaml.safe_dump({"shops": shops}))
    monkeypatch.setenv("CART_RECOVERY_SHOPS_FILE", str(shops_file))
    dag = DagBag(dag_folder=str(DAG_FILE)).dags["cart_ingest"]
    for task in dag.tasks:
        task.retries = 0  # fail now, not after the production retry delays
    events_before = _raw_asset_events()

    run = dag.test(logical_date=INTERVAL_END)

    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert run.state == "failed", states
    polls = {index: state for (task_id, index), state in states.items() if task_id == "poll_shop"}
    down_index = shops.index(down)
    assert polls.pop(down_index) == "failed"
    assert set(polls.values()) == {"success"}
    assert states[("publish_raw", -1)] == "success"
    assert states[("all_shops_polled", -1)] == "upstream_failed"
    assert _raw_asset_events() == events_before + 1
    assert _publish_raw_totals(run)["shops"] == len(shops) - 1  # the three shops that were polled
    with warehouse.cursor() as cur:
        cur.execute(
            "select distinct shop_id from raw.polled_records where shop_id = any(%s)",
            ([s["id"] for s in shops],),
        )
        landed = {row[0] for row in cur.fetchall()}
    assert landed == {s["id"] for s in shops} - {down["id"]}
