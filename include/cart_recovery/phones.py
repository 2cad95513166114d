"""Phone numbers in one normal form, E.164 (``+447700900456``), read with Google's libphonenumber.

A number the customer typed without a country code is read in the shop's country (``country`` in
the shops file): ``07700 900456`` in a UK shop is ``+447700900456``, ``0532 123 45 67`` in a
Turkish one ``+905321234567``. A number with its country code (``+44 7700 900456``,
``0044 7700 900456``) is read as such anywhere. A WhatsApp id is the international number without
``+`` (``447700900456``). Anything that does not parse, or does not have a possible length for its
country, has no normal form (``None``): no contact, never a guess.

"Possible" (the length fits the country's numbering plan), not "valid" (the number is in a range
the metadata knows to be assigned): Ofcom's drama range 07700 900xxx is not assigned, and newly
assigned ranges reach the metadata late; a wrong-length number is junk either way.

The dbt models cannot run Python, so the normal form reaches them through ``ops.phone_numbers``:
one row per shop and phone string as it appears in a payload (``raw``), with its E.164 form (null
when it has none). Ingest writes the rows of every payload it lands in the same transaction
(:func:`record_payload_phones`), so a build never reads a landed row whose numbers are missing;
:func:`backfill_shop` fills the rows of payloads landed before (or by other means), and re-reads a
shop's numbers when its country changes. Everything that matches people by phone (the staging
models, the send-time guards, consent revocations, the WhatsApp funnel, privacy erasure) compares
these E.164 forms.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import phonenumbers
import psycopg2.extensions
from psycopg2.extras import execute_values

log = logging.getLogger(__name__)

# Keys whose values are phone numbers, in the field names of every platform we store (compared in
# lower case): Shopify/WooCommerce ``phone``, Ideasoft ``phoneNumber``, Ticimax ``CepTelefonu``,
# WhatsApp's ``from``/``wa_id``/``recipient_id``.
PHONE_KEYS: tuple[str, ...] = (
    "phone",
    "phonenumber",
    "phone_number",
    "ceptelefonu",
    "mobile",
    "from",
    "wa_id",
    "recipient_id",
)
_PHONE_KEY_SET = frozenset(PHONE_KEYS)
# Longer strings are not one phone number (phonenumbers refuses more than 250 characters too).
_MAX_LENGTH = 100


def is_country(code: str) -> bool:
    """Whether ``code`` is an ISO 3166-1 alpha-2 country that has a numbering plan (``GB``, ``TR``)."""
    return code in phonenumbers.SUPPORTED_REGIONS


@functools.lru_cache(maxsize=65_536)
def to_e164(raw: str | None, country: str | None) -> str | None:
    """``raw`` in E.164, reading a number without a country code in ``country``; None when it
    does not parse or cannot be a number of its country. ``country=None``: only numbers with
    their country code (``+``) parse."""
    if raw is None:
        return None
    text = str(raw).strip()
    if not text or len(text) > _MAX_LENGTH:
        return None
    try:
        number = phonenumbers.parse(text, country)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def whatsapp_e164(wa_id: Any) -> str | None:
    """A WhatsApp id (``447700900456``: the international number without ``+``; ``+`` tolerated)
    in E.164, or None."""
    if wa_id is None or isinstance(wa_id, bool):
        return None
    text = str(wa_id).strip()
    if not text:
        return None
    return to_e164(text if text.startswith("+") else "+" + text, None)


def phone_strings(document: Any) -> set[str]:
    """Every phone number in a payload, as the text the models read (``payload->>'phone'``): the
    string or integer values of the keys in ``PHONE_KEYS``, at any depth."""
    return set(_walk(document))


def _walk(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict | list):
                yield from _walk(value)
            elif isinstance(key, str) and key.lower() in _PHONE_KEY_SET:
                if isinstance(value, str) and value.strip():
                    yield value
                elif isinstance(value, int) and not isinstance(value, bool):
                    yield str(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


_INSERT = """
insert into ops.phone_numbers (shop_id, raw, country, e164)
values %s
on conflict (shop_id, raw) do nothing
"""


def phone_rows(shop_id: str, country: str, strings: Iterable[str]) -> list[tuple[str, str, str, str | None]]:
    """``ops.phone_numbers`` rows for ``strings`` of one shop, sorted (concurrent writers then
    lock the same keys in the same order)."""
    return [(shop_id, raw, country, to_e164(raw, country)) for raw in sorted(set(strings))]


def record_phones(
    cur: psycopg2.extensions.cursor, shop_id: str, country: str, strings: Iterable[str]
) -> None:
    """Store the normal form of ``strings`` for the shop (a string stored already is kept)."""
    rows = phone_rows(shop_id, country, strings)
    if rows:
        execute_values(cur, _INSERT, rows, page_size=max(len(rows), 1))


def record_payload_phones(
    cur: psycopg2.extensions.cursor, shop_id: str, country: str, payloads: Iterable[Any]
) -> None:
    """Store the normal form of every phone number in ``payloads`` (one shop's), in the caller's
    transaction: the landing code calls it with the rows it lands."""
    strings: set[str] = set()
    for payload in payloads:
        strings.update(_walk(payload))
    record_phones(cur, shop_id, country, strings)


# The phone strings of a shop's stored payloads that ops.phone_numbers has not seen yet.
_UNSEEN_SQL = """
select distinct leaf.value
from (
    select payload from raw.webhook_events where shop_id = %(shop_id)s
    union all
    select payload from raw.polled_records where shop_id = %(shop_id)s
    union all
    select payload from ops.quarantine where shop_id = %(shop_id)s
) as stored
cross join lateral ops.jsonb_leaves(stored.payload) as leaf
where lower(leaf.key) = any (%(phone_keys)s::text[])
    and btrim(leaf.value) <> ''
    and not exists (
        select 1 from ops.phone_numbers as known
        where known.shop_id = %(shop_id)s and known.raw = leaf.value
    )
"""


def backfill_shop(cur: psycopg2.extensions.cursor, shop_id: str, country: str) -> dict[str, int]:
    """Bring the shop's ``ops.phone_numbers`` up to date: numbers read in another country are read
    again in ``country``, and the phone strings of its stored payloads not seen yet are added.
    Idempotent; reads every stored payload of the shop (run when a shop is new or its country
    changed, and by ``cart-recovery shops sync``), so not on every build."""
    cur.execute("select raw from ops.phone_numbers where shop_id = %s and country <> %s", (shop_id, country))
    stale = [raw for (raw,) in cur.fetchall()]
    if stale:
        execute_values(
            cur,
            "update ops.phone_numbers as numbers set country = fresh.country, e164 = fresh.e164 "
            "from (values %s) as fresh (shop_id, raw, country, e164) "
            "where numbers.shop_id = fresh.shop_id and numbers.raw = fresh.raw",
            phone_rows(shop_id, country, stale),
            page_size=1000,
        )
    cur.execute(_UNSEEN_SQL, {"shop_id": shop_id, "phone_keys": list(PHONE_KEYS)})
    unseen = [raw for (raw,) in cur.fetchall()]
    for start in range(0, len(unseen), 5000):
        record_phones(cur, shop_id, country, unseen[start : start + 5000])
    if stale or unseen:
        log.info(
            "Shop %s: %d phone numbers re-read in %s, %d added", shop_id, len(stale), country, len(unseen)
        )
    return {"reread": len(stale), "added": len(unseen)}
