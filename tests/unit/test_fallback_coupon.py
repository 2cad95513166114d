"""The coupon an email fallback carries: the one its undelivered WhatsApp message was sent with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from cart_recovery.dispatch.dispatcher import _fallback_coupon
from cart_recovery.dispatch.message import Coupon

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def facts(code: str | None, expires_at: datetime | None, pct=Decimal("10.00"), free_shipping=False) -> dict:
    return {
        "fallback_coupon_code": code,
        "fallback_coupon_pct": pct,
        "fallback_coupon_free_shipping": free_shipping,
        "fallback_coupon_expires_at": expires_at,
    }


def test_the_whatsapp_messages_coupon_goes_with_the_email():
    notes: dict[str, str] = {}
    expires = NOW + timedelta(hours=47)
    coupon = _fallback_coupon(facts("GERI-7Q2M", expires, free_shipping=True), NOW, notes)
    assert coupon == Coupon("GERI-7Q2M", Decimal("10.00"), True, expires)
    assert notes == {}


def test_no_coupon_on_the_message_means_none_on_the_email():
    notes: dict[str, str] = {}
    assert _fallback_coupon(facts(None, None, pct=None), NOW, notes) is None
    assert notes == {}


def test_a_coupon_that_expired_before_the_fallback_is_left_out_and_noted():
    notes: dict[str, str] = {}
    assert _fallback_coupon(facts("GERI-7Q2M", NOW), NOW, notes) is None
    assert notes == {"coupon": "skipped: GERI-7Q2M expired before the email fallback"}
