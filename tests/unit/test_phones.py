"""The one normal form of a phone number (cart_recovery.phones), read in the shop's country."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cart_recovery import phones
from cart_recovery.dispatch.consent import normalise_address
from cart_recovery.webhooks.funnel import parse_message


@pytest.mark.parametrize(
    ("raw", "country", "e164"),
    [
        # a UK shop: the national, the international and WhatsApp's form are one number
        ("07700 900456", "GB", "+447700900456"),
        ("+44 7700 900456", "GB", "+447700900456"),
        ("0044 7700 900456", "GB", "+447700900456"),
        ("447700900456", "GB", "+447700900456"),
        # a Turkish shop
        ("0532 123 45 67", "TR", "+905321234567"),
        ("532 123 45 67", "TR", "+905321234567"),
        ("+90 (532) 123-45-67", "TR", "+905321234567"),
        ("90 532 123 45 67", "TR", "+905321234567"),
        # a number with its country code is that country's, whatever the shop's
        ("+44 7700 900456", "TR", "+447700900456"),
        ("+90 532 123 45 67", "GB", "+905321234567"),
        # junk is no contact, never a guess
        ("123", "GB", None),
        ("abc", "GB", None),
        ("", "GB", None),
        ("   ", "TR", None),
        (None, "TR", None),
        ("0532 12", "TR", None),
        ("+0123456789", "GB", None),
        ("0532 123 45 67 / 0533 000 11 22", "TR", None),
    ],
)
def test_numbers_are_read_in_the_shops_country(raw, country, e164):
    assert phones.to_e164(raw, country) == e164


def test_a_uk_number_is_not_read_as_turkish():
    """The rule this replaces read every national number as Turkish (+90 7700 900456)."""
    assert phones.to_e164("07700 900456", "GB") == "+447700900456"
    assert phones.to_e164("07700 900456", "TR") != "+447700900456"


def test_without_a_country_only_international_numbers_parse():
    assert phones.to_e164("+44 7700 900456", None) == "+447700900456"
    assert phones.to_e164("07700 900456", None) is None


@pytest.mark.parametrize(
    ("wa_id", "e164"),
    [
        ("447700900456", "+447700900456"),
        ("905321234567", "+905321234567"),
        ("+447700900456", "+447700900456"),
        (447700900456, "+447700900456"),
        ("07700900456", None),
        ("123", None),
        ("", None),
        (None, None),
        (True, None),
    ],
)
def test_whatsapp_ids_are_the_same_normal_form(wa_id, e164):
    assert phones.whatsapp_e164(wa_id) == e164


def test_a_uk_shops_three_spellings_and_whatsapp_are_one_person():
    """The checkout's national number, the customer record's international one, a consent
    revocation and an inbound WhatsApp message all end up as the same address."""
    checkout = phones.to_e164("07700 900456", "GB")
    customer = phones.to_e164("+44 7700 900456", "GB")
    revoked = normalise_address("whatsapp", "447700900456")
    inbound = {"id": "wamid.1", "from": "447700900456", "timestamp": "1767225600", "type": "text"}
    message = parse_message(inbound, datetime.now(UTC))
    assert checkout == customer == revoked == message.address == "+447700900456"


def test_phone_strings_are_the_values_of_phone_keys_at_any_depth():
    payload = {
        "phone": "07700 900456",
        "customer": {"phone": "+44 7700 900456", "id": 7},
        "billing": {"phone": ""},
        "member": {"phoneNumber": 905321234567},
        "CepTelefonu": "0532 123 45 67",
        "items": [{"phone": "0532 000 11 22"}],
        "note": "call me on 07700 900999",
        "consent": {"phone": True},
    }
    assert phones.phone_strings(payload) == {
        "07700 900456",
        "+44 7700 900456",
        "905321234567",
        "0532 123 45 67",
        "0532 000 11 22",
    }


def test_phone_rows_are_sorted_and_unique():
    rows = phones.phone_rows("uk-shop", "GB", ["07700 900456", "123", "07700 900456"])
    assert rows == [("uk-shop", "07700 900456", "GB", "+447700900456"), ("uk-shop", "123", "GB", None)]


@pytest.mark.parametrize(
    ("code", "known"), [("GB", True), ("TR", True), ("US", True), ("gb", False), ("UK", False)]
)
def test_countries_are_iso_3166_alpha_2(code, known):
    assert phones.is_country(code) is known
