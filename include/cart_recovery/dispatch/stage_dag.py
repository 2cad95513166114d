"""The DAG of one recovery stage: wait (deferred) until rows fall due, then send the due batch.

``dags/recovery_stage_<n>.py`` call ``build_stage_dag(n)``: the three stages are the same wiring,
each its own DAG so that a data engineer can pause one stage without the others.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

from cart_recovery import settings
from cart_recovery.dispatch.sensor import DuePlanSensor
from cart_recovery.transform import ASSET_RECOVERY_PLAN


def build_stage_dag(stage: int, doc_md: str | None = None):
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
            "retries": 2,
            "retry_delay": pendulum.duration(seconds=30),
        },
        params={
            "as_of": Param(
                None,
                type=["null", "string"],
                format="date-time",
                description="Replay: send what was due at this moment (ISO 8601) instead of waiting.",
            )
        },
        doc_md=doc_md,
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
