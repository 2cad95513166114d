"""
### cart_ingest

Polls every shop in the shops file (`config/shops.yaml`) for carts (abandoned checkouts), orders,
customers with their consent flags, and products, incrementally from a watermark per shop and
entity, and lands them in `raw.polled_records`. One mapped task per shop.

- **Schedule:** every 5 minutes (`CART_RECOVERY_INGEST_SCHEDULE`, a cron expression, overrides it).
- **Reads:** each shop's API through the http provider's hook and the shop's Airflow connection
  (`conn_id` in the shops file); `ops.ingest_watermarks`.
- **Writes:** `raw.polled_records` (idempotent: one row per record version), `ops.quarantine`
  (rows that failed the great-expectations checks, with the reasons), `ops.validation_runs`
  (counts per shop, entity and interval), `ops.ingest_watermarks`; emits the Asset
  `cart-recovery://warehouse/raw` that `cart_transform` is scheduled on.
- **Time limits:** `poll_shop` 30 minutes (a first poll of a big shop included), the other tasks
  5 minutes; a task over its limit fails and is retried like any failure.
- **One shop failing:** its `poll_shop` task fails (and is retried) on its own; `publish_raw`
  still runs for what the other shops landed, so their carts are planned, and the last task,
  `all_shops_polled`, fails the run so the failure stays visible in the grid.
- **Backfill / re-run:** the window ends at the run's time (`cart_recovery.runtime.run_time`:
  the data interval end, or `run_after` for a run without one), never at the wall clock, and a
  re-run of an interval stores nothing twice. Watermarks only move forward: to re-poll history,
  delete the shop's rows from `ops.ingest_watermarks` and trigger a run.
"""

from __future__ import annotations

import json
import os

import pendulum
from airflow.sdk import Asset, TriggerRule, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from cart_recovery.transform import ASSET_RAW


@dag(
    schedule=os.environ.get("CART_RECOVERY_INGEST_SCHEDULE", "*/5 * * * *"),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["cart-recovery", "ingest"],
    default_args={
        "owner": "data-engineering",
        "retries": 2,
        "retry_delay": pendulum.duration(minutes=1),
        # No task may hang a run (and with max_active_runs=1, every later run) for good.
        "execution_timeout": pendulum.duration(minutes=5),
    },
    doc_md=__doc__,
)
def cart_ingest():
    @task
    def configured_shops() -> list[dict]:
        """The shops file, read at run time so that adding a shop needs no DAG change."""
        from cart_recovery.shops import load_shops

        return [shop.model_dump(mode="json") for shop in load_shops()]

    @task(max_active_tis_per_dagrun=8, execution_timeout=pendulum.duration(minutes=30))
    def poll_shop(shop: dict) -> dict:
        """Poll one shop up to the run's interval end; returns the counts per entity."""
        from cart_recovery.ingest import ingest_shop, warehouse_url
        from cart_recovery.runtime import run_time
        from cart_recovery.shops import Shop

        interval_end = run_time(get_current_context())
        report = ingest_shop(Shop.model_validate(shop), interval_end=interval_end, conn_url=warehouse_url())
        # XCom holds JSON: times in the report (windows, watermarks) become ISO strings.
        return {"shop_id": shop["id"], **json.loads(json.dumps(report, default=str))}

    @task(outlets=[Asset(ASSET_RAW)], trigger_rule=TriggerRule.ALL_DONE)
    def publish_raw(reports: list[dict]) -> dict:
        """Marks `raw` as updated (so `cart_transform` runs) for the shops that were polled."""
        # By index: iterating the lazy sequence asks for one XCom past the end (a logged 404).
        polled = [reports[i] for i in range(len(reports)) if reports[i]]
        if not polled:
            raise AirflowSkipException("no shop was polled successfully: nothing to publish")
        totals: dict[str, int] = {"shops": len(polled)}
        for report in polled:
            for counts in report.values():
                if isinstance(counts, dict) and "loaded" in counts:
                    for key in ("fetched", "loaded", "unchanged", "quarantined"):
                        totals[key] = totals.get(key, 0) + counts[key]
        return totals

    @task
    def all_shops_polled() -> None:
        """Runs only when every shop's poll succeeded; otherwise the run fails here, visibly."""

    polls = poll_shop.expand(shop=configured_shops())
    publish_raw(polls)
    polls >> all_shops_polled()


cart_ingest()
