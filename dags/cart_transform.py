"""
### cart_transform

Builds the dbt project (`dbt_project/`) through Cosmos: staging per platform, the unified cart
model, customer history, segments, the holdout and the recovery plan. Each dbt model is a task,
followed by its tests.

- **Schedule:** whenever `cart_ingest` lands new raw data (Asset `cart-recovery://warehouse/raw`),
  and on demand.
- **Reads:** schemas `raw` and `policy` (the seeds analysts edit).
- **Writes:** schemas `staging`, `intermediate`, `marts`; emits the Asset
  `cart-recovery://warehouse/marts/recovery_plan` that the dispatcher is scheduled on.
- **Backfill:** `cart-recovery airflow dags backfill cart_transform --from-date ... --to-date ...`;
  the run's logical end is passed to dbt as `as_of`, so a replay plans as of that time.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task
from cosmos import DbtTaskGroup

from cart_recovery.transform import ASSET_RAW, ASSET_RECOVERY_PLAN, cosmos_configs


@dag(
    schedule=[Asset(ASSET_RAW)],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["cart-recovery", "dbt", "transform"],
    default_args={"owner": "data-engineering", "retries": 1, "retry_delay": pendulum.duration(minutes=2)},
    doc_md=__doc__,
)
def cart_transform():
    dbt_build = DbtTaskGroup(
        group_id="dbt",
        operator_args={"vars": {"as_of": "{{ (data_interval_end or logical_date or run_after) | string }}"}},
        **cosmos_configs(),
    )

    @task(outlets=[Asset(ASSET_RECOVERY_PLAN)])
    def publish_recovery_plan() -> None:
        """Marks the recovery plan as updated so that the dispatcher's schedule fires."""

    dbt_build >> publish_recovery_plan()


cart_transform()
