"""What the providers answer, and what the dispatcher records: through ``dispatch_due``, over loopback.

Each answer is produced by the simulator's fakes as the real service produces it (the fake
WhatsApp Cloud API's 5xx, 130429, 132001, 131050, 131026 and slow answers; the SMTP sink's 550 and
451; the shop API's 503 on coupon creation), and each test checks the outbox row, the fakes' logs
(nothing sent twice) and, where the answer says so, what happens at the next run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import httpx
import psycopg2
import pytest
from dispatch_helpers import (
    AS_OF,
    SETTINGS,
    accepted_per_plan_row,
    assert_each_sent_once,
    emailed_plan_rows,
    outbox,
    post_status,
    reset,
    rows,
    simulated_plan,
)

from cart_recovery.dispatch.dispatcher import Channels, Summary, dispatch_due
from cart_recovery.simulator import Simulator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def database(module_database):
    return module_database


@pytest.fixture(scope="module")
def plan(database, airflow_db, dbt_manifest, tmp_path_factory) -> Iterator[Simulator]:
    with simulated_plan(tmp_path_factory.mktemp("plan"), seed=23, carts_per_shop=40) as sim:
        yield sim


@pytest.fixture(scope="module")
def baseline(plan, database) -> dict[str, dict]:
    """Stage 1 sent with every provider well: plan_key -> the sent row, with the cart's contacts."""
    reset(database.url, plan)
    dispatch_due(1, AS_OF, database_url=database.url, claimer="baseline", settings=SETTINGS)
    assert_each_sent_once(plan, database.url)
    sent = rows(
        database.url,
        """
        select outbox.*, carts.email, carts.phone, carts.email_consent
        from ops.recovery_outbox as outbox
        join marts.abandoned_carts as carts using (cart_key)
        where outbox.stage = 1 and outbox.status = 'sent'
        """,
    )
    return {row["plan_key"]: row for row in sent}


@pytest.fixture
def sim(plan, database, baseline) -> Simulator:
    reset(database.url, plan)
    return plan


def whatsapp_rows(baseline: dict[str, dict]) -> dict[str, dict]:
    return {key: row for key, row in baseline.items() if row["channel"] == "whatsapp"}


def email_rows(baseline: dict[str, dict]) -> dict[str, dict]:
    return {key: row for key, row in baseline.items() if row["channel"] == "email"}


def dispatch(
    url: str, now=AS_OF, *, stage: int = 1, claimer: str = "test", channels=None, **settings
) -> Summary:
    return dispatch_due(
        stage,
        now,
        database_url=url,
        claimer=claimer,
        settings=replace(SETTINGS, **settings),
        channels=channels,
    )


def whatsapp_channels(url: str, **options) -> Channels:
    """The production channels, with the WhatsApp client built with ``options`` (a short timeout)."""
    from cart_recovery.dispatch.coupons import issuer_for
    from cart_recovery.dispatch.email import EmailSender
    from cart_recovery.dispatch.whatsapp import WhatsAppClient
    from cart_recovery.shops import load_shops

    shops = {shop.id: shop for shop in load_shops()}
    return Channels(
        whatsapp=WhatsAppClient.from_connection(**options),
        email=EmailSender.from_connection(),
        coupons=lambda shop_id: issuer_for(shops[shop_id], url),
    )


def coupons_made(sim: Simulator, url: str) -> int:
    """Coupons created so far: in the fake shops' books and taken from the operator's pool."""
    [pooled] = rows(url, "select count(*) as n from ops.coupon_pool where plan_key is not null")
    return sum(len(book.all()) for book in sim.state.coupons.values()) + pooled["n"]


def by_key(url: str, keys) -> dict[str, dict]:
    stored = outbox(url)
    return {key: stored[key] for key in keys}


# -- WhatsApp: refusals before sending -------------------------------------------------------------


def test_a_5xx_the_clients_retries_absorb_is_sent_once(sim, database, baseline):
    sim.whatsapp.inject_failures(3, 500)  # Meta's 131000, three requests in a row
    dispatch(database.url)
    assert sim.whatsapp.knobs.fail_next == 0
    stored = assert_each_sent_once(sim, database.url)
    for key in whatsapp_rows(baseline):
        assert stored[key]["status"] == "sent" and stored[key]["attempts"] == 1, stored[key]
    assert set(accepted_per_plan_row(sim)) == set(whatsapp_rows(baseline))


def test_5xx_beyond_the_retries_requeues_the_row_then_fails_it_after_max_attempts(sim, database, baseline):
    url, whatsapp = database.url, whatsapp_rows(baseline)
    sim.whatsapp.inject_failures(10**6, 503)  # Meta's code 2: down for as long as this test runs
    requests = 0
    for attempt, now in enumerate((AS_OF, AS_OF + timedelta(minutes=5), AS_OF + timedelta(minutes=15)), 1):
        dispatch(url, now, max_attempts=3)
        used = 10**6 - sim.whatsapp.knobs.fail_next - requests
        requests += used
        assert used == 4 * len(whatsapp), "the client tried each row four times, then gave it back"
        stored = by_key(url, whatsapp)
        for row in stored.values():
            assert (row["attempts"], row["error_code"], row["sent_at"]) == (attempt, "2", None), row
            if attempt < 3:
                assert (row["status"], row["reason"]) == ("queued", "provider_retry"), row
                # back in the queue after a pause that grows with the attempts
                assert now + attempt * SETTINGS.retry_delay <= row["due_at"], row
                assert row["due_at"] <= now + attempt * SETTINGS.retry_delay + timedelta(minutes=1), row
            else:
                assert (row["status"], row["reason"]) == ("failed", "provider_unavailable"), row
                assert row["failed_at"] is not None
    assert sim.whatsapp.messages() == []
    # failed is final: a later run claims none of them
    sim.whatsapp.inject_failures(0)
    later = dispatch(url, AS_OF + timedelta(hours=1), max_attempts=3)
    assert not set(accepted_per_plan_row(sim)) & set(whatsapp), later.as_dict()
    assert {row["status"] for row in by_key(url, whatsapp).values()} == {"failed"}
    # the email rows of the batch went out at the first run, once
    stored = assert_each_sent_once(sim, url)
    assert all(stored[key]["status"] == "sent" for key in email_rows(baseline))


def test_a_sustained_130429_requeues_and_a_later_run_sends_each_once(sim, database, baseline):
    url, whatsapp = database.url, whatsapp_rows(baseline)
    sim.whatsapp.knobs.messages_per_second = 0.001  # the number's throughput: one message, then 130429
    dispatch(url)
    stored = by_key(url, whatsapp)
    sent = {key for key, row in stored.items() if row["status"] == "sent"}
    assert len(sent) == 1 and set(accepted_per_plan_row(sim)) == sent
    for key, row in stored.items():
        if key not in sent:
            assert (row["status"], row["reason"], row["error_code"]) == ("queued", "provider_retry", "130429")
            assert "too many messages" in row["error"]
    sim.whatsapp.knobs.messages_per_second = 80
    dispatch(url, AS_OF + timedelta(minutes=5))
    stored = assert_each_sent_once(sim, url)
    assert all(stored[key]["status"] == "sent" for key in whatsapp)
    assert set(accepted_per_plan_row(sim)) == set(whatsapp)
    assert all(stored[key]["attempts"] == 1 for key in sent)
    assert all(stored[key]["attempts"] == 2 for key in set(whatsapp) - sent)


def test_no_answer_within_the_timeout_is_unknown_and_never_sent_again(sim, database, baseline):
    url, whatsapp = database.url, whatsapp_rows(baseline)
    sim.whatsapp.knobs.response_delay = 2.0  # Meta takes each message, then answers too late
    channels = whatsapp_channels(url, timeout=httpx.Timeout(0.5, connect=5.0, pool=60.0))
    dispatch(url, channels=channels)
    stored = assert_each_sent_once(sim, url)
    assert set(accepted_per_plan_row(sim)) == set(whatsapp)  # all taken, once
    for key in whatsapp:
        row = stored[key]
        assert (row["status"], row["reason"], row["provider_message_id"]) == ("unknown", "no_answer", None)
        assert "ReadTimeout" in row["error"]
    assert all(stored[key]["status"] == "sent" for key in email_rows(baseline))
    sim.whatsapp.knobs.response_delay = 0
    dispatch(url, AS_OF + timedelta(hours=1))
    assert_each_sent_once(sim, url)
    assert sum(accepted_per_plan_row(sim).values()) == len(whatsapp)
    assert {row["status"] for row in by_key(url, whatsapp).values()} == {"unknown"}


# -- WhatsApp: refusals about the message or the person --------------------------------------------


def test_a_template_meta_no_longer_approves_fails_its_rows_for_good(sim, database, baseline):
    url, whatsapp = database.url, whatsapp_rows(baseline)
    withdrawn = ("cart_reminder_gentle_tr", "tr")
    del sim.whatsapp.templates[withdrawn]  # paused or disabled by Meta after the plan was made
    affected = {key for key, row in whatsapp.items() if row["template"] == withdrawn[0]}
    assert affected and affected != set(whatsapp)
    dispatch(url)
    stored = assert_each_sent_once(sim, url)
    for key in whatsapp:
        row = stored[key]
        if key in affected:
            assert (row["status"], row["reason"], row["error_code"]) == ("failed", "rejected", "132001"), row
            assert row["failed_at"] is not None and row["sent_at"] is None
            assert row["attempts"] == 1
        else:
            assert row["status"] == "sent", row
    assert set(accepted_per_plan_row(sim)) == set(whatsapp) - affected
    dispatch(url, AS_OF + timedelta(hours=1))  # not retried
    assert set(accepted_per_plan_row(sim)) == set(whatsapp) - affected
    assert {stored["status"] for stored in by_key(url, affected).values()} == {"failed"}


def _stage_two_whatsapp_row(url: str, cart_keys) -> dict | None:
    found = rows(
        url,
        """
        select plan.plan_key, plan.cart_key from marts.recovery_plan as plan
        where plan.stage = 2 and plan.channel = 'whatsapp' and plan.suppressed_reason is null
            and plan.due_at <= %s and plan.cart_key = any(%s)
        order by plan.plan_key
        """,
        (AS_OF, list(cart_keys)),
    )
    return found[0] if found else None


def test_stop_promotions_131050_suppresses_the_row_and_revokes_whatsapp_consent(sim, database, baseline):
    url, whatsapp = database.url, whatsapp_rows(baseline)
    by_cart = {row["cart_key"]: row for row in whatsapp.values()}
    later_stage = _stage_two_whatsapp_row(url, by_cart)
    assert later_stage is not None, "a person with stage 1 and stage 2 due over WhatsApp"
    target = by_cart[later_stage["cart_key"]]
    sim.whatsapp.stop_promotions(target["phone"])  # tapped "Stop promotions" in WhatsApp
    dispatch(url)
    stored = assert_each_sent_once(sim, url)
    row = stored[target["plan_key"]]
    assert (row["status"], row["reason"], row["error_code"]) == ("suppressed", "stop_promotions", "131050")
    assert row["sent_at"] is None
    assert all(stored[key]["status"] == "sent" for key in whatsapp if key != target["plan_key"])
    revoked = rows(
        url,
        "select channel, address, shop_id, source, detail from ops.consent_revocations where address = %s",
        (target["phone"],),
    )
    assert revoked == [
        {
            "channel": "whatsapp",
            "address": target["phone"],
            "shop_id": None,
            "source": "whatsapp_131050",
            "detail": {"plan_key": target["plan_key"]},
        }
    ]
    # the next stage's guard sees it: no WhatsApp message to them again
    dispatch(url, AS_OF + timedelta(minutes=1), stage=2)
    stored = assert_each_sent_once(sim, url)
    second = stored[later_stage["plan_key"]]
    assert second["channel"] != "whatsapp" or second["status"] not in ("sent", "sending", "unknown"), second
    if target["email_consent"]:
        assert (second["status"], second["channel"], second["recipient"]) == (
            "sent",
            "email",
            target["email"],
        )
        assert second["guards"]["consent"] == "pass:fallback_email"
    else:
        assert (second["status"], second["reason"]) == ("suppressed", "no_consent")
    assert not sim.whatsapp.messages(target["phone"])


def test_a_stop_that_arrives_while_the_batch_runs_stops_its_rows(sim, database, baseline):
    from cart_recovery.dispatch import consent

    url, whatsapp = database.url, whatsapp_rows(baseline)
    target = next(iter(whatsapp.values()))
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cursor:  # as the webhook service records an inbound "STOP"
        consent.revoke(
            cursor,
            "whatsapp",
            target["phone"],
            "whatsapp_stop",
            AS_OF + timedelta(seconds=5),
            {"type": "text"},
        )
    conn.close()
    dispatch(url)  # the batch of the trigger's moment AS_OF claims the row after the STOP was stored
    assert not sim.whatsapp.messages(target["phone"])
    assert outbox(url)[target["plan_key"]]["channel"] != "whatsapp"


def test_not_on_whatsapp_131026_falls_back_to_email_where_email_consent_allows(sim, database, baseline):
    url, whatsapp = database.url, whatsapp_rows(baseline)
    with_email = next(row for row in whatsapp.values() if row["email_consent"] and row["email"])
    without = next(row for row in whatsapp.values() if not row["email_consent"])
    sim.whatsapp.not_on_whatsapp(with_email["phone"], without["phone"])
    dispatch(url)
    stored = assert_each_sent_once(sim, url)
    fell_back = stored[with_email["plan_key"]]
    assert (fell_back["status"], fell_back["channel"], fell_back["recipient"]) == (
        "sent",
        "email",
        with_email["email"],
    )
    assert fell_back["guards"]["whatsapp"] == "fallback:131026"
    emailed = dict(emailed_plan_rows(sim))
    assert emailed[with_email["plan_key"]] == fell_back["provider_message_id"]
    [mail] = sim.smtp.to(with_email["email"])
    assert mail.header("List-Unsubscribe")  # an email like any other: with its unsubscribe link
    unreachable = stored[without["plan_key"]]
    assert (unreachable["status"], unreachable["reason"], unreachable["error_code"]) == (
        "suppressed",
        "whatsapp_unreachable",
        "131026",
    )
    assert without["plan_key"] not in emailed
    assert not sim.whatsapp.messages(with_email["phone"]) and not sim.whatsapp.messages(without["phone"])
    others = set(whatsapp) - {with_email["plan_key"], without["plan_key"]}
    assert all(stored[key]["status"] == "sent" and stored[key]["channel"] == "whatsapp" for key in others)


def test_a_131026_reported_later_in_a_failed_status_falls_back_to_email_once(sim, database, baseline):
    """Meta usually accepts a message to a number without WhatsApp and reports 131026 in a later
    ``failed`` status: the stage then goes by email (carrying the WhatsApp message's coupon, if it
    had one), once, however often Meta repeats the callback; without email consent nothing more is
    sent."""
    from fastapi.testclient import TestClient

    from cart_recovery.webhooks.app import create_app
    from cart_recovery.webhooks.config import WebhookConfig

    url, whatsapp = database.url, whatsapp_rows(baseline)
    with_email = next(row for row in whatsapp.values() if row["email_consent"] and row["email"])
    without = next(row for row in whatsapp.values() if not row["email_consent"])
    sim.whatsapp.fail_later(131026, with_email["phone"], without["phone"])
    dispatch(url)
    first = assert_each_sent_once(sim, url)
    assert first[with_email["plan_key"]]["status"] == first[without["plan_key"]]["status"] == "sent"
    assert not sim.smtp.to(with_email["email"])
    made_for_whatsapp = coupons_made(sim, url)
    with TestClient(create_app(WebhookConfig.from_env(database_url=url))) as client:
        for row in (with_email, without):
            [message] = sim.whatsapp.messages(row["phone"])
            post_status(client, sim, message.id, "sent", AS_OF + timedelta(seconds=30))
            for _ in range(2):  # Meta retries a delivery it thinks was lost
                post_status(client, sim, message.id, "failed", AS_OF + timedelta(minutes=2))
    failed = outbox(url)[with_email["plan_key"]]
    assert (failed["status"], failed["channel"], failed["error_code"]) == ("failed", "whatsapp", "131026")

    for minutes in (3, 4):  # the next run sends the fallback; the one after finds nothing to do
        dispatch(url, AS_OF + timedelta(minutes=minutes))
    stored = assert_each_sent_once(sim, url)
    fallbacks = {row["fallback_of"]: row for row in stored.values() if row["fallback_of"] is not None}
    assert set(fallbacks) == {failed["outbox_id"], stored[without["plan_key"]]["outbox_id"]}
    emailed = fallbacks[failed["outbox_id"]]
    assert (emailed["status"], emailed["channel"], emailed["recipient"], emailed["stage"]) == (
        "sent",
        "email",
        with_email["email"],
        1,
    )
    assert emailed["cart_key"] == failed["cart_key"] and emailed["guards"]["whatsapp"] == "fallback:131026"
    # the WhatsApp message's coupon terms (none in stage 1 here), not a second coupon
    assert (emailed["coupon_code"], emailed["coupon_expires_at"]) == (
        failed["coupon_code"],
        failed["coupon_expires_at"],
    )
    assert coupons_made(sim, url) == made_for_whatsapp
    [mail] = sim.smtp.to(with_email["email"])
    assert dict(emailed_plan_rows(sim))[emailed["plan_key"]] == mail.message_id
    assert mail.header("List-Unsubscribe")
    unreachable = fallbacks[stored[without["plan_key"]]["outbox_id"]]
    assert (unreachable["status"], unreachable["reason"]) == ("suppressed", "whatsapp_unreachable")
    for row in (with_email, without):
        assert len(sim.whatsapp.messages(row["phone"])) == 1


# -- email -------------------------------------------------------------------------------------------


def test_smtp_550_fails_the_row_and_a_451_requeues_it_for_a_later_run(sim, database, baseline):
    url, emails = database.url, email_rows(baseline)
    refused = next(iter(emails.values()))
    sim.smtp.refuse_recipient(refused["recipient"])  # 550 5.1.1 User unknown
    sim.smtp.fail_next("RCPT", 451)  # one temporary refusal, for whichever comes first
    dispatch(url)
    stored = assert_each_sent_once(sim, url)
    row = stored[refused["plan_key"]]
    assert (row["status"], row["reason"], row["error_code"]) == ("failed", "rejected", "550"), row
    assert "User unknown" in row["error"] and row["failed_at"] is not None
    deferred = [key for key in emails if stored[key]["status"] == "queued"]
    assert len(deferred) == 1, [stored[key]["status"] for key in emails]
    [key] = deferred
    assert (stored[key]["reason"], stored[key]["error_code"]) == ("provider_retry", "451")
    assert all(stored[k]["status"] == "sent" for k in emails if k not in (key, refused["plan_key"]))

    dispatch(url, AS_OF + timedelta(minutes=5))
    stored = assert_each_sent_once(sim, url)
    assert (stored[key]["status"], stored[key]["attempts"]) == ("sent", 2)
    assert stored[refused["plan_key"]]["status"] == "failed"
    assert not sim.smtp.to(refused["recipient"])


def test_a_lost_smtp_answer_is_unknown_and_never_sent_again(sim, database, baseline):
    url, emails = database.url, email_rows(baseline)
    sim.smtp.drop_after_data(1)  # the relay queues one message and the connection dies before 250
    dispatch(url)
    [dropped] = [message for message in sim.smtp.messages if message.dropped]
    plan_key = dict((mid, key) for key, mid in emailed_plan_rows(sim))[dropped.message_id]
    stored = assert_each_sent_once(sim, url)
    assert (stored[plan_key]["status"], stored[plan_key]["reason"]) == ("unknown", "no_answer")
    dispatch(url, AS_OF + timedelta(hours=1))
    assert_each_sent_once(sim, url)
    assert len(sim.smtp.to(stored[plan_key]["recipient"])) == 1
    assert all(outbox(url)[key]["status"] == "sent" for key in emails if key != plan_key)


def test_a_lost_smtp_answer_keeps_the_message_id_for_a_bounce_to_settle(sim, database, baseline):
    sim.smtp.drop_after_data(1)
    dispatch(database.url)
    [dropped] = [message for message in sim.smtp.messages if message.dropped]
    [row] = [row for row in outbox(database.url).values() if row["status"] == "unknown"]
    assert row["provider_message_id"] == dropped.message_id


# -- coupons -------------------------------------------------------------------------------------------


def test_coupon_creation_failing_sends_the_stage_without_a_coupon_and_says_why(sim, database):
    url = database.url
    offered = {
        row["plan_key"]: row
        for row in rows(
            url,
            "select plan_key, shop_id, template from marts.recovery_plan where stage = 2 and due_at <= %s "
            "and (coupon_pct > 0 or free_shipping) and suppressed_reason is null",
            (AS_OF,),
        )
    }
    sim.state.knobs.fail_every = 1  # every shop API request answers 503, coupon creation included
    dispatch(url, stage=2)
    stored = assert_each_sent_once(sim, url)
    sent = {key: stored[key] for key in offered if stored.get(key, {}).get("status") == "sent"}
    woo = {key for key, row in sent.items() if row["shop_id"] == "hudson-woo"}
    assert woo, "a WooCommerce row of stage 2 offering a coupon was sent"
    messages = {m.callback_data: m for m in sim.whatsapp.messages()}
    for key, row in sent.items():
        assert row["coupon_code"] is None, row
        assert row["guards"]["coupon"].startswith("failed: "), row
        language = "tr" if offered[key]["template"].endswith("_tr") else "en"
        assert row["template"] == f"cart_reminder_followup_{language}", row  # the stage without a coupon
        if key in messages:
            assert messages[key].template == row["template"]
    for key in woo:
        assert "503" in sent[key]["guards"]["coupon"], sent[key]["guards"]
    assert sim.state.coupon_book("hudson-woo").all() == []

    # the same rows with the shop's API up: the coupon and its template (the failure was the cause)
    reset(url, sim)
    dispatch(url, stage=2)
    stored = assert_each_sent_once(sim, url)
    for key in woo:
        row = stored[key]
        assert row["coupon_code"] and row["coupon_code"] in row["rendered_text"], row
        assert row["template"] == offered[key]["template"]
        assert sim.state.coupon_book("hudson-woo").get(row["coupon_code"]) is not None
