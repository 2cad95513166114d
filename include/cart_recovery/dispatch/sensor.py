"""``DuePlanSensor``: a deferrable sensor that waits until a recovery stage has rows due.

It defers at once to ``DuePlanTrigger`` (``plugins/cart_recovery_triggers.py``: the triggerer
loads triggers from ``plugins/``), so while it waits no worker slot is held. The trigger's event
becomes the sensor's XCom: ``{"status": "due", "now": ...}`` for the send task. With nothing due
before ``max_wait`` the sensor is skipped, and so is the send task.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSkipException

from cart_recovery import settings


class DuePlanSensor(BaseSensorOperator):
    template_fields = ("as_of",)

    def __init__(
        self,
        *,
        stage: int,
        conn_id: str = settings.WAREHOUSE_CONN_ID,
        poll_interval: float = 10.0,
        max_wait: timedelta = timedelta(hours=1),
        as_of: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.max_wait = max_wait
        self.as_of = as_of

    def execute(self, context: Any) -> None:
        import pendulum
        from cart_recovery_triggers import DuePlanTrigger

        from cart_recovery.dispatch.config import DispatchSettings

        as_of = self.as_of if self.as_of and self.as_of not in ("None", "") else None
        if as_of is not None:
            try:  # a moment without an offset is UTC, as Airflow reads one
                as_of = pendulum.parse(as_of, tz="UTC").in_timezone("UTC").isoformat()
            except (ValueError, pendulum.parsing.exceptions.ParserError) as exc:
                raise ValueError(f"param as_of {self.as_of!r} is not an ISO 8601 moment: {exc}") from exc
        dispatch = DispatchSettings.from_env()
        self.defer(
            trigger=DuePlanTrigger(
                stage=self.stage,
                conn_id=self.conn_id,
                poll_interval=self.poll_interval,
                timeout=self.max_wait.total_seconds(),
                # the dispatcher's look-back: rows it would not pick up must not wake the stage
                lookback_seconds=dispatch.lookback.total_seconds(),
                # rows a killed dispatcher left `sending` wake the stage when their lease ends
                lease_seconds=dispatch.lease.total_seconds(),
                as_of=as_of,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if not event or event.get("status") != "due":
            next_due = (event or {}).get("next_due_at")
            raise AirflowSkipException(
                f"stage {self.stage}: nothing due as of {(event or {}).get('now')}"
                + (f"; next due at {next_due}" if next_due else "; nothing planned")
            )
        self.log.info("stage %s: rows due since %s (now %s)", self.stage, event["due_at"], event["now"])
        return event
