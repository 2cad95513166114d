"""Around the dbt build of ``cart_transform``: whether to build incrementally, and what came out.

Incremental models process what landed since their last build. Four things need a full refresh
instead: the first build, a run planning for an earlier moment than the last build (a backfill), a
privacy erasure since the last build (the dbt tables hold parsed personal data that the raw rows no
longer have), and a shop added to, changed in or removed from the shops file since the last build
(``ops.shop_changes``: history was computed with the old definition, e.g. local times in the old
time zone, phone numbers read in the old country). Each successful run is recorded in
``ops.transform_runs``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import pendulum

from cart_recovery import settings

_LAST_BUILD_SQL = """
select max(as_of), max(finished_at) from ops.transform_runs
"""

_ERASURES_SINCE_SQL = """
select count(*) from ops.privacy_requests
where status = 'completed'
    and topic in ('customers/redact', 'shop/redact')
    and processed_at > %(since)s
"""

_SHOP_CHANGES_SINCE_SQL = """
select string_agg(distinct shop_id, ', ' order by shop_id) from ops.shop_changes
where changed_at > %(since)s
"""

_SUMMARY_SQL = """
select
    count(*) as plan_rows,
    count(*) filter (where suppressed_reason is null) as to_send,
    count(*) filter (where suppressed_reason is null and due_at <= %(as_of)s) as due_now,
    count(distinct cart_key) as carts,
    min(due_at) filter (where suppressed_reason is null and due_at > %(as_of)s) as next_due_at
from marts.recovery_plan
"""

_RECORD_SQL = """
insert into ops.transform_runs (run_id, as_of, full_refresh, reason, plan_summary, finished_at)
values (%(run_id)s, %(as_of)s, %(full_refresh)s, %(reason)s, %(plan_summary)s, now())
on conflict (run_id) do update set
    as_of = excluded.as_of,
    full_refresh = excluded.full_refresh,
    reason = excluded.reason,
    plan_summary = excluded.plan_summary,
    finished_at = excluded.finished_at
"""


@dataclass(frozen=True)
class BuildDecision:
    full_refresh: bool
    reason: str


def _hook(conn_id: str):
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook(postgres_conn_id=conn_id)


def decide_build(
    as_of: str, *, requested: bool = False, conn_id: str = settings.WAREHOUSE_CONN_ID
) -> dict[str, Any]:
    """Full refresh or incremental, with the reason (shown in the task log and XCom)."""
    hook = _hook(conn_id)
    last_as_of, last_finished_at = hook.get_first(_LAST_BUILD_SQL)
    if requested:
        decision = BuildDecision(True, "requested (param full_refresh)")
    elif last_finished_at is None:
        decision = BuildDecision(True, "first build")
    elif pendulum.parse(as_of) < last_as_of:
        decision = BuildDecision(
            True, f"as_of {as_of} is before the last build's {last_as_of.isoformat()} (backfill)"
        )
    else:
        erasures = hook.get_first(_ERASURES_SINCE_SQL, parameters={"since": last_finished_at})[0]
        changed_shops = hook.get_first(_SHOP_CHANGES_SINCE_SQL, parameters={"since": last_finished_at})[0]
        if erasures:
            decision = BuildDecision(True, f"{erasures} privacy erasure(s) since the last build")
        elif changed_shops:
            decision = BuildDecision(True, f"shops file changed since the last build: {changed_shops}")
        else:
            decision = BuildDecision(False, "incremental")
    return asdict(decision)


def recovery_plan_summary(as_of: str, conn_id: str = settings.WAREHOUSE_CONN_ID) -> dict[str, Any]:
    """Counts of the plan as of the run's time, attached to the Asset event for the dispatcher."""
    plan_rows, to_send, due_now, carts, next_due_at = _hook(conn_id).get_first(
        _SUMMARY_SQL, parameters={"as_of": as_of}
    )
    return {
        "as_of": as_of,
        "plan_rows": plan_rows,
        "to_send": to_send,
        "due_now": due_now,
        "carts": carts,
        "next_due_at": next_due_at.isoformat() if next_due_at else None,
    }


def record_build(
    run_id: str,
    as_of: str,
    decision: dict[str, Any],
    summary: dict[str, Any],
    conn_id: str = settings.WAREHOUSE_CONN_ID,
) -> None:
    _hook(conn_id).run(
        _RECORD_SQL,
        parameters={
            "run_id": run_id,
            "as_of": as_of,
            "full_refresh": decision["full_refresh"],
            "reason": decision["reason"],
            "plan_summary": json.dumps(summary),
        },
        autocommit=True,
    )
