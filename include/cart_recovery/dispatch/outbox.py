"""``ops.recovery_outbox``: due plan rows in, claimed before the send, the answer recorded.

Exactly-once rests on three rules:

1. A plan row enters the outbox once (``plan_key`` is unique; ``on conflict do nothing``).
2. A row is sent only by the transaction that moved it from ``queued`` to ``sending`` and
   committed: rows are claimed with ``for update skip locked``, so two dispatchers never claim
   the same row, and a retried task finds its rows already ``sending``.
3. A row still ``sending`` after the lease becomes ``unknown``, never ``queued`` again: the
   provider may have sent it. Status callbacks settle it (the webhook service).

The frequency cap needs the person's other messages to be visible when a row is claimed, so the
claiming transaction takes an advisory lock per person (sorted, so two dispatchers cannot
deadlock) before it reads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from psycopg2.extras import execute_values

from cart_recovery.dispatch import guards
from cart_recovery.dispatch.config import DispatchSettings

ENQUEUE_SQL = """
insert into ops.recovery_outbox (
    plan_key, cart_key, customer_key, shop_id, platform, stage, channel, template, language,
    status, planned_due_at, due_at, coupon_pct, coupon_free_shipping, coupon_expires_at,
    planned_by, created_at, updated_at
)
select
    plan.plan_key, plan.cart_key, plan.customer_key, plan.shop_id, plan.platform, plan.stage,
    plan.channel, plan.template, plan.language, 'queued', plan.due_at, plan.due_at,
    plan.coupon_pct, plan.free_shipping, plan.coupon_expires_at,
    jsonb_build_object(
        'template', plan.template,
        'channel', plan.channel,
        'language', plan.language,
        'suppressed_reason', plan.suppressed_reason,
        'coupon_pct', plan.coupon_pct,
        'policy_coupon_pct', plan.policy_coupon_pct,
        'free_shipping', plan.free_shipping,
        'due_at', plan.due_at,
        'abandoned_at', plan.abandoned_at,
        'segments', array_remove(array[
            case when carts.is_first_time then 'first_time' end,
            case when carts.is_repeat_abandoner then 'repeat_abandoner' end,
            case when carts.is_high_value then 'high_value' end,
            case when carts.is_pre_sale then 'pre_sale' end,
            case when carts.is_gift_deadline then 'gift_deadline' end,
            case when carts.is_near_free_shipping then 'near_free_shipping' end,
            case when carts.is_guest then 'guest' end,
            case when carts.is_in_coupon_cooldown then 'coupon_cooldown' end
        ], null),
        'plan_landed_at', plan.source_landed_at
    ),
    %(now)s, %(now)s
from marts.recovery_plan as plan
left join marts.abandoned_carts as carts
    on carts.cart_key = plan.cart_key
where plan.stage = %(stage)s
    and plan.due_at <= %(now)s
    and plan.due_at > %(now)s - %(lookback)s
    and (plan.suppressed_reason is null or plan.suppressed_reason = 'holdout')
on conflict (plan_key) do nothing
"""

LEASE_SQL = """
update ops.recovery_outbox
set status = 'unknown',
    error = 'still sending after the lease (' || %(lease)s::text || '): the provider may have '
        || 'sent it; not re-sent, a status callback settles it',
    updated_at = %(now)s
where status = 'sending' and claimed_at <= %(now)s - %(lease)s::interval
"""

CLAIM_SQL = """
select outbox.plan_key, coalesce(outbox.customer_key, outbox.cart_key) as person, carts.email, carts.phone
from ops.recovery_outbox as outbox
left join marts.abandoned_carts as carts
    on carts.cart_key = outbox.cart_key
where outbox.status = 'queued' and outbox.stage = %(stage)s and outbox.due_at <= %(now)s
order by outbox.due_at, outbox.plan_key
limit %(limit)s
for update of outbox skip locked
"""

# One lock per way of reaching a person: the customer (per shop), and the phone and email, which
# one WhatsApp number and one sender share across shops. One round trip for the chunk's people,
# locked in the order given (sorted by the caller): the ordered subquery feeds the aggregate row
# by row, so the locks are taken in that order.
LOCK_PEOPLE_SQL = """
select count(pg_advisory_xact_lock(hashtextextended('cart-recovery person ' || people.person, 0)))
from (
    select person from unnest(%s::text[]) with ordinality as given (person, position)
    order by position
) as people
"""

APPLY_SQL = """
update ops.recovery_outbox as outbox
set status = verdicts.status,
    reason = verdicts.reason,
    channel = coalesce(verdicts.channel, outbox.channel),
    recipient = coalesce(verdicts.recipient, outbox.recipient),
    cart_url = coalesce(verdicts.cart_url, outbox.cart_url),
    due_at = coalesce(verdicts.due_at, outbox.due_at),
    guards = verdicts.guards::jsonb,
    claimed_by = case when verdicts.status = 'sending' then verdicts.claimed_by else outbox.claimed_by end,
    claimed_at = case when verdicts.status = 'sending' then verdicts.at else outbox.claimed_at end,
    attempts = outbox.attempts + case when verdicts.status = 'sending' then 1 else 0 end,
    updated_at = verdicts.at
from (values %s) as verdicts (
    plan_key, status, reason, channel, recipient, cart_url, due_at, guards, claimed_by, at
)
where outbox.plan_key = verdicts.plan_key
"""

# The funnel's order (cart_recovery.webhooks.funnel.STATUS_RANK): a status callback may have got
# here first (matched on the plan_key it echoes), and what it proved is never moved back.
_RANK = """case {col} when 'sent' then 1 when 'failed' then 2 when 'delivered' then 3
    when 'read' then 4 else 0 end"""

RECORD_SQL = f"""
update ops.recovery_outbox as outbox
set status = case
        when {_RANK.format(col="outbox.status")} > {_RANK.format(col="results.status")}
            then outbox.status
        else results.status
    end,
    reason = coalesce(results.reason, outbox.reason),
    channel = results.channel,
    recipient = results.recipient,
    template = coalesce(results.template, outbox.template),
    due_at = coalesce(results.due_at, outbox.due_at),
    provider_message_id = coalesce(outbox.provider_message_id, results.provider_message_id),
    provider_response = coalesce(results.provider_response::jsonb, outbox.provider_response),
    rendered_text = coalesce(results.rendered_text, outbox.rendered_text),
    coupon_code = results.coupon_code,
    coupon_pct = results.coupon_pct,
    coupon_free_shipping = results.coupon_free_shipping,
    coupon_expires_at = results.coupon_expires_at,
    -- an error a callback recorded (the row moved on from sending) is kept
    error_code = case
        when outbox.status in ('sending', 'unknown') then results.error_code
        else coalesce(outbox.error_code, results.error_code)
    end,
    error = case
        when outbox.status in ('sending', 'unknown') then results.error
        else coalesce(outbox.error, results.error)
    end,
    sent_at = case
        when results.status = 'sent' then coalesce(outbox.sent_at, results.at) else outbox.sent_at
    end,
    failed_at = case
        when results.status = 'failed' then coalesce(outbox.failed_at, results.at) else outbox.failed_at
    end,
    guards = outbox.guards || coalesce(results.guards::jsonb, '{{}}'),
    updated_at = results.at
from (values %s) as results (
    plan_key, status, reason, channel, recipient, template, due_at, provider_message_id,
    provider_response, rendered_text, coupon_code, coupon_pct, coupon_free_shipping,
    coupon_expires_at, error_code, error, guards, at, claimed_by
)
where outbox.plan_key = results.plan_key and outbox.claimed_by = results.claimed_by
    and outbox.status in ('sending', 'unknown', 'sent', 'delivered', 'read', 'failed')
"""

_VERDICT_STATUS = {
    "send": "sending",
    "suppress": "suppressed",
    "defer": "queued",
    "holdout": "holdout",
    "expire": "expired",
}


@dataclass(frozen=True)
class Claimed:
    """A row this dispatcher moved to ``sending``: it, and only it, sends the message."""

    facts: dict[str, Any]
    verdict: guards.Verdict

    @property
    def plan_key(self) -> str:
        return self.facts["plan_key"]


@dataclass(frozen=True)
class Result:
    """The recorded end of one claimed row (see ``RECORD_SQL``)."""

    plan_key: str
    status: str  # sent | failed | queued (retry/defer) | unknown | suppressed
    channel: str | None
    recipient: str | None
    at: datetime
    reason: str | None = None
    template: str | None = None
    due_at: datetime | None = None
    provider_message_id: str | None = None
    provider_response: dict[str, Any] | None = None
    rendered_text: str | None = None
    coupon_code: str | None = None
    coupon_pct: Any = None
    coupon_free_shipping: bool | None = None
    coupon_expires_at: datetime | None = None
    error_code: str | None = None
    error: str | None = None
    guards: dict[str, str] | None = None
    revoke_whatsapp: str | None = None  # a phone whose message consent the answer took back (131050)


def enqueue_due(cursor, stage: int, now: datetime, settings: DispatchSettings) -> int:
    """Insert the stage's plan rows that fell due and are not in the outbox yet; how many."""
    cursor.execute(ENQUEUE_SQL, {"stage": stage, "now": now, "lookback": settings.lookback})
    return cursor.rowcount


def expire_leases(cursor, now: datetime, settings: DispatchSettings) -> int:
    """Rows left ``sending`` by a dispatcher that died become ``unknown``; how many."""
    cursor.execute(LEASE_SQL, {"now": now, "lease": settings.lease})
    return cursor.rowcount


def claim(
    conn,
    stage: int,
    now: datetime,
    settings: DispatchSettings,
    claimer: str,
    contacted: dict[str, tuple[datetime, str]],
    *,
    limit: int | None = None,
) -> tuple[list[Claimed], list[tuple[dict[str, Any], guards.Verdict]]]:
    """Claim up to a chunk of due queued rows, check their guards and commit the verdicts.

    Returns the rows to send (now ``sending``, claimed by ``claimer``) and every row's facts and
    verdict (for the run's counts). ``contacted``: person -> when this dispatcher last claimed a
    message to them in this batch, and for which cart (updated here), for the frequency cap within
    a batch; like the database's side of the cap, it leaves out messages of the same cart.
    ``limit``: rows in the chunk (default ``settings.chunk_rows()``).
    """
    with conn, conn.cursor() as cursor:
        cursor.execute(CLAIM_SQL, {"stage": stage, "now": now, "limit": limit or settings.chunk_rows()})
        rows = cursor.fetchall()  # plan_key, person, email, phone
        if not rows:
            return [], []
        keys = {
            key for _plan_key, person, email, phone in rows for key in _contact_keys(person, email, phone)
        }
        cursor.execute(LOCK_PEOPLE_SQL, (sorted(keys),))
        cursor.execute(guards.FACTS_SQL, guards.facts_parameters([row[0] for row in rows], now))
        names = [column.name for column in cursor.description]
        all_facts = sorted(
            (dict(zip(names, row, strict=True)) for row in cursor.fetchall()),
            key=lambda facts: (facts["outbox_due_at"], facts["plan_key"]),
        )
        decided: list[tuple[dict[str, Any], guards.Verdict]] = []
        values = []
        for facts in all_facts:
            keys = _contact_keys(facts["customer_key"] or facts["cart_key"], facts["email"], facts["phone"])
            in_batch = max(
                (
                    contacted[key][0]
                    for key in keys
                    if key in contacted and contacted[key][1] != facts["cart_key"]
                ),
                default=None,
            )
            verdict = guards.evaluate(facts, now, settings, contacted_in_batch=in_batch)
            if verdict.action == "send":
                contacted.update(dict.fromkeys(keys, (now, facts["cart_key"])))
            decided.append((facts, verdict))
            recipient = _recipient(facts, verdict.channel) if verdict.channel else None
            values.append(
                (
                    facts["plan_key"],
                    _VERDICT_STATUS[verdict.action],
                    verdict.reason,
                    verdict.channel,
                    recipient,
                    facts["cart_url"],
                    verdict.until,
                    _json(verdict.guards),
                    claimer,
                    now,
                )
            )
        execute_values(
            cursor,
            APPLY_SQL,
            values,
            template="(%s, %s, %s, %s, %s, %s, %s::timestamptz, %s, %s, %s::timestamptz)",
            page_size=len(values),  # one statement for the chunk
        )
    claimed = [Claimed(facts, verdict) for facts, verdict in decided if verdict.action == "send"]
    return claimed, decided


def record(conn, claimer: str, results: Iterable[Result], revoke=None) -> int:
    """Write the providers' answers for rows this claimer holds; how many rows were updated.

    ``revoke(cursor, results)`` runs in the same transaction (consent taken back by an answer).
    """
    results = list(results)
    values = [
        (
            r.plan_key,
            r.status,
            r.reason,
            r.channel,
            r.recipient,
            r.template,
            r.due_at,
            r.provider_message_id,
            _json(r.provider_response) if r.provider_response is not None else None,
            r.rendered_text,
            r.coupon_code,
            r.coupon_pct,
            r.coupon_free_shipping,
            r.coupon_expires_at,
            r.error_code,
            r.error,
            _json(r.guards) if r.guards else None,
            r.at,
            claimer,
        )
        for r in results
    ]
    if not values:
        return 0
    with conn, conn.cursor() as cursor:
        execute_values(
            cursor,
            RECORD_SQL,
            values,
            template="(%s, %s, %s, %s, %s, %s, %s::timestamptz, %s, %s, %s, %s, %s::numeric, %s::boolean, "
            "%s::timestamptz, %s, %s, %s, %s::timestamptz, %s)",
            page_size=len(values),
        )
        updated = cursor.rowcount
        if revoke is not None:
            revoke(cursor, results)
        return updated


_encoder = msgspec.json.Encoder()


def _json(value: Any) -> str:
    """A jsonb parameter's text (msgspec: several times cheaper than json.dumps per row)."""
    return _encoder.encode(value).decode()


def _contact_keys(person: str, email: str | None, phone: str | None) -> list[str]:
    return [
        f"customer:{person}",
        *([f"email:{email}"] if email else []),
        *([f"phone:{phone}"] if phone else []),
    ]


def _recipient(facts: dict[str, Any], channel: str) -> str | None:
    return facts["phone"] if channel == "whatsapp" else facts["email"]
