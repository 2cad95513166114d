"""The moment a DAG run stands for: one helper for every DAG and every kind of run.

Logic never reads the wall clock; it takes "now" from the run, so a backfill or a replay behaves
like the day it describes. Which field holds that moment depends on how the run was created:

| run | ``data_interval_end`` | ``logical_date`` | ``run_after`` |
|---|---|---|---|
| scheduled (cron), backfill | the slot | the slot | the slot |
| manual, with a logical date | the logical date | set | when it was queued |
| manual, without a logical date | absent | absent | when it was queued |
| asset-triggered | absent | absent | when the Asset event queued it |

In Airflow 3 an asset-triggered run has neither a data interval nor a logical date (a template
such as ``{{ data_interval_end }}`` fails to render there), so the helper falls back in that
order and always returns an aware UTC time.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pendulum


def run_time(context: Mapping[str, Any]) -> pendulum.DateTime:
    """The run's time: data interval end, else logical date, else ``run_after`` (UTC)."""
    for key in ("data_interval_end", "logical_date"):
        value = context.get(key)
        if value is not None:
            return _utc(value)
    dag_run = context.get("dag_run")
    run_after = getattr(dag_run, "run_after", None)
    if run_after is None:
        raise ValueError(
            "the run has no data interval, logical date or run_after: call run_time() with a task's "
            "context (airflow.sdk.get_current_context())"
        )
    return _utc(run_after)


def _utc(value: datetime | str) -> pendulum.DateTime:
    """Airflow's run times are aware; a naive one is taken as UTC, as Airflow itself does."""
    moment = pendulum.parse(value) if isinstance(value, str) else pendulum.instance(value)
    return moment.in_timezone("UTC")
