"""
### cart_transform

Builds the dbt project (`dbt_project/`) through Cosmos: staging per platform, the unified cart
model, customer history, segments, the holdout and the recovery plan. Each dbt model (and seed)
is a task running `dbt build --select <model>`: the model, then its data tests (unit tests run in
CI); a test over two models runs in the task of the later one.

- **Schedule:** whenever `cart_ingest` lands new raw data (Asset `cart-recovery://warehouse/raw`),
  and on demand.
- **Reads:** schemas `raw` and `ops`, and the seeds in `policy` that analysts edit.
- **Writes:** schemas `staging`, `intermediate`, `marts`; `ops.transform_runs`; emits the Asset
  `cart-recovery://warehouse/marts/recovery_plan` (with the plan's counts) that the dispatcher
  is scheduled on.
- **Incremental or full:** `decide_build` builds incrementally unless this is the first build,
  the run plans for an earlier moment than the last one (a backfill), a privacy erasure happened
  since the last build, or the run was triggered with the param `full_refresh: true`.
- **Backfill:** `cart-recovery airflow dags backfill cart_transform --from-date ... --to-date ...`;
  the run's data interval end is passed to dbt as `as_of` (environment
  variable `CART_RECOVERY_AS_OF`), so a replay plans as of that time.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task
from cosmos import DbtTaskGroup

from cart_recovery.transform import ASSET_RAW, ASSET_RECOVERY_PLAN, cosmos_configs

RECOVERY_PLAN = Asset(ASSET_RECOVERY_PLAN)
AS_OF = "{{ (data_interval_end or logical_date or run_after) | string }}"


@dag(
    schedule=[Asset(ASSET_RAW)],
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
    def decide_build(as_of: str, params=None) -> dict:
        """Incremental or full refresh, and why (see the DAG docs)."""
        from cart_recovery.plan import decide_build as decide

        return decide(as_of, requested=bool(params["full_refresh"]))

    decision = decide_build(AS_OF)

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
    def publish_recovery_plan(as_of: str, decision: dict, *, outlet_events=None, run_id=None) -> dict:
        """Records the build and emits the recovery-plan Asset with the plan's counts."""
        from cart_recovery.plan import record_build, recovery_plan_summary

        summary = recovery_plan_summary(as_of)
        record_build(run_id, as_of, decision, summary)
        outlet_events[RECOVERY_PLAN].extra = summary
        return summary

    decision >> dbt_build >> publish_recovery_plan(AS_OF, decision)


cart_transform()
