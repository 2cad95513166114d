"""The cart_ingest DAG run end to end with dag.test() against the simulator and the test warehouse."""

from __future__ import annotations

from pathlib import Path

import pytest
from polling_helpers import INTERVAL_END

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "cart_ingest.py"


@pytest.mark.slow
def test_dag_polls_every_shop_for_its_interval(simulator, airflow_db, warehouse, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    shops_file = tmp_path / "shops.yaml"
    shops_file.write_text(simulator.shops_yaml())
    monkeypatch.setenv("CART_RECOVERY_SHOPS_FILE", str(shops_file))
    dag = DagBag(dag_folder=str(DAG_FILE)).dags["cart_ingest"]

    run = dag.test(logical_date=INTERVAL_END)

    assert run.state == "success"
    with warehouse.cursor() as cur:
        cur.execute(
            "select shop_id, count(*) from raw.polled_records where shop_id = any(%s) group by 1",
            ([s.id for s in simulator.shops],),
        )
        stored = dict(cur.fetchall())
        cur.execute(
            "select max(watermark) from ops.ingest_watermarks where shop_id = any(%s)",
            ([s.id for s in simulator.shops],),
        )
        (newest,) = cur.fetchone()
    assert set(stored) == {s.id for s in simulator.shops}
    assert newest <= INTERVAL_END
