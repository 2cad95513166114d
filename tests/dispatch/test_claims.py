"""Claiming due rows against live data: the outbox entry, the guards' facts, exactly-once claims.

The plan comes from a real dbt build of the recovery story (tests/dbt/recovery_story.py); what
happens after the build (an order by webhook, a STOP, a reply, a message already sent) is written
the way the webhook service and the poller write it, and the claim must see it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extras import Json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dbt"))  # the story's raw-row helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))  # as Airflow puts it on the path

from dbt_raw_rows import (
    cart_key,
    iso_gmt,
    run_dbt,
    shopify_checkout,
    shopify_customer,
    shopify_order,
    woo_order,
)
from recovery_story import AS_OF, UK_PHONE, WOO, story
from warehouse_rows import execute, rows

from cart_recovery.dispatch import outbox
from cart_recovery.dispatch.config import DispatchSettings

pytestmark = pytest.mark.slow

# The story's carts fell due through December; look back far enough to see them all, never expire
# them, and keep quiet hours out of the way except where a test sets them.
SETTINGS = DispatchSettings(lookback=timedelta(days=90), expire_after=timedelta(days=90), quiet_hours=None)
NOW = AS_OF


@pytest.fixture(scope="module")
def database(module_database):
    return module_database


@pytest.fixture(scope="module")
def built(database) -> Iterator[str]:
    conn = psycopg2.connect(database.url)
    story().write(conn)
    conn.close()
    run_dbt("build", "--full-refresh", as_of=AS_OF)
    yield database.url


@pytest.fixture
def url(built) -> Iterator[str]:
    """The built warehouse, with the outbox and everything written after the build reset."""
    yield built
    conn = psycopg2.connect(built)
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "truncate ops.recovery_outbox, ops.consent_revocations, ops.conversations;"
            "delete from raw.webhook_events where delivery_id like 'after-build-%%'"
        )
    conn.close()


def claim_all(url: str, stage: int, claimer: str = "test", settings: DispatchSettings = SETTINGS):
    """Enqueue and claim every due row of the stage; (claimed plan keys, {plan_key: verdict})."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            outbox.enqueue_due(cursor, stage, NOW, settings)
        claimed, verdicts = [], {}
        while True:
            sent, decided = outbox.claim(conn, stage, NOW, settings, claimer, {})
            if not decided:
                return claimed, verdicts
            claimed += [row.plan_key for row in sent]
            verdicts.update({facts["plan_key"]: verdict for facts, verdict in decided})
    finally:
        conn.close()


def due_plan(url: str, stage: int) -> list[dict]:
    return rows(
        url,
        """
        select plan.*, carts.email, carts.phone
        from marts.recovery_plan as plan
        join marts.abandoned_carts as carts using (cart_key)
        where plan.stage = %s and plan.due_at <= %s and plan.due_at > %s
            and (plan.suppressed_reason is null or plan.suppressed_reason = 'holdout')
        order by plan.plan_key
        """,
        (stage, NOW, NOW - SETTINGS.lookback),
    )


def test_due_rows_enter_the_outbox_once_with_the_rule_that_planned_them(url):
    expected = due_plan(url, 1)
    assert expected, "the story has stage-1 rows due by AS_OF"
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:
        first = outbox.enqueue_due(cursor, 1, NOW, SETTINGS)
        again = outbox.enqueue_due(cursor, 1, NOW, SETTINGS)
    conn.close()
    assert (first, again) == (len(expected), 0)
    stored = rows(url, "select * from ops.recovery_outbox order by plan_key")
    assert [row["plan_key"] for row in stored] == [row["plan_key"] for row in expected]
    for row, plan in zip(stored, expected, strict=True):
        assert row["status"] == "queued"
        assert row["planned_due_at"] == plan["due_at"]
        assert row["planned_by"]["template"] == plan["template"]
        assert row["planned_by"]["suppressed_reason"] == plan["suppressed_reason"]
        assert isinstance(row["planned_by"]["segments"], list)


def test_holdout_rows_are_recorded_and_the_rest_claimed_for_sending(url):
    plan = {row["plan_key"]: row for row in due_plan(url, 1)}
    claimed, verdicts = claim_all(url, 1)
    assert set(verdicts) == set(plan)
    held = {key for key, row in plan.items() if row["suppressed_reason"] == "holdout"}
    assert held, "the story has a holdout customer with a due stage-1 row"
    assert {key for key, verdict in verdicts.items() if verdict.action == "holdout"} == held
    assert not held & set(claimed)
    stored = {row["plan_key"]: row for row in rows(url, "select * from ops.recovery_outbox")}
    for key in claimed:
        assert stored[key]["status"] == "sending"
        assert stored[key]["claimed_by"] == "test"
        assert stored[key]["recipient"] in (plan[key]["phone"], plan[key]["email"])
        assert stored[key]["guards"]["no_order_since_cart"] == "pass"
    for key in held:
        assert (stored[key]["status"], stored[key]["sent_at"]) == ("holdout", None)


def test_an_order_that_landed_after_the_build_stops_the_episode(url):
    _claimed, before = claim_all(url, 1)
    execute(url, "truncate ops.recovery_outbox")
    ordered_before = {key for key, verdict in before.items() if verdict.reason == "ordered_since_cart"}
    plan = [
        row
        for row in due_plan(url, 1)
        if row["suppressed_reason"] is None and row["email"] and row["plan_key"] not in ordered_before
    ]
    target = plan[0]
    # the order arrives by webhook after the last build: only the raw layer knows it, and its
    # email is written the way the customer typed it
    buyer = shopify_customer(555001, "Late", target["email"].upper(), None, True, False)
    execute(
        url,
        "insert into raw.webhook_events (platform, shop_id, topic, delivery_id, received_at, payload) "
        "values ('shopify', %s, 'orders/create', 'after-build-order', %s, %s)",
        (target["shop_id"], NOW - timedelta(minutes=1), Json(shopify_order(99001, buyer, "10.00", NOW))),
    )
    claimed, verdicts = claim_all(url, 1)
    ordered_now = {key for key, verdict in verdicts.items() if verdict.reason == "ordered_since_cart"}
    same_person = {row["plan_key"] for row in plan if row["email"] == target["email"]}
    assert ordered_now == ordered_before | same_person
    assert target["plan_key"] not in claimed


def a_sendable_row_with_a_phone(url: str) -> dict:
    """A due row the guards would send, with its cart's phone and times."""
    _claimed, verdicts = claim_all(url, 1)
    execute(url, "truncate ops.recovery_outbox")
    sendable = [key for key, verdict in verdicts.items() if verdict.action == "send"]
    [row] = rows(
        url,
        """
        select plan.plan_key, plan.shop_id, carts.phone, carts.email, carts.created_at,
            carts.last_activity_at
        from marts.recovery_plan as plan join marts.abandoned_carts as carts using (cart_key)
        where plan.plan_key = any(%s) and carts.phone is not null
        order by plan.plan_key limit 1
        """,
        (sendable,),
    )
    return row


def land_webhook(url: str, shop_id: str, topic: str, delivery: str, payload: dict) -> None:
    execute(
        url,
        "insert into raw.webhook_events (platform, shop_id, topic, delivery_id, received_at, payload) "
        "values ('shopify', %s, %s, %s, %s, %s)",
        (shop_id, topic, f"after-build-{delivery}", NOW - timedelta(minutes=1), Json(payload)),
    )


def test_cart_activity_that_landed_after_the_build_waits_for_the_next_plan(url):
    row = a_sendable_row_with_a_phone(url)
    person = shopify_customer(555004, "Same", row["email"].upper(), None, True, False)
    earlier = row["last_activity_at"] - timedelta(minutes=5)
    land_webhook(
        url,
        row["shop_id"],
        "checkouts/update",
        "cart-earlier",
        shopify_checkout(99004, person, "10.00", earlier, earlier),
    )
    assert claim_all(url, 1)[1][row["plan_key"]].action == "send"  # nothing newer than the plan knew
    execute(url, "truncate ops.recovery_outbox")

    later = NOW - timedelta(minutes=2)
    land_webhook(
        url,
        row["shop_id"],
        "checkouts/update",
        "cart-later",
        shopify_checkout(99005, person, "10.00", row["created_at"], later),
    )
    verdict = claim_all(url, 1)[1][row["plan_key"]]
    assert (verdict.action, verdict.reason) == ("defer", "cart_activity_since_plan")


def test_a_raw_order_matches_the_person_by_phone_read_in_the_shops_country(url):
    """A guest order lands by webhook after the build, its only contact a phone number. In the UK
    shop, 07700 900456 is the plan's +447700900456: the episode stops. A +1 number that only
    shares its last ten digits (the rule this replaces matched those) is someone else."""
    from cart_recovery import phones
    from cart_recovery.webhooks.store import EventStore, WebhookEvent

    plan_key = next(
        row["plan_key"] for row in due_plan(url, 1) if row["cart_key"] == cart_key(WOO, "woocommerce", "604")
    )
    assert rows(
        url,
        "select phone from marts.abandoned_carts where cart_key = %s",
        (cart_key(WOO, "woocommerce", "604"),),
    ) == [{"phone": UK_PHONE}]

    def land_order(order_id: int, phone: str) -> None:
        order = {
            **woo_order(order_id, 0, "", "35.00", NOW - timedelta(hours=1)),
            "billing": {"email": None, "phone": phone},
            "date_created_gmt": iso_gmt(NOW - timedelta(hours=1)),
        }
        store = EventStore(url)
        try:
            store.insert(
                [
                    WebhookEvent(
                        "woocommerce",
                        WOO,
                        "order.created",
                        f"after-build-order-{order_id}",
                        NOW - timedelta(minutes=1),
                        Json(order).dumps(order),
                        tuple(phones.phone_rows(WOO, "GB", phones.phone_strings(order))),
                    )
                ]
            )
        finally:
            store.close()

    land_order(99101, "+1 770 090 0456")
    _claimed, verdicts = claim_all(url, 1)
    assert verdicts[plan_key].action == "send"
    execute(url, "truncate ops.recovery_outbox")

    land_order(99102, "07700 900456")
    _claimed, verdicts = claim_all(url, 1)
    assert (verdicts[plan_key].action, verdicts[plan_key].reason) == ("suppress", "ordered_since_cart")


def test_a_stop_after_the_build_falls_back_to_email_or_suppresses(url):
    _claimed, before = claim_all(url, 1)
    execute(url, "truncate ops.recovery_outbox")
    sendable = {key for key, verdict in before.items() if verdict.action == "send"}
    whatsapp = [
        row for row in due_plan(url, 1) if row["suppressed_reason"] is None and row["channel"] == "whatsapp"
    ]
    whatsapp = [row for row in whatsapp if row["plan_key"] in sendable]
    assert whatsapp, "the story has a due WhatsApp row that would be sent"
    for row in whatsapp:
        execute(
            url,
            "insert into ops.consent_revocations (channel, address, source, revoked_at) "
            "values ('whatsapp', %s, 'whatsapp_stop', %s)",
            (row["phone"], NOW - timedelta(minutes=5)),
        )
    _claimed, verdicts = claim_all(url, 1)
    consents = {
        row["cart_key"]: row
        for row in rows(url, "select cart_key, email_consent, email from marts.abandoned_carts")
    }
    for row in whatsapp:
        verdict = verdicts[row["plan_key"]]
        can_email = consents[row["cart_key"]]["email_consent"] and consents[row["cart_key"]]["email"]
        expected = ("send", None, "email") if can_email else ("suppress", "no_consent", None)
        assert (verdict.action, verdict.reason, verdict.channel) == expected, row["plan_key"]


def test_an_open_conversation_defers_and_the_row_comes_back_when_due(url):
    row = next(r for r in due_plan(url, 1) if r["suppressed_reason"] is None and r["channel"] == "whatsapp")
    replied = NOW - timedelta(hours=1)
    execute(
        url,
        "insert into ops.conversations (channel, address, last_inbound_at, last_message_id) "
        "values ('whatsapp', %s, %s, 'wamid.in1')",
        (row["phone"], replied),
    )
    _claimed, verdicts = claim_all(url, 1)
    assert (verdicts[row["plan_key"]].action, verdicts[row["plan_key"]].reason) == (
        "defer",
        "conversation_open",
    )
    [stored] = rows(
        url, "select status, due_at, reason from ops.recovery_outbox where plan_key = %s", (row["plan_key"],)
    )
    assert stored == {
        "status": "queued",
        "due_at": replied + SETTINGS.reply_quiet,
        "reason": "conversation_open",
    }
    # not claimable again before then
    _claimed, again = claim_all(url, 1)
    assert row["plan_key"] not in again


def test_the_frequency_cap_sees_messages_of_other_episodes(url):
    row = next(r for r in due_plan(url, 1) if r["suppressed_reason"] is None)
    sent = NOW - timedelta(hours=2)
    execute(
        url,
        """
        insert into ops.recovery_outbox (plan_key, cart_key, customer_key, shop_id, platform, stage,
            channel, status, planned_due_at, due_at, recipient, sent_at, created_at, updated_at)
        values ('other-episode', 'other-cart', %(customer)s, %(shop)s, %(platform)s, 1, 'email', 'sent',
            %(sent)s, %(sent)s, 'someone@example.com', %(sent)s, %(sent)s, %(sent)s)
        """,
        {"customer": row["customer_key"], "shop": row["shop_id"], "platform": row["platform"], "sent": sent},
    )
    _claimed, verdicts = claim_all(url, 1)
    verdict = verdicts[row["plan_key"]]
    assert (verdict.action, verdict.reason, verdict.until) == (
        "defer",
        "frequency_cap",
        sent + SETTINGS.frequency_cap,
    )


@pytest.mark.parametrize(
    ("same_cart", "expected"), [(True, ("send", None)), (False, ("defer", "frequency_cap"))]
)
def test_the_frequency_cap_within_a_batch_leaves_out_the_same_cart(url, same_cart, expected):
    """A message this run already claimed for the person counts against the cap, unless it was for
    this very cart (an email standing in for its undelivered WhatsApp message, in the same run)."""
    row = next(r for r in due_plan(url, 1) if r["suppressed_reason"] is None)
    earlier = NOW - timedelta(minutes=1)
    cart = row["cart_key"] if same_cart else "another-cart"
    contacted = {f"customer:{row['customer_key'] or row['cart_key']}": (earlier, cart)}
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            outbox.enqueue_due(cursor, 1, NOW, SETTINGS)
        verdicts = {}
        while True:
            _sent, decided = outbox.claim(conn, 1, NOW, SETTINGS, "test", contacted)
            if not decided:
                break
            verdicts.update({facts["plan_key"]: verdict for facts, verdict in decided})
    finally:
        conn.close()
    verdict = verdicts[row["plan_key"]]
    assert (verdict.action, verdict.reason) == expected, verdict


def test_two_dispatchers_racing_claim_each_row_once(url):
    results: dict[str, list[str]] = {}
    barrier = threading.Barrier(2)

    def dispatcher(name: str) -> None:
        barrier.wait()
        results[name] = claim_all(
            url,
            1,
            claimer=name,
            settings=DispatchSettings(
                lookback=SETTINGS.lookback,
                expire_after=SETTINGS.expire_after,
                quiet_hours=None,
                chunk_size=1,
            ),
        )[0]

    threads = [threading.Thread(target=dispatcher, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    both = results["a"] + results["b"]
    assert len(both) == len(set(both)), "a row claimed by both dispatchers"
    stored = rows(url, "select plan_key, claimed_by from ops.recovery_outbox where status = 'sending'")
    assert sorted(both) == sorted(row["plan_key"] for row in stored)
    assert all(row["claimed_by"] == ("a" if row["plan_key"] in results["a"] else "b") for row in stored)


def test_a_row_left_sending_becomes_unknown_and_is_never_claimed_again(url):
    claimed, _ = claim_all(url, 1)
    assert claimed
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:
        assert outbox.expire_leases(cursor, NOW + SETTINGS.lease - timedelta(seconds=1), SETTINGS) == 0
        assert outbox.expire_leases(cursor, NOW + SETTINGS.lease + timedelta(seconds=1), SETTINGS) == len(
            claimed
        )
        outbox.enqueue_due(cursor, 1, NOW + timedelta(hours=1), SETTINGS)
    conn.close()
    later = DispatchSettings(lookback=SETTINGS.lookback, expire_after=SETTINGS.expire_after, quiet_hours=None)
    conn = psycopg2.connect(url)
    again, _decided = outbox.claim(conn, 1, NOW + timedelta(hours=1), later, "later", {})
    conn.close()
    assert not {row.plan_key for row in again} & set(claimed)
    statuses = rows(
        url,
        "select status, count(*) as n from ops.recovery_outbox where plan_key = any(%s) group by 1",
        (claimed,),
    )
    assert statuses == [{"status": "unknown", "n": len(claimed)}]


def _first_event(trigger):
    import asyncio

    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(asyncio.wait_for(first(), timeout=30))


def test_the_stage_trigger_fires_when_rows_are_due_and_answers_idle_otherwise(url, monkeypatch):
    from cart_recovery_triggers import DuePlanTrigger

    monkeypatch.setenv("AIRFLOW_CONN_CART_RECOVERY_WAREHOUSE", url)
    lookback = SETTINGS.lookback.total_seconds()
    due = _first_event(DuePlanTrigger(stage=1, as_of=NOW.isoformat(), lookback_seconds=lookback))
    earliest = min(row["due_at"] for row in due_plan(url, 1))
    assert (due["status"], due["due_at"]) == ("due", earliest.isoformat())
    # before the first row falls due: idle, and it says when the next one is
    before = earliest - timedelta(minutes=1)
    idle = _first_event(DuePlanTrigger(stage=1, as_of=before.isoformat(), lookback_seconds=lookback))
    assert (idle["status"], idle["next_due_at"]) == ("idle", earliest.isoformat())
    # once every due row is in the outbox (and none is queued), nothing is due any more
    claim_all(url, 1)
    execute(url, "update ops.recovery_outbox set status = 'suppressed' where status = 'queued'")
    done = _first_event(DuePlanTrigger(stage=1, as_of=NOW.isoformat(), lookback_seconds=lookback))
    assert done["status"] == "idle"
    # it survives a restart of the triggerer: it serializes to what rebuilds it
    path, kwargs = DuePlanTrigger(stage=2, poll_interval=5).serialize()
    assert path == "cart_recovery_triggers.DuePlanTrigger"
    assert DuePlanTrigger(**kwargs).serialize() == (path, kwargs)


def test_rows_left_sending_wake_their_stage_when_the_lease_ends_so_they_become_unknown(url, monkeypatch):
    """A dispatcher killed mid-send leaves its rows ``sending``. Recovery (``unknown``) must not
    wait for the stage's next due row, which may be hours away: the stage wakes when the lease
    ends, and the run it starts turns the rows ``unknown``."""
    from cart_recovery_triggers import DuePlanTrigger

    monkeypatch.setenv("AIRFLOW_CONN_CART_RECOVERY_WAREHOUSE", url)
    lookback, lease = SETTINGS.lookback.total_seconds(), SETTINGS.lease
    killed, _ = claim_all(url, 1, claimer="killed")  # claimed at NOW, then the dispatcher died
    assert killed
    execute(url, "update ops.recovery_outbox set status = 'suppressed' where status = 'queued'")

    def trigger(at):
        return DuePlanTrigger(
            stage=1, as_of=at.isoformat(), lookback_seconds=lookback, lease_seconds=lease.total_seconds()
        )

    # before the lease ends nothing is due, and it says when the stage wakes
    idle = _first_event(trigger(NOW + lease - timedelta(seconds=1)))
    assert (idle["status"], idle["next_due_at"]) == ("idle", (NOW + lease).isoformat())
    # when it ends, the stage is due, and the run it starts (at the trigger's moment) recovers them
    due = _first_event(trigger(NOW + lease))
    assert (due["status"], due["due_at"]) == ("due", (NOW + lease).isoformat())
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            assert outbox.expire_leases(cursor, NOW + lease, SETTINGS) == len(killed)
    finally:
        conn.close()
    stored = rows(
        url, "select status, claimed_by from ops.recovery_outbox where plan_key = any(%s)", (killed,)
    )
    assert {(row["status"], row["claimed_by"]) for row in stored} == {("unknown", "killed")}
    # and with nothing left sending, the stage sleeps again
    assert _first_event(trigger(NOW + lease))["status"] == "idle"


@pytest.mark.parametrize(
    ("model", "id_column", "time_column", "entity"),
    [
        ("intermediate.int_orders_unioned", "source_order_id", "ordered_at", "order"),
        ("intermediate.int_carts_unioned", "source_cart_id", "updated_at", "cart"),
    ],
)
def test_raw_event_time_reads_payloads_as_the_staging_models_do(url, model, id_column, time_column, entity):
    """The guard reads raw rows landed after the build with ops.raw_event_time: it must agree
    with the time dbt's staging made of the same rows, for every platform of the story."""
    from cart_recovery.dispatch.guards import CART_TOPICS, ORDER_TOPICS

    topics = list(ORDER_TOPICS if entity == "order" else CART_TOPICS)
    compared = rows(
        url,
        f"""
        select built.platform, built.{id_column} as record_id, built.{time_column} as built_time,
            array(
                select distinct ops.raw_event_time(raw_rows.platform, %s, raw_rows.payload)
                from (
                    select platform, payload from raw.polled_records
                    where shop_id = built.shop_id and entity = %s and record_id = built.{id_column}
                    union all
                    select platform, payload from raw.webhook_events
                    where shop_id = built.shop_id and topic = any(%s) and payload->>'id' = built.{id_column}
                ) as raw_rows
            ) as raw_times
        from {model} as built
        """,
        (entity, entity, topics),
    )
    # the story has carts of every platform, and orders of all but Ticimax
    expected_platforms = {"shopify", "woocommerce", "ideasoft"} | ({"ticimax"} if entity == "cart" else set())
    assert {row["platform"] for row in compared} >= expected_platforms
    disagreeing = [row for row in compared if row["built_time"] not in row["raw_times"]]
    assert disagreeing == []
