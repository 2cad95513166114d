"""The send-time guards as rules: one test per guard, the guard matrix, quiet hours across DST.

These check ``guards.evaluate`` on the facts a claim reads; tests/dispatch/test_dispatcher.py
checks that the facts themselves come out of live data.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from cart_recovery.dispatch.config import DispatchSettings
from cart_recovery.dispatch.guards import RECORD_WAIT, REPLAN_WAIT, evaluate, quiet_hours_end

SETTINGS = DispatchSettings()
NOON_ISTANBUL = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)  # 12:00 in Istanbul (UTC+3)


def facts(**overrides):
    base = {
        "plan_key": "p1",
        "cart_key": "c1",
        "customer_key": "k1",
        "shop_id": "anatolia-shopify",
        "platform": "woocommerce",
        "stage": 2,
        "outbox_due_at": NOON_ISTANBUL - timedelta(minutes=1),
        "planned_due_at": NOON_ISTANBUL - timedelta(minutes=1),
        "attempts": 0,
        "plan_present": True,
        "plan_suppressed_reason": None,
        "plan_due_at": NOON_ISTANBUL - timedelta(minutes=1),
        "plan_channel": "whatsapp",
        "timezone": "Europe/Istanbul",
        "email": "ayse@example.com",
        "phone": "+905321234567",
        "email_consent": True,
        "message_consent": True,
        "last_activity_at": NOON_ISTANBUL - timedelta(hours=4),
        "superseded_at": None,
        "built_order": False,
        "fresh_order": False,
        "fresh_cart_activity": False,
        "whatsapp_revoked": False,
        "email_revoked": False,
        "last_inbound_at": None,
        "last_contact_at": None,
        "episode_messages": 0,
        "last_episode_contact_at": None,
    }
    base.update(overrides)
    return base


def test_a_clean_row_is_sent_on_its_planned_channel_with_every_guard_recorded():
    verdict = evaluate(facts(), NOON_ISTANBUL, SETTINGS)
    assert (verdict.action, verdict.channel) == ("send", "whatsapp")
    assert set(verdict.guards) >= {
        "plan",
        "on_time",
        "no_order_since_cart",
        "no_newer_cart",
        "consent",
        "stage_cap",
        "conversation_open",
        "frequency_cap",
        "stage_gap",
        "quiet_hours",
        "recovery_url_not_ready",
    }
    assert all(value == "pass" for value in verdict.guards.values())


@pytest.mark.parametrize("source", ["built_order", "fresh_order"])
def test_an_order_since_the_cart_stops_the_episode(source):
    verdict = evaluate(facts(**{source: True}), NOON_ISTANBUL, SETTINGS)
    assert (verdict.action, verdict.reason) == ("suppress", "ordered_since_cart")


def test_a_newer_cart_supersedes_the_episode():
    verdict = evaluate(facts(superseded_at=NOON_ISTANBUL - timedelta(hours=1)), NOON_ISTANBUL, SETTINGS)
    assert (verdict.action, verdict.reason) == ("suppress", "superseded_by_newer_cart")
    later = evaluate(facts(superseded_at=NOON_ISTANBUL + timedelta(hours=1)), NOON_ISTANBUL, SETTINGS)
    assert later.action == "send"


def test_cart_activity_since_the_build_waits_for_the_next_plan():
    verdict = evaluate(facts(fresh_cart_activity=True), NOON_ISTANBUL, SETTINGS)
    assert (verdict.action, verdict.reason, verdict.until) == (
        "defer",
        "cart_activity_since_plan",
        NOON_ISTANBUL + REPLAN_WAIT,
    )


def test_a_revoked_whatsapp_consent_falls_back_to_email_only_with_email_consent():
    fallback = evaluate(facts(whatsapp_revoked=True), NOON_ISTANBUL, SETTINGS)
    assert (fallback.action, fallback.channel, fallback.guards["consent"]) == (
        "send",
        "email",
        "pass:fallback_email",
    )
    none = evaluate(facts(whatsapp_revoked=True, email_consent=False), NOON_ISTANBUL, SETTINGS)
    assert (none.action, none.reason) == ("suppress", "no_consent")
    unsubscribed = evaluate(facts(plan_channel="email", email_revoked=True), NOON_ISTANBUL, SETTINGS)
    assert (unsubscribed.action, unsubscribed.reason) == ("suppress", "no_consent")


def test_an_open_conversation_pauses_until_it_has_been_quiet():
    replied = NOON_ISTANBUL - timedelta(hours=2)
    verdict = evaluate(facts(last_inbound_at=replied), NOON_ISTANBUL, SETTINGS)
    assert (verdict.action, verdict.reason, verdict.until) == (
        "defer",
        "conversation_open",
        replied + SETTINGS.reply_quiet,
    )
    quiet = evaluate(facts(last_inbound_at=NOON_ISTANBUL - SETTINGS.reply_quiet), NOON_ISTANBUL, SETTINGS)
    assert quiet.action == "send"


def test_the_frequency_cap_counts_other_episodes_and_this_batch():
    earlier = NOON_ISTANBUL - timedelta(hours=3)
    verdict = evaluate(facts(last_contact_at=earlier), NOON_ISTANBUL, SETTINGS)
    assert (verdict.action, verdict.reason, verdict.until) == (
        "defer",
        "frequency_cap",
        earlier + timedelta(hours=16),
    )
    in_batch = evaluate(facts(), NOON_ISTANBUL, SETTINGS, contacted_in_batch=NOON_ISTANBUL)
    assert (in_batch.action, in_batch.reason) == ("defer", "frequency_cap")


def test_an_episodes_stages_go_out_a_gap_apart_but_are_exempt_from_the_frequency_cap():
    stage_one = NOON_ISTANBUL - timedelta(minutes=10)
    verdict = evaluate(facts(last_episode_contact_at=stage_one), NOON_ISTANBUL, SETTINGS)
    assert (verdict.action, verdict.reason, verdict.until) == (
        "defer",
        "stage_gap",
        stage_one + SETTINGS.stage_gap,
    )
    later = NOON_ISTANBUL + SETTINGS.stage_gap
    assert evaluate(facts(last_episode_contact_at=stage_one), later, SETTINGS).action == "send"


def test_at_most_three_stages_per_episode():
    verdict = evaluate(facts(episode_messages=3), NOON_ISTANBUL, SETTINGS)
    assert (verdict.action, verdict.reason) == ("suppress", "stage_cap")


def test_holdout_is_recorded_never_sent_with_what_would_have_been_sent():
    verdict = evaluate(facts(plan_suppressed_reason="holdout"), NOON_ISTANBUL, SETTINGS)
    assert (verdict.action, verdict.channel, verdict.guards["holdout"]) == ("holdout", "whatsapp", "holdout")


def test_late_rows_expire_and_rows_the_plan_dropped_or_moved_are_not_sent():
    late = NOON_ISTANBUL - SETTINGS.expire_after - timedelta(minutes=1)
    expired = evaluate(facts(outbox_due_at=late, plan_due_at=late), NOON_ISTANBUL, SETTINGS)
    assert (expired.action, expired.reason) == ("expire", "expired")
    assert evaluate(facts(plan_present=False), NOON_ISTANBUL, SETTINGS).reason == "no_longer_planned"
    assert (
        evaluate(facts(plan_suppressed_reason="completed"), NOON_ISTANBUL, SETTINGS).reason
        == "plan_completed"
    )
    moved = evaluate(facts(plan_due_at=NOON_ISTANBUL + timedelta(hours=1)), NOON_ISTANBUL, SETTINGS)
    assert (moved.action, moved.reason, moved.until) == (
        "defer",
        "replanned",
        NOON_ISTANBUL + timedelta(hours=1),
    )


def fallback(**overrides):
    """An email queued by the webhook service for a WhatsApp message of this stage that Meta
    reported undeliverable two minutes after it went out (and the dispatcher recorded it)."""
    sent_at = NOON_ISTANBUL - timedelta(minutes=3)
    values = {
        "plan_key": "p1:email",
        "fallback_of": 7,
        "fallback_error": "131026",
        "fallback_parent_recorded": True,
        "fallback_parent_claimed_at": sent_at,
        "fallback_parent_sent_at": sent_at,
        "later_stage_contacted": False,
        "outbox_due_at": sent_at + timedelta(minutes=2),
    }
    return facts(**{**values, **overrides})


def test_an_email_fallback_goes_by_email_only_and_only_with_email_consent():
    sent = evaluate(fallback(), NOON_ISTANBUL, SETTINGS)
    assert (sent.action, sent.channel, sent.guards["consent"]) == ("send", "email", "pass:fallback_email")
    assert sent.guards["fallback"] == "pass"
    unreachable = evaluate(fallback(email_consent=False), NOON_ISTANBUL, SETTINGS)
    assert (unreachable.action, unreachable.reason) == ("suppress", "whatsapp_unreachable")
    revoked = evaluate(fallback(email_revoked=True), NOON_ISTANBUL, SETTINGS)
    assert (revoked.action, revoked.reason) == ("suppress", "whatsapp_unreachable")
    ordered = evaluate(fallback(fresh_order=True), NOON_ISTANBUL, SETTINGS)
    assert (ordered.action, ordered.reason) == ("suppress", "ordered_since_cart")


def test_an_email_fallback_waits_for_the_whatsapp_messages_record_then_goes_without_it():
    claimed_at = NOON_ISTANBUL - timedelta(seconds=20)  # the callback beat the dispatcher's record
    early = fallback(fallback_parent_recorded=False, fallback_parent_claimed_at=claimed_at)
    waiting = evaluate(early, NOON_ISTANBUL, SETTINGS)
    assert (waiting.action, waiting.reason, waiting.until) == (
        "defer",
        "whatsapp_answer_not_recorded",
        NOON_ISTANBUL + RECORD_WAIT,
    )
    # never recorded (the dispatcher died): once the message's lease is over, the email goes
    after_lease = claimed_at + SETTINGS.lease + timedelta(seconds=1)
    assert evaluate(early, after_lease, SETTINGS).action == "send"


def test_an_email_fallback_is_as_late_as_its_whatsapp_message_and_never_overtakes_a_later_stage():
    long_ago = NOON_ISTANBUL - SETTINGS.expire_after - timedelta(minutes=1)
    stale = fallback(fallback_parent_sent_at=long_ago, fallback_parent_claimed_at=long_ago)
    late = evaluate(stale, NOON_ISTANBUL, SETTINGS)
    assert (late.action, late.reason) == ("expire", "expired")  # although Meta reported it just now
    overtaken = evaluate(fallback(later_stage_contacted=True), NOON_ISTANBUL, SETTINGS)
    assert (overtaken.action, overtaken.reason) == ("suppress", "superseded_by_later_stage")


def test_shopify_stage_one_waits_for_the_recovery_url():
    abandoned = NOON_ISTANBUL - timedelta(minutes=4)
    verdict = evaluate(
        facts(platform="shopify", stage=1, last_activity_at=abandoned), NOON_ISTANBUL, SETTINGS
    )
    assert (verdict.action, verdict.reason, verdict.until) == (
        "defer",
        "recovery_url_not_ready",
        abandoned + SETTINGS.shopify_recovery_delay,
    )
    assert (
        evaluate(
            facts(platform="shopify", stage=2, last_activity_at=abandoned), NOON_ISTANBUL, SETTINGS
        ).action
        == "send"
    )


@pytest.mark.parametrize(
    ("holdout", "consent", "ordered", "newer_cart", "replied", "quiet"),
    list(itertools.product([False, True], repeat=6)),
)
def test_guard_matrix(holdout, consent, ordered, newer_cart, replied, quiet):
    """Every combination: the first applicable rule decides, in the documented order."""
    now = datetime(2026, 12, 3, 19, 30, tzinfo=UTC) if quiet else NOON_ISTANBUL  # 22:30 in Istanbul
    row = facts(
        plan_suppressed_reason="holdout" if holdout else None,
        message_consent=consent,
        email_consent=consent,
        fresh_order=ordered,
        superseded_at=now - timedelta(minutes=5) if newer_cart else None,
        last_inbound_at=now - timedelta(hours=1) if replied else None,
        outbox_due_at=now - timedelta(minutes=1),
        plan_due_at=now - timedelta(minutes=1),
    )
    verdict = evaluate(row, now, SETTINGS)
    if ordered:
        expected = ("suppress", "ordered_since_cart")
    elif newer_cart:
        expected = ("suppress", "superseded_by_newer_cart")
    elif not consent:
        expected = ("suppress", "no_consent")
    elif holdout:
        expected = ("holdout", "holdout")
    elif replied or quiet:
        # both defer: the later moment wins, so the row is not woken only to wait again
        waits = {}
        if replied:
            waits["conversation_open"] = now - timedelta(hours=1) + SETTINGS.reply_quiet
        if quiet:
            waits["quiet_hours"] = quiet_hours_end(now, "Europe/Istanbul", SETTINGS)
        reason, until = max(waits.items(), key=lambda item: item[1])
        expected = ("defer", reason)
        assert verdict.until == until
    else:
        expected = ("send", None)
    assert (verdict.action, verdict.reason) == expected
    if verdict.action == "defer":
        assert verdict.until > now


@pytest.mark.parametrize(
    ("now", "zone", "expected_local"),
    [
        # Istanbul (UTC+3 all year): 22:30 local -> 09:00 next morning
        (datetime(2026, 12, 3, 19, 30, tzinfo=UTC), "Europe/Istanbul", datetime(2026, 12, 4, 9, 0)),
        # after midnight: the same morning
        (datetime(2026, 12, 3, 23, 30, tzinfo=UTC), "Europe/Istanbul", datetime(2026, 12, 4, 9, 0)),
        # London, the night the clocks go back (25 Oct 2026, 02:00 BST -> 01:00 GMT): 09:00 GMT
        (datetime(2026, 10, 24, 21, 0, tzinfo=UTC), "Europe/London", datetime(2026, 10, 25, 9, 0)),
        # London, the night the clocks go forward (29 Mar 2026): 09:00 BST
        (datetime(2026, 3, 28, 22, 0, tzinfo=UTC), "Europe/London", datetime(2026, 3, 29, 9, 0)),
    ],
)
def test_quiet_hours_end_at_nine_local_across_dst(now, zone, expected_local):
    from zoneinfo import ZoneInfo

    end = quiet_hours_end(now, zone, SETTINGS)
    assert end is not None
    assert end.astimezone(ZoneInfo(zone)).replace(tzinfo=None) == expected_local
    assert quiet_hours_end(end, zone, SETTINGS) is None  # 09:00 itself is allowed
    assert quiet_hours_end(end - timedelta(minutes=1), zone, SETTINGS) == end


def test_quiet_hours_can_be_set_or_switched_off(monkeypatch):
    monkeypatch.setenv("CART_RECOVERY_QUIET_HOURS", "off")
    assert DispatchSettings.from_env().quiet_hours is None
    monkeypatch.setenv("CART_RECOVERY_QUIET_HOURS", "22:30-07:15")
    start, end = DispatchSettings.from_env().quiet_hours
    assert (start.hour, start.minute, end.hour, end.minute) == (22, 30, 7, 15)
    monkeypatch.setenv("CART_RECOVERY_QUIET_HOURS", "late")
    from cart_recovery.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="21:00-09:00"):
        DispatchSettings.from_env()


def test_chunks_hold_one_second_of_sends_at_the_limit_unless_set(monkeypatch):
    monkeypatch.delenv("CART_RECOVERY_DISPATCH_CHUNK", raising=False)
    settings = DispatchSettings.from_env()
    assert settings.chunk_size is None
    # at least 200 rows (80/s, or no WhatsApp client), one second's worth above, at most 2,000
    assert [settings.chunk_rows(rate) for rate in (None, 80, 1000, 1500, 100_000)] == [
        200,
        200,
        1000,
        1500,
        2000,
    ]
    monkeypatch.setenv("CART_RECOVERY_DISPATCH_CHUNK", "50")
    assert DispatchSettings.from_env().chunk_rows(1000) == 50  # an operator's size is kept as is
    monkeypatch.setenv("CART_RECOVERY_DISPATCH_CHUNK", "many")
    from cart_recovery.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="CART_RECOVERY_DISPATCH_CHUNK"):
        DispatchSettings.from_env()
