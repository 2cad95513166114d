"""Send-time guards: what live data says about one due plan row, and what to do with it.

The plan (dbt) decided at build time; by the time a stage falls due the person may have ordered,
revoked consent, started a newer cart or replied. So every row is checked again at send time
against live data: the raw layer (orders and carts that landed since the last build), the
operational tables (consent revocations, open conversations, what was already sent) and the last
build for what it already knew.

``FACTS_SQL`` gathers the facts of a chunk of claimed rows in one query (set-based: a chunk of
hundreds of rows costs a few scans, not one per row); ``evaluate`` turns one row's facts into a
``Verdict``. Both take ``now`` from the caller: the run's clock, never the wall clock.

Orders and carts that landed after the last build are matched on the person's contacts found
anywhere in their payloads (an email, or a phone number in its E.164 form from
``ops.phone_numbers``, which ingest wrote with the payload: ``07700 900456`` in a UK shop's order
is the plan's ``+447700900456``), because the platforms nest them differently and the raw layer is
not parsed yet; their own time (when ordered, when the cart changed) comes from
``ops.raw_event_time``, which reads it as the staging models do. This errs on the side of not
sending: a raw order that mentions the person, placed after the cart was created (or with no
readable time), stops the episode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cart_recovery.dispatch.config import DispatchSettings

# Webhook topics that carry orders and carts, per platform (as the dbt staging models read them).
ORDER_TOPICS = (
    "orders/create",
    "orders/updated",
    "orders/paid",
    "order.created",
    "order.updated",
    "order/created",
    "order/updated",
)
CART_TOPICS = (
    "checkouts/create",
    "checkouts/update",
    "cart.created",
    "cart.updated",
    "abandoned_cart/created",
    "abandoned_cart/updated",
)
# A row in one of these states counts as a message to the person (for the frequency cap and the
# stage cap): it was sent, or it may have been.
CONTACTED = ("sending", "sent", "delivered", "read", "unknown")
# Raw rows this much older than the last build's newest landing time are re-checked too: the
# webhook service and the poller stamp landing times on different hosts.
FRESH_MARGIN = timedelta(minutes=5)
# How long to hold a row whose cart saw activity since the last build: the next build re-plans it.
REPLAN_WAIT = timedelta(minutes=5)
# How long an email fallback waits for the dispatcher to record its WhatsApp message (and coupon).
RECORD_WAIT = timedelta(minutes=1)

FACTS_SQL = """
with claimed as (
    select outbox.plan_key, outbox.cart_key, outbox.stage, outbox.shop_id, outbox.platform,
        outbox.due_at as outbox_due_at, outbox.planned_due_at, outbox.attempts,
        -- an email queued because WhatsApp reported the message undeliverable: its error, the
        -- coupon that message carried (read now: the callback may have come before the
        -- dispatcher recorded it), whether that record is there yet, and when it went out
        outbox.fallback_of, failed.error_code as fallback_error,
        failed.coupon_code as fallback_coupon_code, failed.coupon_pct as fallback_coupon_pct,
        failed.coupon_free_shipping as fallback_coupon_free_shipping,
        failed.coupon_expires_at as fallback_coupon_expires_at,
        failed.rendered_text is not null as fallback_parent_recorded,
        failed.claimed_at as fallback_parent_claimed_at,
        coalesce(failed.sent_at, failed.claimed_at) as fallback_parent_sent_at
    from ops.recovery_outbox as outbox
    left join ops.recovery_outbox as failed on failed.outbox_id = outbox.fallback_of
    where outbox.plan_key = any(%(plan_keys)s)
),

facts as (
    select
        claimed.*,
        plan.cart_key is not null as plan_present,
        plan.customer_key,
        plan.suppressed_reason as plan_suppressed_reason,
        plan.due_at as plan_due_at,
        plan.channel as plan_channel,
        plan.template,
        plan.language,
        plan.coupon_pct,
        plan.free_shipping,
        plan.coupon_expires_at,
        carts.email,
        carts.phone,
        carts.first_name,
        carts.timezone,
        carts.currency,
        carts.cart_url,
        carts.line_items,
        carts.cart_value,
        carts.customer_platform_id,
        carts.created_at as cart_created_at,
        carts.last_activity_at,
        carts.superseded_at,
        coalesce(carts.email_consent, false) as email_consent,
        coalesce(carts.message_consent, false) as message_consent
    from claimed
    left join marts.recovery_plan as plan
        on plan.cart_key = claimed.cart_key and plan.stage = claimed.stage
    left join marts.abandoned_carts as carts
        on carts.cart_key = claimed.cart_key
),

watermarks as (
    -- the newest landing the last build parsed, per staging table (each has a landed_at index)
    select
        coalesce(greatest(
            (select max(landed_at) from staging.stg_shopify__orders),
            (select max(landed_at) from staging.stg_woocommerce__orders),
            (select max(landed_at) from staging.stg_ticimax__orders),
            (select max(landed_at) from staging.stg_ideasoft__orders)
        ), '-infinity') - %(margin)s::interval as orders_landed,
        coalesce(greatest(
            (select max(landed_at) from staging.stg_shopify__checkouts),
            (select max(landed_at) from staging.stg_woocommerce__carts),
            (select max(landed_at) from staging.stg_ticimax__carts),
            (select max(landed_at) from staging.stg_ideasoft__carts)
        ), '-infinity') - %(margin)s::interval as carts_landed
),

fresh_landed as (
    -- what landed since the last build: not parsed by dbt yet
    select 'order' as entity, polled.platform, polled.shop_id, polled.payload
    from raw.polled_records as polled, watermarks
    where polled.entity = 'order' and polled.fetched_at > watermarks.orders_landed
    union all
    select 'cart', polled.platform, polled.shop_id, polled.payload
    from raw.polled_records as polled, watermarks
    where polled.entity = 'cart' and polled.fetched_at > watermarks.carts_landed
    union all
    select
        case when events.topic = any(%(order_topics)s) then 'order' else 'cart' end,
        events.platform, events.shop_id, events.payload
    from raw.webhook_events as events, watermarks
    where (events.topic = any(%(order_topics)s) and events.received_at > watermarks.orders_landed)
        or (events.topic = any(%(cart_topics)s) and events.received_at > watermarks.carts_landed)
),

fresh_raw as materialized (
    -- numbered once, so a match reads its row's own time without copying the row around
    select row_number() over () as n, entity, platform, shop_id, payload from fresh_landed
),

fresh_contacts as materialized (
    -- every email in those payloads (their string and number leaves at any depth: jsonpath's
    -- strict .** visits each once), and every phone number in its E.164 form: a leaf with 7 to
    -- 15 digits (counted before any lookup) that ops.phone_numbers knows for the shop, stored
    -- with the payload and read in the shop's country, as the plan's phone was
    select fresh_raw.n, fresh_raw.shop_id, contact.token
    from fresh_raw
    cross join lateral jsonb_path_query(
        fresh_raw.payload, 'strict $.** ? (@.type() == "string" || @.type() == "number")'
    ) as leaf (node)
    cross join lateral (select leaf.node #>> '{}' as value) as leaves
    cross join lateral (
        select case
            when leaves.value like '%%@%%' then lower(trim(leaves.value))
            when length(leaves.value) - length(translate(leaves.value, '0123456789', ''))
                between 7 and 15
                then (
                    select numbers.e164 from ops.phone_numbers as numbers
                    where numbers.shop_id = fresh_raw.shop_id and numbers.raw = leaves.value
                )
        end as token
    ) as contact
    where contact.token is not null
),

fresh_matches as (
    -- the chunk's people in them (a hash join on the token); each matched row's own time (when
    -- ordered, when the cart last changed) is read only then; unreadable: now
    select facts.plan_key, fresh_raw.entity
    from facts
    cross join lateral (values (facts.email), (facts.phone)) as mine (token)
    inner join fresh_contacts
        on fresh_contacts.token = mine.token and fresh_contacts.shop_id = facts.shop_id
    inner join fresh_raw on fresh_raw.n = fresh_contacts.n
    cross join lateral (
        select coalesce(ops.raw_event_time(fresh_raw.platform, fresh_raw.entity, fresh_raw.payload), %(now)s)
            as event_at
    ) as raw_time
    where (fresh_raw.entity = 'order' and raw_time.event_at >= facts.cart_created_at)
        or (fresh_raw.entity = 'cart' and raw_time.event_at > facts.last_activity_at)
)

select
    facts.*,
    exists (
        -- orders the last build knows, by customer id, email or phone (index probes per row:
        -- staging orders are indexed on each with the shop)
        select 1 from intermediate.int_orders_unioned as orders
        where orders.shop_id = facts.shop_id and orders.is_placed
            and orders.ordered_at >= facts.cart_created_at
            and (orders.customer_platform_id = facts.customer_platform_id
                or orders.email = facts.email or orders.phone = facts.phone)
    ) as built_order,
    exists (
        select 1 from fresh_matches
        where fresh_matches.plan_key = facts.plan_key and fresh_matches.entity = 'order'
    ) as fresh_order,
    exists (
        select 1 from fresh_matches
        where fresh_matches.plan_key = facts.plan_key and fresh_matches.entity = 'cart'
    ) as fresh_cart_activity,
    exists (
        select 1 from ops.consent_revocations as revoked
        where revoked.channel = 'whatsapp' and revoked.address = facts.phone
            and (revoked.shop_id is null or revoked.shop_id = facts.shop_id)
    ) as whatsapp_revoked,
    exists (
        select 1 from ops.consent_revocations as revoked
        where revoked.channel = 'email' and revoked.address = facts.email
            and (revoked.shop_id is null or revoked.shop_id = facts.shop_id)
    ) as email_revoked,
    (
        select conversations.last_inbound_at from ops.conversations as conversations
        where conversations.channel = 'whatsapp' and conversations.address = facts.phone
    ) as last_inbound_at,
    (
        select max(coalesce(earlier.sent_at, earlier.claimed_at))
        from ops.recovery_outbox as earlier
        where earlier.status = any(%(contacted)s)
            and earlier.cart_key <> facts.cart_key
            and (earlier.customer_key = facts.customer_key
                or earlier.recipient in (facts.phone, facts.email))
    ) as last_contact_at,
    (
        select max(coalesce(episode.sent_at, episode.claimed_at)) from ops.recovery_outbox as episode
        where episode.cart_key = facts.cart_key and episode.plan_key <> facts.plan_key
            and episode.status = any(%(contacted)s)
    ) as last_episode_contact_at,
    (
        select count(*) from ops.recovery_outbox as episode
        where episode.cart_key = facts.cart_key and episode.plan_key <> facts.plan_key
            and episode.status = any(%(contacted)s)
    ) as episode_messages,
    exists (
        select 1 from ops.recovery_outbox as later
        where later.cart_key = facts.cart_key and later.stage > facts.stage
            and later.status = any(%(contacted)s)
    ) as later_stage_contacted
from facts
"""


def facts_parameters(plan_keys: list[str], now: datetime) -> dict[str, Any]:
    return {
        "plan_keys": plan_keys,
        "now": now,
        "margin": FRESH_MARGIN,
        "order_topics": list(ORDER_TOPICS),
        "cart_topics": list(CART_TOPICS),
        "contacted": list(CONTACTED),
    }


@dataclass(frozen=True)
class Verdict:
    """What to do with one due row. ``action``: send, suppress, defer, holdout or expire."""

    action: str
    reason: str | None = None
    until: datetime | None = None  # defer: the earliest moment to look again
    channel: str | None = None  # send / holdout: the channel after consent checks
    guards: dict[str, str] = field(default_factory=dict)  # guard -> pass | suppress:... | defer:...


def quiet_hours_end(now: datetime, timezone: str, settings: DispatchSettings) -> datetime | None:
    """The end of the quiet hours ``now`` falls in, in the customer's time zone; None when outside.

    Computed on the local wall clock and converted back, so it is right across DST changes
    (09:00 local is 08:00 or 07:00 UTC in Istanbul's or London's winter, whatever the offset was
    when the hours began).
    """
    if settings.quiet_hours is None:
        return None
    start, end = settings.quiet_hours
    zone = ZoneInfo(timezone or "UTC")
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    if start == end:
        return None
    inside = (start <= clock or clock < end) if start > end else (start <= clock < end)
    if not inside:
        return None
    day = local.date() if clock < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=zone).astimezone(now.tzinfo)


def evaluate(
    facts: Mapping[str, Any],
    now: datetime,
    settings: DispatchSettings,
    *,
    contacted_in_batch: datetime | None = None,
) -> Verdict:
    """Check one due row's facts (a row of ``FACTS_SQL``) in order; the first that stops it wins.

    ``contacted_in_batch``: when this dispatcher already claimed a message to the same person in
    this batch (the database cannot know yet), for the frequency cap.
    """
    guards: dict[str, str] = {}

    def stop(action: str, reason: str, **extra: Any) -> Verdict:
        guards[reason] = action
        return Verdict(action=action, reason=reason, guards=guards, **extra)

    # the plan as it stands now: a later build may have dropped, suppressed or moved the row
    if not facts["plan_present"]:
        return stop("suppress", "no_longer_planned")
    plan_reason = facts["plan_suppressed_reason"]
    if plan_reason not in (None, "holdout"):
        return stop("suppress", f"plan_{plan_reason}")
    if facts["plan_due_at"] > now:
        return stop("defer", "replanned", until=facts["plan_due_at"])
    guards["plan"] = "pass"

    if now - facts["outbox_due_at"] > settings.expire_after:
        return stop("expire", "expired")
    fallback = facts.get("fallback_of") is not None
    parent_sent_at = facts.get("fallback_parent_sent_at") if fallback else None
    if parent_sent_at is not None and now - parent_sent_at > settings.expire_after:
        # the email stands in for that WhatsApp message: as late as it is, not as the failure
        return stop("expire", "expired")
    guards["on_time"] = "pass"
    if fallback:
        if facts["later_stage_contacted"]:
            # the episode moved on (a later stage went out): this stage's message is stale
            return stop("suppress", "superseded_by_later_stage")
        recorded_by = (facts["fallback_parent_claimed_at"] or now) + settings.lease
        if not facts["fallback_parent_recorded"] and now < recorded_by:
            # Meta's callback came before the dispatcher recorded the WhatsApp message (and its
            # coupon): wait for that record, at most until the message's lease ends
            return stop("defer", "whatsapp_answer_not_recorded", until=min(now + RECORD_WAIT, recorded_by))
        guards["fallback"] = "pass"

    if facts["built_order"] or facts["fresh_order"]:
        return stop("suppress", "ordered_since_cart")
    guards["no_order_since_cart"] = "pass"

    if facts["superseded_at"] is not None and facts["superseded_at"] <= now:
        return stop("suppress", "superseded_by_newer_cart")
    guards["no_newer_cart"] = "pass"

    if facts["fresh_cart_activity"]:
        return stop("defer", "cart_activity_since_plan", until=now + REPLAN_WAIT)
    guards["no_cart_activity_since_plan"] = "pass"

    channel = _channel(facts)
    if channel is None:
        return stop("suppress", "whatsapp_unreachable" if facts.get("fallback_of") else "no_consent")
    guards["consent"] = "pass" if channel == facts["plan_channel"] else f"pass:fallback_{channel}"

    if facts["episode_messages"] >= 3:
        return stop("suppress", "stage_cap")
    guards["stage_cap"] = "pass"

    if plan_reason == "holdout":
        # never sent; recorded with the guards above as what would have been sent
        guards["holdout"] = "holdout"
        return Verdict(action="holdout", reason="holdout", channel=channel, guards=guards)

    waits: dict[str, datetime] = {}
    if facts["last_inbound_at"] is not None and now < facts["last_inbound_at"] + settings.reply_quiet:
        waits["conversation_open"] = facts["last_inbound_at"] + settings.reply_quiet
    last_contact = max(
        (moment for moment in (facts["last_contact_at"], contacted_in_batch) if moment is not None),
        default=None,
    )
    if last_contact is not None and now < last_contact + settings.frequency_cap:
        waits["frequency_cap"] = last_contact + settings.frequency_cap
    # stages held back together (quiet hours, a reply) go out one stage_gap apart, not at once
    episode_contact = facts.get("last_episode_contact_at")
    if episode_contact is not None and now < episode_contact + settings.stage_gap:
        waits["stage_gap"] = episode_contact + settings.stage_gap
    quiet_end = quiet_hours_end(now, facts["timezone"], settings)
    if quiet_end is not None:
        waits["quiet_hours"] = quiet_end
    if facts["platform"] == "shopify" and facts["stage"] == 1 and facts["last_activity_at"] is not None:
        ready = facts["last_activity_at"] + settings.shopify_recovery_delay
        if now < ready:
            waits["recovery_url_not_ready"] = ready
    for name in ("conversation_open", "frequency_cap", "stage_gap", "quiet_hours", "recovery_url_not_ready"):
        guards[name] = f"defer:{waits[name].isoformat()}" if name in waits else "pass"
    if waits:
        reason, until = max(waits.items(), key=lambda item: item[1])
        return Verdict(action="defer", reason=reason, until=until, guards=guards)
    return Verdict(action="send", channel=channel, guards=guards)


def _channel(facts: Mapping[str, Any]) -> str | None:
    """The plan's channel if its consent still holds, else email where email consent exists; only
    email for the fallback of a WhatsApp message that could not be delivered."""
    whatsapp_ok = facts["phone"] is not None and facts["message_consent"] and not facts["whatsapp_revoked"]
    email_ok = facts["email"] is not None and facts["email_consent"] and not facts["email_revoked"]
    if facts.get("fallback_of") is not None:
        return "email" if email_ok else None
    if facts["plan_channel"] == "whatsapp" and whatsapp_ok:
        return "whatsapp"
    if email_ok:
        return "email"
    return None
