"""The DAG of one recovery stage: wait (deferred) until rows fall due, then send the due batch.

``dags/recovery_stage_<n>.py`` call ``build_stage_dag(n)``: the three stages are the same wiring,
each its own DAG so that a data engineer can pause one stage without the others.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

from cart_recovery import settings
from cart_recovery.dispatch.config import send_retry_delay
from cart_recovery.dispatch.sensor import DuePlanSensor
from cart_recovery.transform import ASSET_RECOVERY_PLAN

WHAT = {
    1: "the gentle reminder (30 minutes after the last activity, no coupon)",
    2: "the follow-up (4 hours, the stage-2 coupon where the segment allows it)",
    3: "the last call (24 hours, the stage-3 coupon and free shipping where allowed)",
}

DOC = """
### recovery_stage_{stage}

Sends stage {stage} of the recovery sequence: {what}. The timing, the channel, the template and
the coupon come from `marts.recovery_plan` (dbt; analysts change them in the policy seeds).

- **Schedule:** `@continuous`, one run at a time. Each run's `wait_for_due` is a deferrable
  sensor: its trigger (`DuePlanTrigger` in `plugins/`) sleeps until the stage's next plan row
  falls due, re-reading the plan at least every 10 s, so a new `cart_transform` build (the Asset
  `cart-recovery://warehouse/marts/recovery_plan`) is seen at once and no worker slot is held
  while waiting. With nothing due for an hour the run ends as skipped and the next one waits.
- **send_due** moves the due rows into `ops.recovery_outbox`, claims them (exactly once, even with
  two dispatchers or a retried task), checks the send-time guards against live data (an order
  since the cart, consent, a newer cart, an open conversation, the frequency cap, quiet hours,
  holdout), creates the coupon through the shop, sends over WhatsApp or email and records the
  answer. Its XCom and log line count the run's messages by outcome and reason.
- **Pause** this Airflow DAG to hold stage {stage}: due rows wait in the plan and are sent (or expire,
  6 hours past due) when it is unpaused.
- **Replay:** trigger with the param `as_of` to send what was due at that moment.

See docs/dispatch.md for the outbox states and the guards.
"""


def build_stage_dag(stage: int):
    @dag(
        dag_id=f"recovery_stage_{stage}",
        # Always one run waiting: its sensor is deferred (no worker slot) until the stage's next
        # row falls due, the send task sends what is due, and the next run starts waiting at once.
        schedule="@continuous",
        max_active_runs=1,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        tags=["cart-recovery", "dispatch", f"stage-{stage}"],
        default_args={
            "owner": "data-engineering",
            # a worker lost mid-batch: its rows stay `sending`, the retry sends the rest
            "retries": 2,
            "retry_delay": send_retry_delay(),
        },
        params={
            "as_of": Param(
                None,
                type=["null", "string"],
                format="date-time",
                description="Replay: send what was due at this moment (ISO 8601) instead of waiting.",
            )
        },
        doc_md=DOC.format(stage=stage, what=WHAT[stage]),
    )
    def stage_dag():
        wait_for_due = DuePlanSensor(task_id="wait_for_due", stage=stage, as_of="{{ params.as_of }}")

        # A provider that hangs must not hold the stage for good (one run at a time); rows
        # claimed by a timed-out try stay `sending` until their lease makes them `unknown`.
        @task(inlets=[Asset(ASSET_RECOVERY_PLAN)], execution_timeout=pendulum.duration(minutes=30))
        def send_due(event: dict[str, Any]) -> dict[str, Any]:
            """Guards, coupons and sends for the rows due at the trigger's moment; counts by outcome."""
            from cart_recovery.dispatch.dispatcher import dispatch_due
            from cart_recovery.ingest import warehouse_url

            context = get_current_context()
            ti = context["ti"]
            claimer = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/try-{ti.try_number}"
            summary = dispatch_due(
                stage,
                pendulum.parse(event["now"]),
                database_url=warehouse_url(settings.WAREHOUSE_CONN_ID),
                claimer=claimer,
            )
            return summary.as_dict()

        send_due(wait_for_due.output)

    return stage_dag()
