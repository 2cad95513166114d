"""Replies (cart_recovery.assistant.replies): the shop's own numbers, in the customer's language,
with the cart's chart and distance to free shipping; the actions each intent asks for."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from cart_recovery.assistant.replies import Cart, CartLine, reply, size_advice
from cart_recovery.shops import load_shops

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "shops.example.yaml"


@pytest.fixture(scope="module")
def shops():
    return {shop.id: shop for shop in load_shops(EXAMPLE)}


@pytest.fixture
def anatolia(shops):
    return shops["anatolia-shopify"]


@pytest.fixture
def bosphorus(shops):
    return shops["bosphorus-woo"]


def _cart(value: str, currency: str = "TRY", product_type: str | None = "apparel") -> Cart:
    return Cart(
        cart_key="c1",
        currency=currency,
        value=Decimal(value),
        lines=(CartLine("Keten Gömlek", "M", 1, Decimal(value), product_type),),
        cart_url="https://anatolia-linen.myshopify.com/cart/c1",
        language="tr",
    )


def test_shipping_tr_states_the_policy_and_the_gap_to_free_shipping(anatolia):
    result = reply(anatolia, "kargo ne zaman gelir?", _cart("1249.80"))
    assert (result.intent, result.language) == ("shipping", "tr")
    for fact in ("Yurtiçi Kargo", "1-3 iş günü", "14:00", "₺89,90", "₺1.500,00", "₺1.249,80", "₺250,20"):
        assert fact in result.reply
    assert result.actions == ["pause_episode"]
    assert result.facts["to_free_shipping"] == "250.20"


def test_shipping_over_the_threshold_is_free(anatolia):
    result = reply(anatolia, "kargo ucreti ne kadar", _cart("1800.00"))
    assert "kargonuz ücretsiz" in result.reply and "daha eklemeniz" not in result.reply


def test_shipping_en_without_a_cart_answers_from_the_policy(bosphorus):
    result = reply(bosphorus, "how much is shipping to London?")
    assert (result.intent, result.language) == ("shipping", "en")
    for fact in ("Royal Mail Tracked", "2-4 working days", "£4.95", "£50.00"):
        assert fact in result.reply
    assert "Your cart" not in result.reply and result.actions == []


def test_size_fit_uses_the_products_chart_and_advises_a_size(anatolia):
    result = reply(
        anatolia, "beden tablosuna güvenemiyorum, 1.75 boy 78 kilo hangi beden olur?", _cart("749.90")
    )
    assert result.intent == "size_fit"
    assert "Keten Gömlek için beden tablomuz (cm)" in result.reply
    assert "M: göğüs 98, bel 84, boy 72" in result.reply
    assert result.facts["size_advice"] == "L"  # 175 cm and 78 kg: the L row's ranges
    assert "14 gün içinde beden değişimi" in result.reply


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("normalde M giyiyorum", "M"),
        ("I usually wear a small", "S"),
        ("boyum 165 kilom 58", "S"),
        ("I'm 6'1 and 200 lbs", "XL"),
        ("göğüs çevrem 100 cm", "L"),
        ("hangi beden olur", None),
    ],
)
def test_size_advice(anatolia, text, size):
    advice = size_advice(anatolia.policy.size_charts["apparel"], text)
    assert (advice["size"] if advice else None) == size


def test_size_fit_without_a_chart_hands_off(anatolia):
    shop = anatolia.model_copy(update={"policy": anatolia.policy.model_copy(update={"size_charts": {}})})
    result = reply(shop, "hangi beden olur bana", _cart("749.90"))
    assert result.intent == "size_fit" and "handoff" in result.actions
    assert "beden tablomuz elimde yok" in result.reply


def test_returns_trust_states_days_refund_and_company(bosphorus):
    result = reply(bosphorus, "what's your return policy? is this site legit?")
    assert result.intent == "returns_trust"
    for fact in ("30 days", "5 working days", "Bosphorus Knits Ltd", "14 Brick Lane", "3-D Secure"):
        assert fact in result.reply


def test_discount_promises_no_coupon_and_asks_for_the_eligibility_check(anatolia):
    result = reply(anatolia, "indirim kodu var mı", _cart("1249.80"))
    assert result.intent == "discount"
    assert "check_coupon" in result.actions and "₺250,20" in result.reply
    assert "%" not in result.reply  # no invented percentage


def test_account_offers_guest_checkout_and_the_recovery_link(anatolia, shops):
    result = reply(anatolia, "üye olmadan sipariş verebilir miyim", _cart("500"))
    assert result.intent == "account"
    assert "misafir olarak" in result.reply and "https://anatolia-linen.myshopify.com/cart/c1" in result.reply
    no_guests = reply(shops["kapadokya-ideasoft"], "üyelik zorunlu mu")
    assert "üyelik gerekiyor" in no_guests.reply


def test_payment_lists_methods_and_instalments_and_hands_off_a_declined_card(anatolia, bosphorus):
    declined = reply(anatolia, "kartım reddedildi")
    assert declined.intent == "payment_problem" and "handoff" in declined.actions
    assert "kredi kartı, banka kartı, havale/EFT" in declined.reply and "6 taksit" in declined.reply
    methods = reply(bosphorus, "do you take paypal")
    assert methods.intent == "payment_problem" and "handoff" not in methods.actions
    assert "PayPal" in methods.reply and "3 instalments" in methods.reply and "£30.00" in methods.reply


def test_product_question_lists_the_cart_and_hands_off(anatolia):
    result = reply(anatolia, "başka rengi var mı", _cart("749.90"))
    assert result.intent == "product_question"
    assert "Keten Gömlek (M), ₺749,90" in result.reply and result.actions == ["pause_episode", "handoff"]


def test_stop_confirms_once_and_revokes_in_the_carts_language(anatolia):
    result = reply(anatolia, "STOP", _cart("749.90"))
    assert (result.intent, result.language) == ("stop", "tr")
    assert result.actions == ["revoke_consent", "end_episode"]
    assert "Anatolia Shopify" in result.reply and "göndermeyeceğiz" in result.reply


def test_human_hands_off_with_support_hours(anatolia, bosphorus):
    tr = reply(anatolia, "bir yetkiliyle görüşmek istiyorum")
    assert tr.intent == "human" and tr.actions == ["handoff"]
    assert "hafta içi 09:00-18:00" in tr.reply and "+90 212 555 01 23" in tr.reply
    en = reply(bosphorus, "can I talk to a real person")
    assert "Monday to Saturday 09:00-17:30" in en.reply and "hello@bosphorus-knits.example" in en.reply


def test_other_offers_a_handoff(bosphorus):
    result = reply(bosphorus, "good afternoon")
    assert result.intent == "other" and result.actions == ["offer_handoff"]


def test_a_shop_without_policy_hands_off_instead_of_inventing(anatolia):
    shop = anatolia.model_copy(update={"policy": None})
    result = reply(shop, "kargo ne zaman gelir?")
    assert result.intent == "shipping" and result.actions == ["handoff"]
    assert "ekibimize" in result.reply and "₺" not in result.reply


def test_reply_as_dict_has_the_documented_keys(anatolia):
    document = reply(anatolia, "merhaba").as_dict()
    assert {"intent", "language", "reply", "actions", "confidence", "backend"} <= set(document)
    assert document["backend"] == "offline" and document["latency_ms"] >= 0
