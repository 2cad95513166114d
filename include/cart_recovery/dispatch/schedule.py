"""When a stage next falls due: what the stage trigger waits for.

A stage has work when a plan row of that stage (to send, or holdout to record) is due and not in
the outbox yet, an outbox row deferred earlier is due again, or a row left ``sending`` by a
dispatcher that died reaches the end of its lease (the next run turns it ``unknown``, so a
crash is recovered without waiting for the stage's next message). ``next_due`` answers with the
earliest such moment, so the trigger can sleep until then instead of polling blindly.
"""

from __future__ import annotations

from datetime import datetime, timedelta

NEXT_DUE_SQL = """
select least(
    (
        select min(plan.due_at)
        from marts.recovery_plan as plan
        where plan.stage = %(stage)s
            and plan.due_at > %(now)s - %(lookback)s
            and (plan.suppressed_reason is null or plan.suppressed_reason = 'holdout')
            and not exists (
                select 1 from ops.recovery_outbox as outbox where outbox.plan_key = plan.plan_key
            )
    ),
    (
        select min(outbox.due_at)
        from ops.recovery_outbox as outbox
        where outbox.status = 'queued' and outbox.stage = %(stage)s
    ),
    (
        select min(outbox.claimed_at) + %(lease)s::interval
        from ops.recovery_outbox as outbox
        where outbox.status = 'sending' and outbox.stage = %(stage)s
    )
)
"""


async def next_due(
    conn_url: str, stage: int, now: datetime, lookback: timedelta, lease: timedelta | None = None
) -> datetime | None:
    """The earliest due moment of the stage's unsent work (with ``lease``, also the end of the
    lease of a row left ``sending``); None when there is none (or no plan yet)."""
    import psycopg
    from psycopg import errors

    async with await psycopg.AsyncConnection.connect(conn_url, autocommit=True, connect_timeout=10) as conn:
        try:
            cursor = await conn.execute(
                NEXT_DUE_SQL, {"stage": stage, "now": now, "lookback": lookback, "lease": lease}
            )
        except errors.UndefinedTable:
            return None  # cart_transform has not built the plan yet
        row = await cursor.fetchone()
    return row[0] if row else None
