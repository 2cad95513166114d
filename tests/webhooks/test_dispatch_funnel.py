"""The WhatsApp side of dispatch: signed status and message webhooks settle ops.recovery_outbox,
ops.conversations and ops.consent_revocations, through the app, in the delivery's transaction.

Outbox rows are written here with plain SQL, as the dispatcher leaves them (sent, or sending or
unknown after a crash); the webhooks are Meta's wire format (statuses with
``biz_opaque_callback_data``, ``errors[]``, ``conversation`` and ``pricing``; text messages).
"""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from webhook_helpers import WHATSAPP_APP_SECRET, dumps, fetch, hex_hmac

from cart_recovery.dispatch import consent

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
STOP_PROMOTIONS_TITLE = (
    "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages "
    "on WhatsApp from your business"
)


def _unix(at: datetime) -> str:
    return str(int(at.timestamp()))


def _phone() -> str:
    return "+90555" + "".join(secrets.choice("0123456789") for _ in range(7))


def _wamid() -> str:
    return "wamid.HBgM" + uuid.uuid4().hex.upper()


def insert_outbox(db, **values) -> str:
    """One outbox row as the dispatcher writes it (defaults: a stage-1 WhatsApp message, sent at T0)."""
    plan_key = values.pop("plan_key", f"plan-{uuid.uuid4().hex}")
    row = {
        "plan_key": plan_key,
        "cart_key": f"cart-{uuid.uuid4().hex[:12]}",
        "customer_key": f"cust-{uuid.uuid4().hex[:8]}",
        "shop_id": "anatolia",
        "platform": "shopify",
        "stage": 1,
        "channel": "whatsapp",
        "template": "cart_reminder_gentle_tr",
        "language": "tr",
        "status": "sent",
        "planned_due_at": T0 - timedelta(minutes=1),
        "due_at": T0 - timedelta(minutes=1),
        "attempts": 1,
        "recipient": _phone(),
        "cart_url": "https://anatolia.myshopify.com/checkouts/c1/recover?key=abc",
        "provider_message_id": _wamid(),
        "sent_at": T0,
        "created_at": T0 - timedelta(minutes=1),
        "updated_at": T0,
        **values,
    }
    with db.cursor() as cur:
        cur.execute(
            f"insert into ops.recovery_outbox ({', '.join(row)}) values ({', '.join(['%s'] * len(row))})",
            list(row.values()),
        )
    return plan_key


def outbox(db, plan_key: str) -> dict:
    with db.cursor() as cur:
        cur.execute(
            "select status, provider_message_id, sent_at, delivered_at, read_at, failed_at, error_code, "
            "error, replied_at, clicked_at, updated_at from ops.recovery_outbox where plan_key = %s",
            (plan_key,),
        )
        names = [d.name for d in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))


def revocations(db, address: str) -> list[tuple]:
    return fetch(
        db,
        "select channel, address, shop_id, source, revoked_at, detail from ops.consent_revocations "
        "where address = %s order by revocation_id",
        address,
    )


def status(
    wamid: str,
    state: str,
    at: datetime,
    recipient: str,
    *,
    plan_key: str | None = None,
    error: tuple[int, str, str] | None = None,
) -> dict:
    """One ``statuses[]`` item as Meta sends it."""
    item: dict = {"id": wamid, "status": state, "timestamp": _unix(at), "recipient_id": recipient.lstrip("+")}
    if plan_key is not None:
        item["biz_opaque_callback_data"] = plan_key
    if state in ("sent", "delivered", "read"):
        item["conversation"] = {"id": uuid.uuid4().hex, "origin": {"type": "marketing"}}
        item["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "marketing"}
    if error is not None:
        code, title, details = error
        item["errors"] = [
            {
                "code": code,
                "title": title,
                "message": title,
                "error_data": {"details": details},
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
            }
        ]
    return item


def message(wamid: str, sender: str, at: datetime, text: str) -> dict:
    """One ``messages[]`` item (a text message) as Meta sends it."""
    return {
        "from": sender.lstrip("+"),
        "id": wamid,
        "timestamp": _unix(at),
        "type": "text",
        "text": {"body": text},
    }


def webhook(*, statuses: list[dict] = (), messages: list[dict] = ()) -> bytes:
    value: dict = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "908501234567", "phone_number_id": "1234567890"},
    }
    if messages:
        value["contacts"] = [{"profile": {"name": "Ayşe"}, "wa_id": m["from"]} for m in messages]
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}],
        }
    )


def post(client, body: bytes) -> dict:
    answer = client.post(
        "/webhooks/whatsapp",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": hex_hmac(WHATSAPP_APP_SECRET, body),
        },
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


# -- statuses ----------------------------------------------------------------------------------------


def test_statuses_in_order_fill_the_funnel(client, db):
    wamid, phone = _wamid(), _phone()
    plan_key = insert_outbox(db, provider_message_id=wamid, recipient=phone)
    for state, seconds in (("sent", 2), ("delivered", 30), ("read", 300)):
        post(
            client,
            webhook(
                statuses=[status(wamid, state, T0 + timedelta(seconds=seconds), phone, plan_key=plan_key)]
            ),
        )
    row = outbox(db, plan_key)
    assert row["status"] == "read"
    assert row["sent_at"] == T0  # the dispatcher's, not the callback's
    assert row["delivered_at"] == T0 + timedelta(seconds=30)
    assert row["read_at"] == T0 + timedelta(seconds=300)
    assert row["failed_at"] is None and row["error_code"] is None


def test_statuses_out_of_order_only_move_forward(client, db):
    wamid, phone = _wamid(), _phone()
    plan_key = insert_outbox(db, provider_message_id=wamid, recipient=phone)
    read, delivered, sent = (
        status(wamid, "read", T0 + timedelta(minutes=5), phone, plan_key=plan_key),
        status(wamid, "delivered", T0 + timedelta(minutes=1), phone, plan_key=plan_key),
        status(wamid, "sent", T0 + timedelta(seconds=1), phone, plan_key=plan_key),
    )
    post(client, webhook(statuses=[read]))
    assert outbox(db, plan_key)["status"] == "read"
    post(client, webhook(statuses=[delivered]))
    post(client, webhook(statuses=[sent]))
    row = outbox(db, plan_key)
    assert row["status"] == "read"
    assert row["read_at"] == T0 + timedelta(minutes=5)
    assert row["delivered_at"] == T0 + timedelta(minutes=1)
    assert row["sent_at"] == T0


def test_several_statuses_of_one_message_in_one_post(client, db):
    wamid, phone = _wamid(), _phone()
    plan_key = insert_outbox(db, provider_message_id=wamid, recipient=phone)
    answer = post(
        client,
        webhook(
            statuses=[
                status(wamid, "read", T0 + timedelta(minutes=2), phone, plan_key=plan_key),
                status(wamid, "delivered", T0 + timedelta(minutes=1), phone, plan_key=plan_key),
            ]
        ),
    )
    assert answer == {"status": "stored", "deliveries": 2, "stored": 2}
    row = outbox(db, plan_key)
    assert (row["status"], row["delivered_at"], row["read_at"]) == (
        "read",
        T0 + timedelta(minutes=1),
        T0 + timedelta(minutes=2),
    )


def test_a_repeated_delivery_changes_nothing_the_second_time(client, db):
    wamid, phone = _wamid(), _phone()
    plan_key = insert_outbox(db, provider_message_id=wamid, recipient=phone)
    body = webhook(
        statuses=[status(wamid, "delivered", T0 + timedelta(seconds=40), phone, plan_key=plan_key)]
    )
    assert post(client, body)["stored"] == 1
    assert outbox(db, plan_key)["delivered_at"] == T0 + timedelta(seconds=40)
    # Undo the effect by hand: Meta's retry (same delivery id) must not apply it again.
    with db.cursor() as cur:
        cur.execute(
            "update ops.recovery_outbox set delivered_at = null, status = 'sent' where plan_key = %s",
            (plan_key,),
        )
    assert post(client, body) == {"status": "duplicate", "deliveries": 1, "stored": 0}
    row = outbox(db, plan_key)
    assert row["delivered_at"] is None and row["status"] == "sent"


def test_status_matched_by_callback_data_for_a_row_left_unknown(client, db):
    """A crash left the row `unknown` without Meta's message id: the plan_key echoed back in
    biz_opaque_callback_data finds it, and the row gets the id."""
    wamid, phone = _wamid(), _phone()
    plan_key = insert_outbox(db, status="unknown", provider_message_id=None, sent_at=None, recipient=phone)
    post(
        client, webhook(statuses=[status(wamid, "sent", T0 + timedelta(seconds=3), phone, plan_key=plan_key)])
    )
    row = outbox(db, plan_key)
    assert row["status"] == "sent"
    assert row["provider_message_id"] == wamid
    assert row["sent_at"] == T0 + timedelta(seconds=3)  # the callback fills what the dispatcher never wrote
    # Later statuses match on the id, with or without the callback data.
    delivered = status(wamid, "delivered", T0 + timedelta(seconds=9), phone)
    post(client, webhook(statuses=[delivered]))
    assert outbox(db, plan_key)["status"] == "delivered"


def test_callback_data_never_takes_over_a_row_with_another_message_id(client, db):
    phone = _phone()
    own = _wamid()
    plan_key = insert_outbox(db, provider_message_id=own, recipient=phone)
    post(
        client,
        webhook(
            statuses=[status(_wamid(), "delivered", T0 + timedelta(seconds=5), phone, plan_key=plan_key)]
        ),
    )
    row = outbox(db, plan_key)
    assert row["provider_message_id"] == own
    assert row["delivered_at"] is None and row["status"] == "sent"


def test_a_status_for_a_sending_row_fills_sent_at_and_status(client, db):
    """Meta's callback can beat the dispatcher recording Meta's answer: the row is still `sending`."""
    wamid, phone = _wamid(), _phone()
    plan_key = insert_outbox(db, status="sending", provider_message_id=None, sent_at=None, recipient=phone)
    post(
        client,
        webhook(statuses=[status(wamid, "delivered", T0 + timedelta(seconds=4), phone, plan_key=plan_key)]),
    )
    row = outbox(db, plan_key)
    assert (row["status"], row["provider_message_id"], row["delivered_at"], row["sent_at"]) == (
        "delivered",
        wamid,
        T0 + timedelta(seconds=4),
        None,  # no `sent` callback yet: nothing invented
    )


def test_unknown_message_ids_are_ignored(client, db):
    phone = _phone()
    plan_key = insert_outbox(db, recipient=phone)
    before = outbox(db, plan_key)
    stray = _wamid()
    answer = post(client, webhook(statuses=[status(stray, "delivered", T0, phone, plan_key="no-such-plan")]))
    assert answer["stored"] == 1  # stored raw (Meta is answered 200 and stops), nothing else
    assert outbox(db, plan_key) == before
    assert fetch(db, "select count(*) from ops.recovery_outbox where provider_message_id = %s", stray) == [
        (0,)
    ]


def test_failed_after_sent_fails_and_keeps_the_error(client, db):
    wamid, phone = _wamid(), _phone()
    plan_key = insert_outbox(db, provider_message_id=wamid, recipient=phone)
    failed = status(
        wamid,
        "failed",
        T0 + timedelta(minutes=1),
        phone,
        plan_key=plan_key,
        error=(
            131049,
            "This message was not delivered to maintain healthy ecosystem engagement.",
            "ecosystem",
        ),
    )
    post(client, webhook(statuses=[failed]))
    row = outbox(db, plan_key)
    assert row["status"] == "failed"
    assert row["failed_at"] == T0 + timedelta(minutes=1)
    assert row["error_code"] == "131049"
    assert (
        row["error"] == "This message was not delivered to maintain healthy ecosystem engagement.: ecosystem"
    )
    # A late `sent` does not undo the failure.
    post(
        client, webhook(statuses=[status(wamid, "sent", T0 + timedelta(seconds=1), phone, plan_key=plan_key)])
    )
    assert outbox(db, plan_key)["status"] == "failed"
    # No consent revoked for an error other than 131050.
    assert revocations(db, phone) == []


def test_delivered_wins_over_failed_in_either_order(client, db):
    phone = _phone()
    error = (131026, "Message undeliverable", "receiver incapable")
    first, second = _wamid(), _wamid()
    failed_first = insert_outbox(db, provider_message_id=first, recipient=phone)
    post(client, webhook(statuses=[status(first, "failed", T0 + timedelta(minutes=2), phone, error=error)]))
    post(client, webhook(statuses=[status(first, "delivered", T0 + timedelta(minutes=1), phone)]))
    row = outbox(db, failed_first)
    assert row["status"] == "delivered"  # it arrived: the person got it
    assert (
        row["failed_at"] == T0 + timedelta(minutes=2) and row["error_code"] == "131026"
    )  # kept for the trace

    delivered_first = insert_outbox(db, provider_message_id=second, recipient=phone)
    post(client, webhook(statuses=[status(second, "read", T0 + timedelta(minutes=1), phone)]))
    post(client, webhook(statuses=[status(second, "failed", T0 + timedelta(minutes=2), phone, error=error)]))
    assert outbox(db, delivered_first)["status"] == "read"


def fallbacks(db, plan_key: str) -> list[dict]:
    """The email rows queued in place of the WhatsApp row ``plan_key``."""
    with db.cursor() as cur:
        cur.execute(
            "select fallback.plan_key, fallback.channel, fallback.status, fallback.reason, fallback.stage, "
            "fallback.due_at, fallback.coupon_code, fallback.coupon_pct, fallback.coupon_expires_at, "
            "fallback.template, fallback.recipient "
            "from ops.recovery_outbox as fallback "
            "join ops.recovery_outbox as failed on failed.outbox_id = fallback.fallback_of "
            "where failed.plan_key = %s",
            (plan_key,),
        )
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@pytest.mark.parametrize(
    "error",
    [
        (131026, "Message undeliverable", "Message Undeliverable."),
        (131047, "Re-engagement message", "More than 24 hours have passed since the recipient last replied."),
    ],
)
def test_failed_131026_or_131047_queues_the_stage_by_email_once(client, db, error):
    wamid, phone = _wamid(), _phone()
    expires = T0 + timedelta(hours=48)
    plan_key = insert_outbox(
        db,
        provider_message_id=wamid,
        recipient=phone,
        stage=2,
        template="cart_reminder_coupon_tr",
        coupon_code="GERI-7Q2M",
        coupon_pct=10,
        coupon_free_shipping=False,
        coupon_expires_at=expires,
    )
    failed_at = T0 + timedelta(minutes=2)
    first = status(wamid, "failed", failed_at, phone, plan_key=plan_key, error=error)
    post(client, webhook(statuses=[first]))
    # Meta repeats it (another delivery of the same status, a second later)
    again = status(wamid, "failed", failed_at + timedelta(seconds=1), phone, plan_key=plan_key, error=error)
    post(client, webhook(statuses=[again]))
    assert outbox(db, plan_key)["status"] == "failed"
    [queued] = fallbacks(db, plan_key)
    assert queued == {
        "plan_key": f"{plan_key}:email",
        "channel": "email",
        "status": "queued",
        "reason": None,
        "stage": 2,
        "due_at": failed_at,
        "coupon_code": "GERI-7Q2M",
        "coupon_pct": 10,
        "coupon_expires_at": expires,
        "template": "cart_reminder_coupon_tr",
        "recipient": None,  # the claim fills in the email, after the guards
    }


def test_other_failures_and_failed_emails_queue_nothing(client, db):
    phone = _phone()
    ecosystem = (131049, "This message was not delivered to maintain healthy ecosystem engagement.", "x")
    undeliverable = (131026, "Message undeliverable", "Message Undeliverable.")
    wamid = _wamid()
    plan_key = insert_outbox(db, provider_message_id=wamid, recipient=phone)
    post(client, webhook(statuses=[status(wamid, "failed", T0, phone, error=ecosystem)]))
    email_id = f"<{uuid.uuid4().hex}@mail.example>"
    email_row = insert_outbox(db, channel="email", recipient="ayse@example.com", provider_message_id=email_id)
    post(client, webhook(statuses=[status(email_id, "failed", T0, phone, error=undeliverable)]))
    assert fallbacks(db, plan_key) == [] and fallbacks(db, email_row) == []


def test_delivered_after_failed_withdraws_the_queued_email(client, db):
    wamid, phone = _wamid(), _phone()
    plan_key = insert_outbox(db, provider_message_id=wamid, recipient=phone)
    error = (131026, "Message undeliverable", "Message Undeliverable.")
    post(client, webhook(statuses=[status(wamid, "failed", T0 + timedelta(minutes=2), phone, error=error)]))
    assert [row["status"] for row in fallbacks(db, plan_key)] == ["queued"]
    post(client, webhook(statuses=[status(wamid, "delivered", T0 + timedelta(minutes=1), phone)]))
    assert outbox(db, plan_key)["status"] == "delivered"
    [withdrawn] = fallbacks(db, plan_key)
    assert (withdrawn["status"], withdrawn["reason"]) == ("suppressed", "whatsapp_delivered")


def test_failed_131050_revokes_whatsapp_consent(client, db):
    wamid, phone = _wamid(), _phone()
    plan_key = insert_outbox(db, provider_message_id=wamid, recipient=phone)
    at = T0 + timedelta(seconds=20)
    failed = status(
        wamid, "failed", at, phone, plan_key=plan_key, error=(131050, STOP_PROMOTIONS_TITLE, "stop")
    )
    post(client, webhook(statuses=[failed]))
    row = outbox(db, plan_key)
    assert (row["status"], row["error_code"]) == ("failed", "131050")
    [(channel, address, shop_id, source, revoked_at, detail)] = revocations(db, phone)
    assert (channel, address, shop_id, source, revoked_at) == ("whatsapp", phone, None, "whatsapp_131050", at)
    assert detail["message_id"] == wamid and detail["plan_key"] == plan_key
    with db.cursor() as cur:
        assert consent.revoked(cur, "whatsapp", phone, at) is True
        assert consent.revoked(cur, "whatsapp", phone.lstrip("+"), at + timedelta(days=1), shop_id="anatolia")
        assert consent.revoked(cur, "whatsapp", phone, at - timedelta(seconds=1)) is False


def test_131050_of_a_message_no_row_knows_still_revokes(client, db):
    phone = _phone()
    failed = status(_wamid(), "failed", T0, phone, error=(131050, STOP_PROMOTIONS_TITLE, "stop"))
    post(client, webhook(statuses=[failed]))
    assert [r[3] for r in revocations(db, phone)] == ["whatsapp_131050"]


# -- inbound messages ---------------------------------------------------------------------------------


def test_inbound_stop_revokes_at_once(client, db):
    phone, wamid = _phone(), _wamid()
    insert_outbox(db, recipient=phone)
    at = T0 + timedelta(minutes=3)
    post(client, webhook(messages=[message(wamid, phone, at, "DUR lütfen")]))
    [(channel, address, shop_id, source, revoked_at, detail)] = revocations(db, phone)
    assert (channel, address, shop_id, source, revoked_at) == ("whatsapp", phone, None, "whatsapp_stop", at)
    assert detail == {"message_id": wamid, "type": "text"}
    assert fetch(db, "select last_message_id from ops.conversations where address = %s", phone) == [(wamid,)]
    # A retry of the same message, and a second STOP, add no second revocation.
    post(client, webhook(messages=[message(wamid, phone, at, "DUR lütfen")]))
    post(client, webhook(messages=[message(_wamid(), phone, at + timedelta(minutes=1), "STOP")]))
    assert len(revocations(db, phone)) == 1


def test_inbound_message_opens_the_conversation_only(client, db):
    phone, wamid = _phone(), _wamid()
    at = T0 + timedelta(minutes=10)
    post(
        client,
        webhook(messages=[message(wamid, phone, at, "Merhaba, kargo ücreti ne kadar? Dur bir bakayım")]),
    )
    assert fetch(
        db,
        "select channel, last_inbound_at, last_message_id from ops.conversations where address = %s",
        phone,
    ) == [("whatsapp", at, wamid)]
    assert revocations(db, phone) == []


def test_conversation_keeps_the_newest_message(client, db):
    phone, newer, older = _phone(), _wamid(), _wamid()
    post(client, webhook(messages=[message(newer, phone, T0 + timedelta(minutes=5), "size M?")]))
    post(client, webhook(messages=[message(older, phone, T0 + timedelta(minutes=1), "hello")]))  # late
    assert fetch(
        db, "select last_inbound_at, last_message_id from ops.conversations where address = %s", phone
    ) == [(T0 + timedelta(minutes=5), newer)]
    newest = _wamid()
    post(client, webhook(messages=[message(newest, phone, T0 + timedelta(minutes=9), "thanks")]))
    assert fetch(db, "select last_message_id from ops.conversations where address = %s", phone) == [(newest,)]


def test_a_reply_marks_the_newest_message_sent_before_it(client, db):
    phone = _phone()
    stage_1 = insert_outbox(db, recipient=phone, stage=1, sent_at=T0)
    stage_2 = insert_outbox(db, recipient=phone, stage=2, sent_at=T0 + timedelta(hours=4))
    stage_3 = insert_outbox(db, recipient=phone, stage=3, sent_at=T0 + timedelta(hours=24))
    someone_else = insert_outbox(db, recipient=_phone(), stage=2, sent_at=T0 + timedelta(hours=4))
    email = insert_outbox(
        db,
        channel="email",
        recipient="ayse@example.com",
        provider_message_id=None,
        sent_at=T0 + timedelta(hours=5),
    )
    reply_at = T0 + timedelta(hours=6)
    post(client, webhook(messages=[message(_wamid(), phone, reply_at, "Beden tablosu var mı?")]))
    assert outbox(db, stage_2)["replied_at"] == reply_at
    assert outbox(db, stage_2)["updated_at"] > T0  # the request's time
    for untouched in (stage_1, stage_3, someone_else, email):
        assert outbox(db, untouched)["replied_at"] is None
    # A later reply keeps the first; an earlier one delivered late moves it back.
    post(client, webhook(messages=[message(_wamid(), phone, reply_at + timedelta(minutes=5), "?")]))
    assert outbox(db, stage_2)["replied_at"] == reply_at
    post(client, webhook(messages=[message(_wamid(), phone, reply_at - timedelta(minutes=30), "hi")]))
    assert outbox(db, stage_2)["replied_at"] == reply_at - timedelta(minutes=30)


def test_a_quick_reply_button_can_stop(client, db):
    phone = _phone()
    tapped = {
        "context": {"from": "908501234567", "id": _wamid()},
        "from": phone.lstrip("+"),
        "id": _wamid(),
        "timestamp": _unix(T0),
        "type": "button",
        "button": {"text": "Stop", "payload": "STOP_PROMOTIONS"},
    }
    post(client, webhook(messages=[tapped]))
    assert [r[3] for r in revocations(db, phone)] == ["whatsapp_stop"]


def test_effects_of_one_delivery_roll_back_alone(database, db):
    """An effect PostgreSQL refuses is rolled back alone (its savepoint); every event is still
    stored and the other events' effects commit with them."""
    from cart_recovery.webhooks.store import EventStore, WebhookEvent

    tag = uuid.uuid4().hex
    events = [
        WebhookEvent("whatsapp", "", "messages", f"wamid.{tag}.{n}", T0, json.dumps({"n": n}))
        for n in range(3)
    ]
    conversation = {0: _phone(), 1: _phone(), 2: _phone()}

    def on_new(cur, event):
        n = json.loads(event.payload)["n"]
        cur.execute(
            "insert into ops.conversations values ('whatsapp', %s, %s, %s)",
            (conversation[n], T0, event.delivery_id),
        )
        if n == 1:
            cur.execute("select 'not a number'::integer")  # DataError, after a write of its own

    store = EventStore(database.url, max_connections=1)
    try:
        assert store.insert_then(events, on_new) == 3
        assert store.insert_then(events, on_new) == 0  # duplicates: on_new not called again
    finally:
        store.close()
    assert fetch(
        db, "select count(*) from raw.webhook_events where delivery_id like %s", f"wamid.{tag}.%"
    ) == [(3,)]
    stored = fetch(
        db, "select address from ops.conversations where address = any(%s)", list(conversation.values())
    )
    assert sorted(a for (a,) in stored) == sorted([conversation[0], conversation[2]])


# -- revoke() and revoked() --------------------------------------------------------------------------


@pytest.fixture
def cur(db):
    with db.cursor() as cursor:
        yield cursor


def test_revoke_is_idempotent_and_keeps_the_earliest_time(cur, db):
    email = f"Ayse.{uuid.uuid4().hex[:6]}@Example.com"
    address = email.lower()
    assert consent.revoke(
        cur, "email", email, "email_unsubscribe", T0, {"plan_key": "p1"}, shop_id="anatolia"
    )
    assert not consent.revoke(
        cur, "email", address, "email_unsubscribe", T0 + timedelta(hours=1), shop_id="anatolia"
    )
    assert not consent.revoke(
        cur, "email", address, "email_unsubscribe", T0 - timedelta(hours=1), shop_id="anatolia"
    )
    rows = revocations(db, address)
    assert [(r[2], r[3], r[4], r[5]) for r in rows] == [
        ("anatolia", "email_unsubscribe", T0 - timedelta(hours=1), {"plan_key": "p1"})
    ]
    # Another source or another shop is another revocation.
    assert consent.revoke(cur, "email", address, "operator", T0, shop_id="anatolia")
    assert consent.revoke(cur, "email", address, "email_unsubscribe", T0, shop_id="bosphorus")
    assert len(revocations(db, address)) == 3


def test_revoked_scopes_by_shop_and_time(cur):
    email = f"mehmet.{uuid.uuid4().hex[:6]}@example.com"
    consent.revoke(cur, "email", email, "email_unsubscribe", T0, shop_id="anatolia")
    assert consent.revoked(cur, "email", email, T0, shop_id="anatolia")
    assert not consent.revoked(cur, "email", email, T0, shop_id="bosphorus")
    assert consent.revoked(cur, "email", email, T0)  # no shop given: any revocation counts
    assert not consent.revoked(cur, "email", email, T0 - timedelta(microseconds=1))
    assert not consent.revoked(cur, "whatsapp", "+905550000000", T0 + timedelta(days=365))
    phone = _phone()
    consent.revoke(cur, "whatsapp", phone, "whatsapp_stop", T0)  # every shop
    assert consent.revoked(cur, "whatsapp", phone, T0, shop_id="bosphorus")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sms", "+905551234567", "operator", T0), "channel must be one of"),
        (("whatsapp", "not-a-phone", "operator", T0), "not an E.164 phone number"),
        (("whatsapp", "+905551234567", "", T0), "needs its source"),
        (("whatsapp", "+905551234567", "operator", datetime(2026, 11, 20, 9)), "timezone-aware"),
    ],
)
def test_revoke_refuses_bad_input(cur, db, args, message):
    with pytest.raises(ValueError, match=message):
        consent.revoke(cur, *args)
    assert fetch(db, "select count(*) from ops.consent_revocations where address = 'not-a-phone'") == [(0,)]
