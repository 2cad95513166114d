"""Claims and records against a real dbt build: the defects an adversarial review found, kept as
regression tests (each failed before its fix).

Each test states what went wrong. The plan comes from a real dbt build of the recovery
story plus the review's carts (``review_story.py``); status callbacks go through the webhook
service's own funnel (``cart_recovery.webhooks.funnel``), consent through ``consent.revoke``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extras import Json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # review_story
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dbt"))  # the story's raw-row helpers

from dbt_raw_rows import run_dbt, shopify_customer, shopify_order
from recovery_story import AS_OF, SHOPIFY, WOO
from review_story import (
    NIGHT_CHECKOUT,
    NIGHT_IDLE,
    QUIET_END,
    SHARED_CHECKOUT,
    SHARED_PHONE,
    SHARED_WOO_CART,
    review_story,
)
from warehouse_rows import execute, rows

from cart_recovery.dispatch import consent, outbox
from cart_recovery.dispatch.config import DispatchSettings
from cart_recovery.webhooks.funnel import apply_whatsapp_event

pytestmark = pytest.mark.slow

SETTINGS = DispatchSettings(lookback=timedelta(days=90), expire_after=timedelta(days=90), quiet_hours=None)
NOW = AS_OF


@pytest.fixture(scope="module")
def database(module_database):
    return module_database


@pytest.fixture(scope="module")
def built(database) -> Iterator[str]:
    conn = psycopg2.connect(database.url)
    review_story().write(conn)
    conn.close()
    run_dbt("build", "--full-refresh", as_of=AS_OF)
    yield database.url


@pytest.fixture
def url(built) -> Iterator[str]:
    yield built
    conn = psycopg2.connect(built)
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "truncate ops.recovery_outbox, ops.consent_revocations, ops.conversations;"
            "delete from raw.webhook_events where delivery_id like 'review-%%'"
        )
    conn.close()


def claim_all(url: str, stage: int, now=NOW, settings: DispatchSettings = SETTINGS, claimer: str = "review"):
    """Enqueue and claim every due row of the stage as a dispatcher does; {plan_key: verdict}."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            outbox.enqueue_due(cursor, stage, now, settings)
        verdicts = {}
        while True:
            _sent, decided = outbox.claim(conn, stage, now, settings, claimer, {})
            if not decided:
                return verdicts
            verdicts.update({facts["plan_key"]: verdict for facts, verdict in decided})
    finally:
        conn.close()


def plan_row(url: str, shop_id: str, source_cart_id: int, stage: int) -> dict:
    [row] = rows(
        url,
        """
        select plan.*, carts.phone, carts.email
        from marts.recovery_plan as plan
        join marts.abandoned_carts as carts using (cart_key)
        where carts.shop_id = %s and carts.source_cart_id = %s and plan.stage = %s
        """,
        (shop_id, str(source_cart_id), stage),
    )
    return row


def a_claimed_whatsapp_row(url: str) -> dict:
    verdicts = claim_all(url, 1)
    [row] = rows(
        url,
        "select * from ops.recovery_outbox where status = 'sending' and channel = 'whatsapp' "
        "and plan_key = any(%s) order by plan_key limit 1",
        ([key for key, verdict in verdicts.items() if verdict.action == "send"],),
    )
    return row


def meta_status(url: str, row: dict, message_id: str, status: str, at, errors: list | None = None) -> None:
    """One WhatsApp status callback, as Meta posts it, applied by the webhook service's funnel."""
    item = {
        "id": message_id,
        "status": status,
        "timestamp": str(int(at.timestamp())),
        "recipient_id": row["recipient"].lstrip("+"),
        "biz_opaque_callback_data": row["plan_key"],
    }
    if errors:
        item["errors"] = errors
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "waba", "changes": [{"field": "messages", "value": {"statuses": [item]}}]}],
    }
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            apply_whatsapp_event(cursor, "statuses", json.dumps(payload), at)
    finally:
        conn.close()


def record(url: str, result: outbox.Result, claimer: str = "review") -> int:
    conn = psycopg2.connect(url)
    try:
        return outbox.record(conn, claimer, [result])
    finally:
        conn.close()


# -- 1. the dispatcher's record against a status callback that got there first ------------------


def test_a_sent_callback_before_the_record_keeps_the_coupon_and_the_text(url):
    row = a_claimed_whatsapp_row(url)
    sent_at = NOW + timedelta(seconds=1)
    # Meta accepted the request; its 'sent' status (echoing the plan_key) is applied by the webhook
    # service while the dispatcher is still gathering the rest of the chunk
    meta_status(url, row, "wamid.review-sent-1", "sent", sent_at)
    assert rows(url, "select status from ops.recovery_outbox where plan_key = %s", (row["plan_key"],)) == [
        {"status": "sent"}
    ]
    updated = record(
        url,
        outbox.Result(
            plan_key=row["plan_key"],
            status="sent",
            channel="whatsapp",
            recipient=row["recipient"],
            at=sent_at,
            template="cart_reminder_coupon_tr",
            provider_message_id="wamid.review-sent-1",
            provider_response={"messages": [{"id": "wamid.review-sent-1"}]},
            rendered_text="Merhaba, sepetiniz sizi bekliyor: %10 indirim kodu CRREVIEW000001",
            coupon_code="CRREVIEW000001",
            coupon_pct=Decimal("10.00"),
            coupon_free_shipping=False,
            coupon_expires_at=NOW + timedelta(hours=48),
        ),
    )
    [stored] = rows(url, "select * from ops.recovery_outbox where plan_key = %s", (row["plan_key"],))
    assert updated == 1
    assert stored["coupon_code"] == "CRREVIEW000001"
    assert stored["rendered_text"].endswith("CRREVIEW000001")
    assert stored["template"] == "cart_reminder_coupon_tr"
    assert stored["provider_response"] == {"messages": [{"id": "wamid.review-sent-1"}]}


def test_an_unknown_answer_does_not_move_a_delivered_row_back(url):
    row = a_claimed_whatsapp_row(url)
    meta_status(url, row, "wamid.review-delivered-1", "delivered", NOW + timedelta(seconds=2))
    record(
        url,
        outbox.Result(
            plan_key=row["plan_key"],
            status="unknown",
            reason="no_answer",
            channel="whatsapp",
            recipient=row["recipient"],
            at=NOW + timedelta(seconds=30),
            error="ReadTimeout: no answer",
        ),
    )
    [stored] = rows(
        url,
        "select status, delivered_at, provider_message_id from ops.recovery_outbox where plan_key = %s",
        (row["plan_key"],),
    )
    assert stored["status"] == "delivered"
    assert stored["provider_message_id"] == "wamid.review-delivered-1"


def test_a_failed_callback_before_the_record_keeps_its_error(url):
    row = a_claimed_whatsapp_row(url)
    meta_status(
        url,
        row,
        "wamid.review-failed-1",
        "failed",
        NOW + timedelta(seconds=2),
        errors=[
            {"code": 131026, "title": "Message undeliverable", "error_data": {"details": "not on WhatsApp"}}
        ],
    )
    record(
        url,
        outbox.Result(
            plan_key=row["plan_key"],
            status="sent",
            channel="whatsapp",
            recipient=row["recipient"],
            at=NOW + timedelta(seconds=1),
            provider_message_id="wamid.review-failed-1",
            rendered_text="Merhaba",
        ),
    )
    [stored] = rows(
        url, "select status, error_code from ops.recovery_outbox where plan_key = %s", (row["plan_key"],)
    )
    assert stored == {"status": "failed", "error_code": "131026"}


# -- 2. guards read live data only up to the trigger's moment -----------------------------------


def a_whatsapp_row_that_would_be_sent(url: str) -> dict:
    verdicts = claim_all(url, 1)
    execute(url, "truncate ops.recovery_outbox")
    sendable = [
        key for key, verdict in verdicts.items() if verdict.action == "send" and verdict.channel == "whatsapp"
    ]
    [row] = rows(
        url,
        """
        select plan.plan_key, plan.shop_id, carts.phone, carts.email, carts.customer_platform_id
        from marts.recovery_plan as plan join marts.abandoned_carts as carts using (cart_key)
        where plan.plan_key = any(%s) and plan.shop_id = %s order by plan.plan_key limit 1
        """,
        (sendable, SHOPIFY),
    )
    return row


def test_a_stop_received_after_the_trigger_fired_is_honoured(url):
    row = a_whatsapp_row_that_would_be_sent(url)
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:
        # the webhook service records the STOP with Meta's timestamp: a minute after the trigger
        consent.revoke(cursor, "whatsapp", row["phone"], "whatsapp_stop", NOW + timedelta(minutes=1))
    conn.close()
    verdict = claim_all(url, 1)[row["plan_key"]]  # the send task, started (or retried) a bit later
    assert not (verdict.action == "send" and verdict.channel == "whatsapp"), verdict


def test_an_order_placed_after_the_trigger_fired_stops_the_reminder(url):
    row = a_whatsapp_row_that_would_be_sent(url)
    ordered = NOW + timedelta(minutes=1)
    buyer = shopify_customer(
        int(row["customer_platform_id"]), "Buyer", row["email"], row["phone"], True, True
    )
    execute(
        url,
        "insert into raw.webhook_events (platform, shop_id, topic, delivery_id, received_at, payload) "
        "values ('shopify', %s, 'orders/create', 'review-order-1', %s, %s)",
        (row["shop_id"], ordered, Json(shopify_order(99101, buyer, "450.00", ordered))),
    )
    verdict = claim_all(url, 1)[row["plan_key"]]
    assert (verdict.action, verdict.reason) == ("suppress", "ordered_since_cart")


# -- 3. the frequency cap and one WhatsApp number shared by every shop ---------------------------


def test_one_phone_with_carts_in_two_shops_gets_one_message_per_window(url):
    shopify = plan_row(url, SHOPIFY, SHARED_CHECKOUT, 1)
    woo = plan_row(url, WOO, SHARED_WOO_CART, 1)
    assert shopify["phone"] == woo["phone"] == SHARED_PHONE
    assert shopify["customer_key"] != woo["customer_key"]  # customer keys are per shop
    verdicts = claim_all(url, 1)
    actions = [verdicts[shopify["plan_key"]].action, verdicts[woo["plan_key"]].action]
    assert actions.count("send") == 1, actions
    assert "defer" in actions


# -- 4. quiet hours release every deferred stage of one cart at once -----------------------------


def test_stages_deferred_over_one_night_are_not_sent_together_in_the_morning(url):
    quiet = DispatchSettings(lookback=timedelta(days=90))  # default 21:00-09:00 and a 6 h expiry
    first, second = plan_row(url, SHOPIFY, NIGHT_CHECKOUT, 1), plan_row(url, SHOPIFY, NIGHT_CHECKOUT, 2)
    assert NIGHT_IDLE < first["due_at"] < second["due_at"] < QUIET_END
    evening = claim_all(url, 1, now=first["due_at"] + timedelta(minutes=1), settings=quiet)
    night = claim_all(url, 2, now=second["due_at"] + timedelta(minutes=1), settings=quiet)
    assert (evening[first["plan_key"]].reason, night[second["plan_key"]].reason) == ("quiet_hours",) * 2
    morning = QUIET_END + timedelta(minutes=1)
    one = claim_all(url, 1, now=morning, settings=quiet, claimer="stage-1")[first["plan_key"]]
    two = claim_all(url, 2, now=morning, settings=quiet, claimer="stage-2")[second["plan_key"]]
    assert [one.action, two.action].count("send") <= 1, (one, two)
