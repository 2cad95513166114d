"""
### cart_transform

Builds the dbt project (`dbt_project/`) through Cosmos: staging per platform, the unified cart
model, customer history, segments, the holdout and the recovery plan. Each dbt model (and seed)
is a task running `dbt build --select <model>`: the model, then its data tests (unit tests run in
CI); a test over two models runs in the task of the later one.

- **Schedule:** whenever `cart_ingest` has polled (Asset `cart-recovery://warehouse/raw`), or
  when shop webhooks landed that the last build has not seen (Asset
  `cart-recovery://warehouse/raw/webhook_events`, emitted by the watcher trigger
  `WebhookEventsTrigger` in `plugins/`, which checks `raw.webhook_events` every 15 s), and on
  demand. A cart that arrives by webhook is planned by the next build after it lands, without
  waiting for a poll (about two minutes here: up to 15 s until the watcher sees it, and a build of
  about 1.5 min, after the one already running if any). `as_of` is when the first of the
  triggering Asset events queued the run.
- **Reads:** the shops file (`config/shops.yaml`; task `sync_shops` copies it into `ops.shops`,
  which the models read), schemas `raw` and `ops`, and the seeds in `policy` that analysts edit.
- **Writes:** `ops.shops`; schemas `staging`, `intermediate`, `marts`; `ops.transform_runs`; emits the Asset
  `cart-recovery://warehouse/marts/recovery_plan` (with the plan's counts) that the dispatcher
  is scheduled on.
- **Incremental or full:** `decide_build` builds incrementally unless this is the first build,
  the run plans for an earlier moment than the last one (a backfill), a privacy erasure happened
  since the last build, a shop was added to, changed in or removed from the shops file since the
  last build, or the run was triggered with the param `full_refresh: true`. A cart, order or
  customer of a shop missing from the shops file fails the build (dbt tests
  `every_*_shop_is_in_the_shops_file`).
- **The run's time (`as_of`):** `decide_build` takes it from the run
  (`cart_recovery.runtime.run_time`): the data interval end of a scheduled or backfill run, else
  the logical date, else `run_after`, which is all an asset-triggered run has. dbt gets it as the
  environment variable `CART_RECOVERY_AS_OF`, so a replay plans as of that time.
- **Replay an earlier moment:** Airflow cannot backfill an asset-scheduled DAG; trigger a run with
  a logical date instead (`cart-recovery airflow dags trigger cart_transform --logical-date
  2026-11-07T12:00:00+00:00`): it plans as of that moment, with a full refresh.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, AssetWatcher, Param, dag, get_current_context, task
from cart_recovery_triggers import WebhookEventsTrigger  # plugins/: the triggerer imports it from there
from cosmos import DbtTaskGroup

from cart_recovery.transform import ASSET_RAW, ASSET_RECOVERY_PLAN, ASSET_WEBHOOK_EVENTS, cosmos_configs

RECOVERY_PLAN = Asset(ASSET_RECOVERY_PLAN)
# Polled data lands through cart_ingest, which emits ASSET_RAW; webhooks land outside Airflow, so
# a watcher (a trigger run by the triggerer) emits ASSET_WEBHOOK_EVENTS when one lands unbuilt.
WEBHOOK_EVENTS = Asset(
    ASSET_WEBHOOK_EVENTS,
    watchers=[AssetWatcher(name="shop_webhooks_landed", trigger=WebhookEventsTrigger(poll_interval=15))],
)
# The run's time, decided once by decide_build (cart_recovery.runtime.run_time) and read back here.
AS_OF = "{{ ti.xcom_pull(task_ids='decide_build')['as_of'] }}"


@dag(
    schedule=Asset(ASSET_RAW) | WEBHOOK_EVENTS,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["cart-recovery", "dbt", "transform"],
    default_args={"owner": "data-engineering", "retries": 1, "retry_delay": pendulum.duration(minutes=2)},
    params={"full_refresh": Param(False, type="boolean", description="Rebuild every incremental model.")},
    doc_md=__doc__,
)
def cart_transform():
    @task
    def sync_shops() -> dict:
        """The shops file into `ops.shops` (what the models read): the shops added, changed, removed."""
        from cart_recovery.shops import sync_configured_shops

        return sync_configured_shops()

    @task
    def decide_build(params=None) -> dict:
        """The run's time (`as_of`), and whether to build incrementally or in full, and why."""
        from cart_recovery.plan import decide_build as decide
        from cart_recovery.runtime import run_time

        as_of = run_time(get_current_context()).isoformat()
        return {"as_of": as_of, **decide(as_of, requested=bool(params["full_refresh"]))}

    decision = decide_build()
    sync_shops() >> decision

    dbt_build = DbtTaskGroup(
        group_id="dbt",
        operator_args={
            # as_of as an environment variable, not a var: a var that changes every run forces
            # dbt to re-parse the whole project in every task (macro as_of reads it at run time).
            # Unit tests check the SQL, not the data: they run in CI (tests/dbt), not every build.
            "env": {"CART_RECOVERY_AS_OF": AS_OF, "DBT_EXCLUDE_RESOURCE_TYPES": "unit_test"},
            "full_refresh": "{{ ti.xcom_pull(task_ids='decide_build')['full_refresh'] }}",
        },
        **cosmos_configs(),
    )

    @task(outlets=[RECOVERY_PLAN])
    def publish_recovery_plan(decision: dict, *, outlet_events=None, run_id=None) -> dict:
        """Records the build and emits the recovery-plan Asset with the plan's counts."""
        from cart_recovery.plan import record_build, recovery_plan_summary

        summary = recovery_plan_summary(decision["as_of"])
        record_build(run_id, decision["as_of"], decision, summary)
        outlet_events[RECOVERY_PLAN].extra = summary
        return summary

    decision >> dbt_build >> publish_recovery_plan(decision)


cart_transform()
