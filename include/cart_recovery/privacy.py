"""Shopify's mandatory privacy webhooks, processed after the event is stored.

- ``customers/redact``: erases the customer's personal data (names, emails, phones, addresses,
  IPs, notes, message texts, recovery links) in place from ``raw.webhook_events`` (the shop's events
  and the WhatsApp messages from or to the customer's phone), ``raw.polled_records``,
  ``ops.quarantine`` (polled records that failed validation, kept verbatim) and
  ``ops.privacy_requests``, and deletes their ``ops.data_exports``. Non-personal facts stay
  (ids, totals, currency, timestamps, line items), so KPIs still add up; dbt rebuilds the marts
  from the redacted raw rows on its next run.
- ``customers/data_request``: writes one JSON document of every stored row about the customer to
  ``ops.data_exports`` (the shop owner passes it on; Shopify does not collect it).
- ``shop/redact``: deletes every row of the shop from the tables in ``SHOP_DATA_TABLES``; the
  privacy requests themselves stay, redacted, as the audit trail.

A row is "about the customer" when one of their ids, emails or phone numbers appears in it (see
``ops.jsonb_mentions_customer``), or it is one of the orders Shopify lists in the request. Phone
numbers are compared in their E.164 form (``cart_recovery.phones``, read in the shop's country):
the request's ``+44 7700 900456`` finds the ``07700 900456`` a UK checkout carried (through
``ops.phone_numbers``, whose rows for the number are deleted too) and the WhatsApp messages from
``447700900456``.
Each request is a row of ``ops.privacy_requests`` (pending, completed or failed), written in the
same transaction as the event, so a crash before processing leaves it pending, and it is picked
up again on the next delivery or when the service starts. Processing is idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2.extras import Json

from cart_recovery import phones
from cart_recovery.phones import PHONE_KEYS

log = logging.getLogger(__name__)

CUSTOMERS_REDACT = "customers/redact"
CUSTOMERS_DATA_REQUEST = "customers/data_request"
SHOP_REDACT = "shop/redact"
PRIVACY_TOPICS = frozenset({CUSTOMERS_REDACT, CUSTOMERS_DATA_REQUEST, SHOP_REDACT})

# Keys whose values are personal data, in the field names of every platform we store (compared in
# lower case). Address blocks, client details and notes go as a whole.
PERSONAL_KEYS: tuple[str, ...] = (
    # names
    "first_name",
    "last_name",
    "name_on_card",
    "firstname",
    "surname",
    "isim",
    "soyisim",
    "profile",
    # emails and phones
    "email",
    "contact_email",
    "mail",
    "phone",
    "phonenumber",
    "phone_number",
    "ceptelefonu",
    "mobile",
    "from",
    "wa_id",
    "recipient_id",
    # addresses and devices
    "billing",
    "shipping",
    "billing_address",
    "shipping_address",
    "default_address",
    "addresses",
    "address",
    "adres",
    "browser_ip",
    "client_details",
    "customer_ip_address",
    "customer_user_agent",
    # free text written by or to the customer
    "note",
    "customer_note",
    "body",
    "caption",
    "text",
    # links that open the customer's checkout with their details filled in
    "abandoned_checkout_url",
    "cart_url",
)
# Tables with a shop_id column that shop/redact empties for the shop. Add new tables holding shop
# data here (and, when they hold personal data, cover them in _customer_redact and _data_request).
SHOP_DATA_TABLES: tuple[str, ...] = (
    "raw.webhook_events",
    "raw.polled_records",
    "ops.quarantine",
    "ops.validation_runs",
    "ops.ingest_watermarks",
    "ops.data_exports",
    "ops.recovery_outbox",
    "ops.coupon_pool",
    "ops.phone_numbers",
)

# The messages sent to the customer (ops.recovery_outbox) by the address they went to, and the
# WhatsApp conversation of their phone (ops.conversations: one business number serves every shop).
_OUTBOX_WHERE = """
    o.shop_id = %(shop_id)s and (
        lower(o.recipient) = any (%(emails)s::text[]) or o.recipient = any (%(e164s)s::text[]))
"""
_CONVERSATIONS_WHERE = """
    c.address = any (%(e164s)s::text[])
"""
# The strings that are the customer's phone number in the shop's payloads: the request's own, and
# every one the shop's payloads carried that reads as the same number.
_PHONE_STRINGS_SQL = """
select raw from ops.phone_numbers where shop_id = %(shop_id)s and e164 = any (%(e164s)s::text[])
"""


def record_request(
    cur: psycopg2.extensions.cursor,
    *,
    platform: str,
    shop_id: str,
    topic: str,
    delivery_id: str,
    payload: dict[str, Any],
    received_at: datetime,
) -> tuple[int, str]:
    """Insert the request (idempotent on its delivery id); its id and current status."""
    customer_id = _customer(payload).get("id")
    cur.execute(
        """
        insert into ops.privacy_requests
            (platform, shop_id, topic, delivery_id, customer_id, payload, received_at)
        values (%s, %s, %s, %s, %s, %s, %s)
        on conflict on constraint privacy_requests_delivery_unique do nothing
        returning request_id, status
        """,
        (
            platform,
            shop_id,
            topic,
            delivery_id,
            None if customer_id is None else str(customer_id),
            Json(payload),
            received_at,
        ),
    )
    row = cur.fetchone()
    if row is None:
        cur.execute(
            "select request_id, status from ops.privacy_requests "
            "where platform = %s and shop_id = %s and delivery_id = %s",
            (platform, shop_id, delivery_id),
        )
        row = cur.fetchone()
    return row[0], row[1]


def process_request(
    conn: psycopg2.extensions.connection, request_id: int, countries: Mapping[str, str] | None = None
) -> str | None:
    """Carry out one request in the caller's transaction; its new status (None if not ours now).

    ``countries``: shop id -> country (the shops file's), to read the request's phone number; a
    shop not in it is looked up in ``ops.shops``."""
    with conn.cursor() as cur:
        cur.execute(
            "select shop_id, topic, payload, status from ops.privacy_requests "
            "where request_id = %s for update skip locked",
            (request_id,),
        )
        row = cur.fetchone()
        if row is None or row[3] == "completed":
            return None if row is None else row[3]
        shop_id, topic, payload, _ = row
        cur.execute("savepoint privacy_request")
        try:
            if topic == SHOP_REDACT:
                result = _shop_redact(cur, shop_id)
            else:
                target = _Target.from_payload(cur, shop_id, payload, _country(cur, shop_id, countries))
                if topic == CUSTOMERS_REDACT:
                    result = _customer_redact(cur, target)
                else:
                    result = _data_request(cur, request_id, target)
        except (psycopg2.DataError, psycopg2.IntegrityError, psycopg2.ProgrammingError, ValueError) as exc:
            cur.execute("rollback to savepoint privacy_request")
            cur.execute(
                "update ops.privacy_requests set status = 'failed', attempts = attempts + 1, error = %s "
                "where request_id = %s",
                (str(exc).strip()[:2000], request_id),
            )
            log.error("Privacy request %s (%s, shop %s) failed: %s", request_id, topic, shop_id, exc)
            return "failed"
        cur.execute(
            "update ops.privacy_requests set status = 'completed', attempts = attempts + 1, error = null, "
            "processed_at = %s, result = %s where request_id = %s",
            (datetime.now(UTC), Json(result), request_id),
        )
        log.info("Privacy request %s (%s, shop %s) completed: %s", request_id, topic, shop_id, result)
        return "completed"


def _country(
    cur: psycopg2.extensions.cursor, shop_id: str, countries: Mapping[str, str] | None
) -> str | None:
    if countries and shop_id in countries:
        return countries[shop_id]
    cur.execute("select country from ops.shops where shop_id = %s", (shop_id,))
    row = cur.fetchone()
    return row[0] if row else None


def open_requests(conn: psycopg2.extensions.connection) -> list[int]:
    with conn.cursor() as cur:
        cur.execute("select request_id from ops.privacy_requests where status <> 'completed' order by 1")
        return [r[0] for r in cur.fetchall()]


# -- the three topics -------------------------------------------------------------------------


class _Target:
    """Who a customer request is about, normalised for matching in SQL."""

    def __init__(
        self,
        shop_id: str,
        customer_ids: list[str],
        emails: list[str],
        e164s: list[str],
        phone_strings: list[str],
        order_ids: list[str],
    ) -> None:
        self.shop_id = shop_id
        self.customer_ids = customer_ids
        self.emails = emails
        self.e164s = e164s  # the customer's number(s) in E.164
        self.phone_strings = phone_strings  # every string of the shop's payloads that is one of them
        self.order_ids = order_ids

    @classmethod
    def from_payload(
        cls, cur: psycopg2.extensions.cursor, shop_id: str, payload: dict[str, Any], country: str | None
    ) -> _Target:
        """``country``: the shop's, to read a number given without a country code (None: only an
        international number is read; the request's string is still matched as it is)."""
        customer = _customer(payload)
        orders = payload.get("orders_to_redact") or payload.get("orders_requested") or []
        phone = str(customer.get("phone") or "").strip()
        e164 = phones.to_e164(phone, country) if phone else None
        e164s = [e164] if e164 else []
        strings = {phone} if phone else set()
        if e164s:
            cur.execute(_PHONE_STRINGS_SQL, {"shop_id": shop_id, "e164s": e164s})
            strings.update(raw for (raw,) in cur.fetchall())
        target = cls(
            shop_id=shop_id,
            customer_ids=[str(customer["id"])] if customer.get("id") is not None else [],
            emails=[str(customer["email"]).strip().lower()] if customer.get("email") else [],
            e164s=e164s,
            phone_strings=sorted(strings),
            order_ids=[str(o) for o in orders if o is not None] if isinstance(orders, list) else [],
        )
        if not (target.customer_ids or target.emails or target.phone_strings):
            raise ValueError("the request names no customer id, email or phone")
        return target

    def params(self) -> dict[str, Any]:
        return {
            "shop_id": self.shop_id,
            "customer_ids": self.customer_ids,
            "emails": self.emails,
            "e164s": self.e164s,
            "phones": self.phone_strings,
            # WhatsApp ids: the number without "+"
            "wa_ids": [e164[1:] for e164 in self.e164s] + self.e164s,
            "order_ids": self.order_ids,
            "phone_keys": list(PHONE_KEYS),
            "personal_keys": list(PERSONAL_KEYS),
        }


_MENTIONS = (
    "ops.jsonb_mentions_customer({col}, %(emails)s::text[], %(phones)s::text[], "
    "%(customer_ids)s::text[], %(phone_keys)s::text[])"
)

# Webhook events about the customer: the shop's (including orders Shopify lists by id), and
# WhatsApp messages and statuses from or to the customer's phone.
_EVENTS_WHERE = f"""
    (e.shop_id = %(shop_id)s
     and ({_MENTIONS.format(col="e.payload")}
          or (e.topic like 'orders/%%' and e.payload ->> 'id' = any (%(order_ids)s::text[]))))
    or (e.platform = 'whatsapp' and cardinality(%(e164s)s::text[]) > 0
        and ops.jsonb_mentions_customer(
            e.payload, '{{}}', %(wa_ids)s::text[], '{{}}', %(phone_keys)s::text[]))
"""


# Polled record versions about the customer (alias {a}: raw.polled_records, or ops.quarantine for
# the versions that failed validation).
def _records_where(a: str) -> str:
    return f"""
    {a}.shop_id = %(shop_id)s and (
        {_MENTIONS.format(col=f"{a}.payload")}
        or ({a}.entity = 'customer' and {a}.record_id = any (%(customer_ids)s::text[]))
        or ({a}.entity = 'order' and {a}.record_id = any (%(order_ids)s::text[])))
"""


_RECORDS_WHERE = _records_where("p")
_QUARANTINE_WHERE = _records_where("q")


def _customer_redact(cur: psycopg2.extensions.cursor, target: _Target) -> dict[str, int]:
    params = target.params()
    cur.execute(
        f"update raw.webhook_events e set payload = ops.jsonb_redact(e.payload, %(personal_keys)s::text[]) "
        f"where {_EVENTS_WHERE}",
        params,
    )
    events = cur.rowcount
    cur.execute(
        f"update raw.polled_records p set payload = ops.jsonb_redact(p.payload, %(personal_keys)s::text[]) "
        f"where {_RECORDS_WHERE}",
        params,
    )
    records = cur.rowcount
    quarantined, merged = _redact_quarantine(cur, params)
    cur.execute(
        "delete from ops.data_exports where shop_id = %(shop_id)s "
        "and (customer_id = any (%(customer_ids)s::text[]) or " + _MENTIONS.format(col="export") + ")",
        params,
    )
    exports = cur.rowcount
    # What was sent keeps its facts (stage, status, times, template, coupon terms) for the
    # programme's measurement, without the address, the text or the provider's answer. Consent
    # revocations keep their address: honouring an opt-out needs it (docs/dispatch.md).
    cur.execute(
        "update ops.recovery_outbox o set recipient = null, rendered_text = null, provider_response = null, "
        f"cart_url = null, error = null where {_OUTBOX_WHERE}",
        params,
    )
    messages = cur.rowcount
    cur.execute(f"delete from ops.conversations c where {_CONVERSATIONS_WHERE}", params)
    conversations = cur.rowcount
    # The normal forms of their numbers: the payloads that carried those strings are redacted.
    cur.execute(
        "delete from ops.phone_numbers where shop_id = %(shop_id)s "
        "and (e164 = any (%(e164s)s::text[]) or raw = any (%(phones)s::text[]))",
        params,
    )
    phone_numbers = cur.rowcount
    # The privacy requests about this customer (this one included) keep their audit facts only.
    cur.execute(
        "update ops.privacy_requests set payload = ops.jsonb_redact(payload, %(personal_keys)s::text[]) "
        "where shop_id = %(shop_id)s and (customer_id = any (%(customer_ids)s::text[]) or "
        + _MENTIONS.format(col="payload")
        + ")",
        params,
    )
    return {
        "webhook_events_redacted": events,
        "polled_records_redacted": records,
        "quarantine_redacted": quarantined,
        "quarantine_merged": merged,
        "data_exports_deleted": exports,
        "recovery_messages_redacted": messages,
        "conversations_deleted": conversations,
        "phone_numbers_deleted": phone_numbers,
        "privacy_requests_redacted": cur.rowcount,
    }


def _redact_quarantine(cur: psycopg2.extensions.cursor, params: dict[str, Any]) -> tuple[int, int]:
    """Redact the customer's quarantined rows in place; (rows redacted, duplicates removed).

    ``ops.quarantine`` is unique on the payload's md5 per shop and entity, and two versions that
    differed only in personal data (say, two invalid phone numbers) are identical once redacted.
    Such a version is deleted first (its twin, with the same facts, stays), so that the update
    cannot violate the constraint and fail the whole request.
    """
    cur.execute(
        f"""
        with target as (
            select q.quarantine_id, q.shop_id, q.entity,
                   md5(ops.jsonb_redact(q.payload, %(personal_keys)s::text[])::text) as redacted_md5
            from ops.quarantine q
            where {_QUARANTINE_WHERE}
        ),
        ranked as (
            select t.*, row_number() over (
                       partition by t.shop_id, t.entity, t.redacted_md5 order by t.quarantine_id) as n
            from target t
        )
        delete from ops.quarantine d
        using ranked r
        where d.quarantine_id = r.quarantine_id
          and (r.n > 1
               or exists (select 1 from ops.quarantine o
                          where o.shop_id = r.shop_id and o.entity = r.entity
                            and o.payload_md5 = r.redacted_md5
                            and o.quarantine_id not in (select quarantine_id from target)))
        """,
        params,
    )
    merged = cur.rowcount
    cur.execute(
        f"update ops.quarantine q set payload = ops.jsonb_redact(q.payload, %(personal_keys)s::text[]) "
        f"where {_QUARANTINE_WHERE}",
        params,
    )
    return cur.rowcount, merged


def _data_request(cur: psycopg2.extensions.cursor, request_id: int, target: _Target) -> dict[str, int]:
    params = target.params()
    cur.execute(
        f"""
        select coalesce(jsonb_agg(jsonb_build_object(
                   'platform', e.platform, 'topic', e.topic, 'delivery_id', e.delivery_id,
                   'received_at', e.received_at, 'payload', e.payload) order by e.event_id), '[]')
        from raw.webhook_events e
        where e.topic not in ('customers/redact', 'customers/data_request', 'shop/redact')
          and ({_EVENTS_WHERE})
        """,
        params,
    )
    events = cur.fetchone()[0]
    cur.execute(
        f"""
        select coalesce(jsonb_agg(jsonb_build_object(
                   'platform', p.platform, 'entity', p.entity, 'record_id', p.record_id,
                   'record_updated_at', p.record_updated_at, 'fetched_at', p.fetched_at,
                   'payload', p.payload) order by p.entity, p.record_id, p.record_updated_at), '[]')
        from raw.polled_records p
        where {_RECORDS_WHERE}
        """,
        params,
    )
    records = cur.fetchone()[0]
    cur.execute(
        f"""
        select coalesce(jsonb_agg(jsonb_build_object(
                   'platform', q.platform, 'entity', q.entity, 'record_id', q.record_id,
                   'record_updated_at', q.record_updated_at, 'reasons', to_jsonb(q.reasons),
                   'quarantined_at', q.quarantined_at, 'payload', q.payload)
                   order by q.entity, q.record_id, q.quarantine_id), '[]')
        from ops.quarantine q
        where {_QUARANTINE_WHERE}
        """,
        params,
    )
    quarantined = cur.fetchone()[0]
    cur.execute(
        f"""
        select coalesce(jsonb_agg(jsonb_build_object(
                   'stage', o.stage, 'channel', o.channel, 'recipient', o.recipient,
                   'status', o.status, 'reason', o.reason, 'template', o.template,
                   'rendered_text', o.rendered_text, 'coupon_code', o.coupon_code,
                   'sent_at', o.sent_at, 'delivered_at', o.delivered_at, 'read_at', o.read_at,
                   'clicked_at', o.clicked_at, 'replied_at', o.replied_at)
                   order by o.outbox_id), '[]')
        from ops.recovery_outbox o
        where {_OUTBOX_WHERE}
        """,
        params,
    )
    messages = cur.fetchone()[0]
    now = datetime.now(UTC)
    export = {
        "shop_id": target.shop_id,
        "customer": {"ids": target.customer_ids, "emails": target.emails},
        "generated_at": now.isoformat(),
        "webhook_events": events,
        "polled_records": records,
        "quarantined_records": quarantined,
        "recovery_messages": messages,
    }
    cur.execute(
        """
        insert into ops.data_exports (request_id, shop_id, customer_id, created_at, export)
        values (%s, %s, %s, %s, %s)
        on conflict on constraint data_exports_request_unique
        do update set created_at = excluded.created_at, export = excluded.export
        """,
        (
            request_id,
            target.shop_id,
            target.customer_ids[0] if target.customer_ids else None,
            now,
            Json(export),
        ),
    )
    return {
        "webhook_events_exported": len(events),
        "polled_records_exported": len(records),
        "quarantine_exported": len(quarantined),
        "recovery_messages_exported": len(messages),
    }


def _shop_redact(cur: psycopg2.extensions.cursor, shop_id: str) -> dict[str, int]:
    result = {}
    for table in SHOP_DATA_TABLES:
        cur.execute(f"delete from {table} where shop_id = %s", (shop_id,))  # table names are constants
        result[f"{table}_deleted"] = cur.rowcount
    cur.execute("delete from ops.consent_revocations where shop_id = %s", (shop_id,))
    result["ops.consent_revocations_deleted"] = cur.rowcount
    cur.execute(
        "update ops.privacy_requests set payload = ops.jsonb_redact(payload, %s::text[]) where shop_id = %s",
        (list(PERSONAL_KEYS), shop_id),
    )
    return result


def _customer(payload: dict[str, Any]) -> dict[str, Any]:
    customer = payload.get("customer") if isinstance(payload, dict) else None
    return customer if isinstance(customer, dict) else {}
