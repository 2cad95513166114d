"""Shopify's privacy topics: customers/redact erases personal data from stored payloads while the
facts stay, customers/data_request exports the customer's rows, shop/redact deletes the shop's rows."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from webhook_helpers import (
    WHATSAPP_APP_SECRET,
    dumps,
    fetch,
    hex_hmac,
    shop_headers,
    shopify_checkout,
    whatsapp_batch,
    woocommerce_cart,
)


def _ayse(digits: str) -> tuple[dict, str]:
    person = {
        "id": 7001,
        "email": "Ayse.Yilmaz@example.com",
        "phone": f"+90 555 {digits[:3]} {digits[3:5]} {digits[5:]}",
    }
    return person, f"+90555{digits}"


# Ayşe's phone number is new for every test (see _a_new_phone_per_test): WhatsApp rows belong to
# no shop and are matched by phone, so a number shared by two tests would mix their messages.
_DIGITS = f"{uuid.uuid4().int % 10**7:07d}"
AYSE, AYSE_E164 = _ayse(_DIGITS)
OTHER = {"id": 7002, "email": "other.person@example.com", "phone": "+905559999999"}


@pytest.fixture(autouse=True)
def _a_new_phone_per_test(monkeypatch):
    digits = f"{uuid.uuid4().int % 10**7:07d}"
    person, e164 = _ayse(digits)
    for name, value in (("_DIGITS", digits), ("AYSE", person), ("AYSE_E164", e164)):
        monkeypatch.setitem(globals(), name, value)


def _send(client, shops, topic: str, document: dict, *, platform="shopify", delivery_id=None):
    shop = getattr(shops, platform)
    body = dumps(document)
    headers = shop_headers(
        platform,
        domain=shop.domain,
        secret=shop.secret,
        body=body,
        topic=topic,
        delivery_id=delivery_id or str(uuid.uuid4()),
    )
    answer = client.post(
        f"/webhooks/{platform}", content=body, headers={**headers, "Content-Type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    return answer


def _polled(db, shop_id: str, entity: str, record_id: str, payload: dict) -> None:
    now = datetime.now(UTC)
    fetch(
        db,
        "insert into raw.polled_records (platform, shop_id, entity, record_id, record_updated_at, "
        "fetched_at, payload) values ('shopify', %s, %s, %s, %s, %s, %s) returning 1",
        shop_id,
        entity,
        record_id,
        now,
        now,
        json.dumps(payload),
    )


def _whatsapp(client, wamid: str, sender: str, text: str) -> None:
    body = dumps(whatsapp_batch(messages=[(wamid, sender, text)]))
    answer = client.post(
        "/webhooks/whatsapp",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": hex_hmac(WHATSAPP_APP_SECRET, body),
        },
    )
    assert answer.status_code == 200


@pytest.fixture
def held_data(client, shops, db):
    """Ayşe's checkout (webhook), her polled customer record and order, her WhatsApp message;
    another customer's checkout in the same shop; Ayşe's email in another shop."""
    shop_id = shops.shopify.id
    _send(
        client,
        shops,
        "checkouts/update",
        shopify_checkout(checkout_id=1, customer_id=AYSE["id"], email=AYSE["email"], phone=AYSE_E164),
    )
    _send(
        client,
        shops,
        "checkouts/update",
        shopify_checkout(
            checkout_id=2,
            customer_id=OTHER["id"],
            email=OTHER["email"],
            phone=OTHER["phone"],
            first_name="Zeynep",
            last_name="Demir",
        ),
    )
    _send(
        client,
        shops,
        "orders/create",
        {
            "id": 88001,
            "email": None,
            "customer": None,
            "total_price": "899.90",
            "currency": "TRY",
            "created_at": "2026-11-21T10:00:00Z",
            "note": "Kapıya bırakın, Ayşe",
        },
    )
    _polled(
        db,
        shop_id,
        "customer",
        str(AYSE["id"]),
        {
            "id": AYSE["id"],
            "email": AYSE["email"].lower(),
            "phone": "0555" + _DIGITS,
            "first_name": "Ayşe",
            "last_name": "Yılmaz",
            "created_at": "2025-01-01T00:00:00Z",
            "updated_at": "2026-11-20T00:00:00Z",
        },
    )
    _polled(
        db,
        shop_id,
        "customer",
        str(OTHER["id"]),
        {"id": OTHER["id"], "email": OTHER["email"], "first_name": "Other"},
    )
    wamid = f"wamid.{uuid.uuid4().hex}"
    _whatsapp(client, wamid, AYSE_E164[1:], "Bedeni büyük mü?")
    _send(client, shops, "cart.updated", woocommerce_cart(email=AYSE["email"]), platform="woocommerce")
    return {"wamid": wamid}


def _request(shops, **extra) -> dict:
    return {"shop_id": 954889, "shop_domain": shops.shopify.domain, "customer": AYSE, **extra}


def _requests(db, shop_id):
    return fetch(
        db,
        "select topic, status, attempts, result, error, payload from ops.privacy_requests "
        "where shop_id = %s order by request_id",
        shop_id,
    )


def _payloads(db, shop_id) -> str:
    rows = fetch(
        db,
        "select payload from raw.webhook_events where shop_id = %s union all "
        "select payload from raw.polled_records where shop_id = %s",
        shop_id,
        shop_id,
    )
    return json.dumps([r[0] for r in rows], ensure_ascii=False)


def test_customers_redact(client, shops, db, held_data):
    shop_id = shops.shopify.id
    before = _payloads(db, shop_id)
    assert "Ayşe" in before and "ayse.yilmaz@example.com" in before.lower()

    _send(client, shops, "customers/redact", _request(shops, orders_to_redact=[88001]))

    [(topic, status, attempts, result, error, payload)] = _requests(db, shop_id)
    assert (topic, status, attempts, error) == ("customers/redact", "completed", 1, None)
    assert result["webhook_events_redacted"] == 4  # her checkout, her order, the request itself, WhatsApp
    assert result["polled_records_redacted"] == 1
    assert payload["customer"] == {"id": AYSE["id"], "email": None, "phone": None}

    after = _payloads(db, shop_id)
    for personal in ("Ayşe", "Yılmaz", "ayse.yilmaz@example.com", _DIGITS, "Kapıya"):
        assert personal.lower() not in after.lower(), personal
    # The other customer is untouched, and so is Ayşe's cart in the other (WooCommerce) shop.
    assert OTHER["email"] in after
    assert AYSE["email"] in _payloads(db, shops.woocommerce.id)

    # Facts stay: ids, totals, currency, times, line items.
    [checkout] = fetch(
        db, "select payload from raw.webhook_events where shop_id = %s and payload ->> 'id' = '1'", shop_id
    )
    checkout = checkout[0]
    assert checkout["customer"]["id"] == AYSE["id"] and checkout["customer"]["first_name"] is None
    assert (checkout["total_price"], checkout["currency"], checkout["updated_at"]) == (
        "899.90",
        "TRY",
        "2026-11-20T10:05:00+03:00",
    )
    assert checkout["line_items"][0]["title"] == "Linen Shirt"
    assert checkout["customer"]["email_marketing_consent"] == {"state": "subscribed"}
    assert checkout["abandoned_checkout_url"] is None
    assert checkout["billing_address"] is None and checkout["customer"]["default_address"] is None

    [(message,)] = fetch(
        db, "select payload from raw.webhook_events where delivery_id = %s", held_data["wamid"]
    )
    value = message["entry"][0]["changes"][0]["value"]
    assert value["messages"][0]["text"] is None and value["messages"][0]["from"] is None
    assert value["messages"][0]["id"] == held_data["wamid"]
    assert value["contacts"][0]["profile"] is None


def test_customers_redact_matches_the_number_read_in_the_shops_country_and_no_other(client, shops, db):
    """The request's +90 555 ... is a guest checkout's 0555 ... (the shop's country is TR); a
    +1 555 ... with the same last ten digits is someone else's number, and stays."""
    shop_id = shops.shopify.id
    national = f"0555 {_DIGITS[:3]} {_DIGITS[3:5]} {_DIGITS[5:]}"
    american = f"+1 555 {_DIGITS[:3]} {_DIGITS[3:]}"
    for checkout_id, phone in ((11, national), (12, american)):
        guest = shopify_checkout(checkout_id=checkout_id, customer_id=None, email=None, phone=phone)
        _send(client, shops, "checkouts/update", guest)
    # the webhook service stored each number's normal form with the checkout
    assert dict(
        fetch(
            db,
            "select raw, e164 from ops.phone_numbers where shop_id = %s and raw in (%s, %s)",
            shop_id,
            national,
            american,
        )
    ) == {national: AYSE_E164, american: "+1555" + _DIGITS}

    _send(client, shops, "customers/redact", _request(shops))

    phones = dict(
        fetch(
            db,
            "select payload ->> 'id', payload ->> 'phone' from raw.webhook_events "
            "where shop_id = %s and topic = 'checkouts/update'",
            shop_id,
        )
    )
    assert phones == {"11": None, "12": american}
    assert fetch(
        db,
        "select raw from ops.phone_numbers where shop_id = %s and raw in (%s, %s)",
        shop_id,
        national,
        american,
    ) == [(american,)]


def test_customers_data_request(client, shops, db, held_data):
    shop_id = shops.shopify.id
    _send(
        client,
        shops,
        "customers/data_request",
        _request(shops, orders_requested=[88001], data_request={"id": 9999}),
    )
    [(topic, status, *_rest)] = _requests(db, shop_id)
    assert (topic, status) == ("customers/data_request", "completed")
    [(customer_id, export)] = fetch(
        db, "select customer_id, export from ops.data_exports where shop_id = %s", shop_id
    )
    assert customer_id == str(AYSE["id"])
    events = export["webhook_events"]
    assert sorted(e["topic"] for e in events) == ["checkouts/update", "messages", "orders/create"]
    assert {e["payload"].get("id") for e in events if e["topic"] != "messages"} == {1, 88001}
    assert [r["record_id"] for r in export["polled_records"]] == [str(AYSE["id"])]
    assert OTHER["email"] not in json.dumps(export)
    # A data request changes nothing it reads.
    assert "Ayşe" in _payloads(db, shop_id)

    # Redacting her afterwards deletes the export too.
    _send(client, shops, "customers/redact", _request(shops))
    assert fetch(db, "select count(*) from ops.data_exports where shop_id = %s", shop_id) == [(0,)]


def test_shop_redact(client, shops, db, held_data):
    shop_id = shops.shopify.id
    _send(client, shops, "customers/data_request", _request(shops))
    _send(client, shops, "shop/redact", {"shop_id": 954889, "shop_domain": shops.shopify.domain})
    assert fetch(db, "select count(*) from raw.webhook_events where shop_id = %s", shop_id) == [(0,)]
    assert fetch(db, "select count(*) from raw.polled_records where shop_id = %s", shop_id) == [(0,)]
    assert fetch(db, "select count(*) from ops.data_exports where shop_id = %s", shop_id) == [(0,)]
    statuses = [(r[0], r[1]) for r in _requests(db, shop_id)]
    assert statuses == [("customers/data_request", "completed"), ("shop/redact", "completed")]
    # The audit trail keeps no personal data; other shops keep theirs.
    assert "example.com" not in json.dumps([r[5] for r in _requests(db, shop_id)])
    assert fetch(db, "select count(*) from raw.webhook_events where shop_id = %s", shops.woocommerce.id) == [
        (1,)
    ]


def test_repeated_request_is_processed_once(client, shops, db, held_data):
    shop_id = shops.shopify.id
    _send(client, shops, "customers/redact", _request(shops), delivery_id="gdpr-1")
    answer = _send(client, shops, "customers/redact", _request(shops), delivery_id="gdpr-1")
    assert answer.json()["status"] == "duplicate"
    assert [(r[1], r[2]) for r in _requests(db, shop_id)] == [("completed", 1)]


def test_failed_request_is_retried_on_redelivery(client, shops, db):
    shop_id = shops.shopify.id
    # Names no customer: recorded as failed, with the reason.
    _send(client, shops, "customers/redact", {"shop_id": 1, "customer": {}}, delivery_id="gdpr-bad")
    [(_, status, attempts, _, error, _)] = _requests(db, shop_id)
    assert (status, attempts) == ("failed", 1) and "no customer" in error
    _send(client, shops, "customers/redact", {"shop_id": 1, "customer": {}}, delivery_id="gdpr-bad")
    [(_, status, attempts, _, _, _)] = _requests(db, shop_id)
    assert (status, attempts) == ("failed", 2)


def test_privacy_topics_of_other_platforms_are_plain_events(client, shops, db):
    _send(client, shops, "customers/redact", {"customer": AYSE}, platform="woocommerce")
    assert _requests(db, shops.woocommerce.id) == []


def test_jsonb_redact_keeps_facts(db):
    [(redacted,)] = fetch(
        db,
        "select ops.jsonb_redact(%s::jsonb, array['email','billing'])",
        json.dumps(
            {
                "email": "a@b.c",
                "billing": {"city": "x"},
                "items": [{"email": "d@e.f", "price": 1}],
                "total": "9.5",
                "empty": {},
                "list": [],
            }
        ),
    )
    assert redacted == {
        "email": None,
        "billing": None,
        "items": [{"email": None, "price": 1}],
        "total": "9.5",
        "empty": {},
        "list": [],
    }


# -- ops.quarantine: polled records that failed validation, kept verbatim with personal data ------


def _quarantined(db, shop_id: str, entity: str, record_id: str, payload: dict, reasons: list[str]) -> None:
    now = datetime.now(UTC)
    fetch(
        db,
        "insert into ops.quarantine (platform, shop_id, entity, record_id, record_updated_at, reasons, "
        "payload, interval_end, quarantined_at) values ('shopify', %s, %s, %s, %s, %s, %s, %s, %s) "
        "returning 1",
        shop_id,
        entity,
        record_id,
        now,
        reasons,
        json.dumps(payload, ensure_ascii=False),
        now,
        now,
    )


def _quarantine(db, shop_id: str) -> list[tuple]:
    return fetch(
        db,
        "select entity, record_id, reasons, payload from ops.quarantine where shop_id = %s "
        "order by quarantine_id",
        shop_id,
    )


@pytest.fixture
def quarantined(shops, db):
    """Ayşe's checkout quarantined for a bad phone, two versions of her customer record that
    differ only in an invalid phone, and another customer's checkout with a bad currency."""
    shop_id = shops.shopify.id
    checkout = shopify_checkout(checkout_id=11, customer_id=AYSE["id"], email=AYSE["email"], phone="0555")
    _quarantined(db, shop_id, "cart", "11", checkout, ["phone_e164"])
    for bad_phone in ("0555 12", "0555 34"):
        customer = {
            "id": AYSE["id"],
            "email": None,
            "phone": bad_phone,
            "first_name": "Ayşe",
            "last_name": "Yılmaz",
            "updated_at": "2026-11-20T00:00:00Z",
        }
        _quarantined(db, shop_id, "customer", str(AYSE["id"]), customer, ["phone_e164"])
    other = shopify_checkout(
        checkout_id=12,
        customer_id=OTHER["id"],
        email=OTHER["email"],
        phone=OTHER["phone"],
        first_name="Zeynep",
        last_name="Demir",
    )
    _quarantined(db, shop_id, "cart", "12", {**other, "currency": "TL"}, ["currency_iso_4217"])
    # The same customer's checkout quarantined in another shop is not this shop's to erase.
    _quarantined(db, shops.woocommerce.id, "cart", "11", checkout, ["phone_e164"])


def test_customers_redact_covers_quarantine(client, shops, db, quarantined):
    shop_id = shops.shopify.id
    _send(client, shops, "customers/data_request", _request(shops))
    [(export,)] = fetch(db, "select export from ops.data_exports where shop_id = %s", shop_id)
    assert sorted(r["record_id"] for r in export["quarantined_records"]) == [
        "11",
        str(AYSE["id"]),
        str(AYSE["id"]),
    ]
    assert export["quarantined_records"][0]["reasons"] == ["phone_e164"]

    _send(client, shops, "customers/redact", _request(shops))

    [*_, (topic, status, _, result, error, _)] = _requests(db, shop_id)
    assert (topic, status, error) == ("customers/redact", "completed", None)
    # Her checkout and one customer version redacted; the other version became its twin.
    assert (result["quarantine_redacted"], result["quarantine_merged"]) == (2, 1)
    rows = _quarantine(db, shop_id)
    text = json.dumps([r[3] for r in rows if r[:2] != ("cart", "12")], ensure_ascii=False)
    for personal in ("Ayşe", "Yılmaz", AYSE["email"], "Bağdat", "0555 12", "0555 34", "/recover"):
        assert personal not in text, personal
    by_record = {(entity, record_id): (reasons, payload) for entity, record_id, reasons, payload in rows}
    assert len(rows) == 3 and len(by_record) == 3
    # Facts stay, so the quarantine report still adds up.
    reasons, checkout = by_record[("cart", "11")]
    assert reasons == ["phone_e164"]
    assert (checkout["id"], checkout["total_price"], checkout["currency"]) == (11, "899.90", "TRY")
    assert checkout["customer"]["id"] == AYSE["id"] and checkout["customer"]["email"] is None
    assert checkout["line_items"][0]["title"] == "Linen Shirt"
    _, customer = by_record[("customer", str(AYSE["id"]))]
    assert customer["first_name"] is None and customer["updated_at"] == "2026-11-20T00:00:00Z"
    # The other customer is untouched, and so is the other shop's row.
    _, other = by_record[("cart", "12")]
    assert other["email"] == OTHER["email"] and other["customer"]["first_name"] == "Zeynep"
    [(_, _, _, elsewhere)] = _quarantine(db, shops.woocommerce.id)
    assert elsewhere["email"] == AYSE["email"]

    # A repeated redaction of the same customer changes nothing more and does not fail.
    _send(client, shops, "customers/redact", _request(shops))
    assert _requests(db, shop_id)[-1][1] == "completed"
    assert _quarantine(db, shop_id) == rows


def test_shop_redact_deletes_quarantine_and_polling_bookkeeping(client, shops, db, quarantined):
    shop_id = shops.shopify.id
    now = datetime.now(UTC)
    fetch(
        db,
        "insert into ops.ingest_watermarks (shop_id, entity, watermark, updated_at) "
        "values (%s, 'cart', %s, %s) returning 1",
        shop_id,
        now,
        now,
    )
    fetch(
        db,
        "insert into ops.validation_runs (shop_id, entity, interval_end, platform, fetched, loaded, "
        "unchanged, quarantined, failures, finished_at) "
        "values (%s, 'cart', %s, 'shopify', 4, 0, 0, 4, '{}', %s) returning 1",
        shop_id,
        now,
        now,
    )
    _send(client, shops, "shop/redact", {"shop_id": 954889, "shop_domain": shops.shopify.domain})

    [(_, status, _, result, _, _)] = _requests(db, shop_id)
    assert status == "completed" and result["ops.quarantine_deleted"] == 4
    for table in ("ops.quarantine", "ops.ingest_watermarks", "ops.validation_runs"):
        assert fetch(db, f"select count(*) from {table} where shop_id = %s", shop_id) == [(0,)], table
    assert len(_quarantine(db, shops.woocommerce.id)) == 1


def _message(db, shop_id: str, recipient: str, channel: str) -> str:
    plan_key = uuid.uuid4().hex
    now = datetime.now(UTC)
    with db.cursor() as cur:
        cur.execute(
            """
            insert into ops.recovery_outbox (plan_key, cart_key, shop_id, platform, stage, channel,
                template, status, planned_due_at, due_at, recipient, cart_url, rendered_text,
                coupon_code, provider_response, sent_at, created_at, updated_at)
            values (%s, %s, %s, 'shopify', 1, %s, 'cart_reminder_gentle_tr', 'sent', %s, %s, %s,
                'https://shop.example/recover/1', 'Merhaba Ayşe, sepetindeki Keten Gömlek...',
                'CRABC', '{"messages": [{"id": "wamid.x"}]}', %s, %s, %s)
            """,
            (plan_key, plan_key, shop_id, channel, now, now, recipient, now, now, now),
        )
    db.commit()
    return plan_key


def test_customers_redact_and_data_request_cover_the_messages_sent(client, shops, db):
    """What dispatch holds about her (the messages and their addresses, her open conversation)
    is exported on request and erased by customers/redact; the other customer's stays."""
    shop_id = shops.shopify.id
    hers = [
        _message(db, shop_id, AYSE_E164, "whatsapp"),
        _message(db, shop_id, AYSE["email"].lower(), "email"),
    ]
    other = _message(db, shop_id, OTHER["email"], "email")
    with db.cursor() as cur:
        cur.execute(
            "insert into ops.conversations (channel, address, last_inbound_at, last_message_id) "
            "values ('whatsapp', %s, now(), 'wamid.in') on conflict do nothing",
            (AYSE_E164,),
        )
    db.commit()

    _send(client, shops, "customers/data_request", _request(shops))
    [(export,)] = fetch(db, "select export from ops.data_exports where shop_id = %s", shop_id)
    assert sorted(m["recipient"] for m in export["recovery_messages"]) == sorted(
        [AYSE_E164, AYSE["email"].lower()]
    )
    assert all("Keten Gömlek" in m["rendered_text"] for m in export["recovery_messages"])

    _send(client, shops, "customers/redact", _request(shops))
    rows = dict(
        (key, rest)
        for key, *rest in fetch(
            db,
            "select plan_key, recipient, rendered_text, provider_response, cart_url, status, coupon_code "
            "from ops.recovery_outbox where plan_key = any(%s)",
            [*hers, other],
        )
    )
    for key in hers:
        assert rows[key] == [None, None, None, None, "sent", "CRABC"]  # the facts stay for measurement
    assert rows[other][0] == OTHER["email"]
    assert fetch(db, "select count(*) from ops.conversations where address = %s", AYSE_E164) == [(0,)]
    [(_t, _s, _a, result, _e, _p)] = [r for r in _requests(db, shop_id) if r[0] == "customers/redact"]
    assert (result["recovery_messages_redacted"], result["conversations_deleted"]) == (2, 1)
