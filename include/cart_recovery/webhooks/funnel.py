"""The delivery funnel the webhook service settles: WhatsApp statuses, replies, STOPs, clicks, unsubscribes.

Each WhatsApp delivery (one status or one inbound message, see ``whatsapp.py``) is applied by
:func:`apply_whatsapp_event` in the transaction that stores its ``raw.webhook_events`` row, and only
when that row is new: a retried delivery changes nothing twice.

Statuses (``ops.recovery_outbox``)
----------------------------------
A status is matched on ``provider_message_id`` = the status id; when no row has that id yet (the
dispatcher crashed, or has not recorded Meta's answer yet, and left the row ``sending`` or
``unknown``), on ``plan_key`` = ``biz_opaque_callback_data`` of a WhatsApp row without an id, which
then gets the id. A status of a message no row knows is ignored (logged at debug), never an error:
Meta would retry it forever.

Meta sends statuses out of order and more than once, so each one only ever moves a row forward:

- timestamps: ``delivered_at``, ``read_at``, ``failed_at`` take the status's time when still null
  (the first one wins); ``sent_at`` belongs to the dispatcher (the time Meta accepted the request)
  and takes the callback's ``sent`` time only when still null;
- ``status`` moves only up the order ``queued``/``sending``/``unknown`` < ``sent`` < ``failed`` <
  ``delivered`` < ``read``. So ``failed`` overrides ``sent`` (Meta accepts a message, then fails to
  deliver it: 131050, 131026, 131049...), and is final unless the message is shown to have arrived:
  a ``delivered`` or ``read`` is proof the person got it, whichever order the callbacks came in, so
  it wins over ``failed`` (whose time and error are kept on the row for the trace). Rows that were
  never sent (``suppressed``, ``holdout``, ``expired``) keep their status.
- ``error_code``/``error`` come from the failed status's ``errors[0]``, with the first ``failed_at``.

A failed status with error 131050 (the person tapped "Stop promotions") revokes the recipient's
WhatsApp consent (source ``whatsapp_131050``), matched row or not.

A failed status with 131026 (not on WhatsApp) or 131047 (outside the 24-hour window) that leaves a
WhatsApp row ``failed`` queues the same stage by email: an outbox row of its own, ``fallback_of``
the failed one, keyed ``<plan_key>:email``, due at the failure's time, with the coupon the
WhatsApp message carried. The stage's dispatcher claims it like any row (its guards, email consent
only); a repeated callback finds it there (unique ``fallback_of``) and queues nothing. A
``delivered`` or ``read`` of the WhatsApp message arriving after its ``failed`` suppresses the
email if it is still queued (``whatsapp_delivered``); once claimed, it goes.

Inbound messages
----------------
Each upserts ``ops.conversations`` (the reply guard: the newest message wins), marks
``replied_at`` on the newest outbox row sent to that phone before the message, and a STOP message
(:func:`cart_recovery.dispatch.consent.is_stop_message`) revokes WhatsApp consent at once (source
``whatsapp_stop``). WhatsApp revocations have no shop: one business number serves every shop.

Times come from the payloads (Meta's unix ``timestamp``) and from the caller (``now``: when the
service received the request), never from the clock here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg2.extensions

from cart_recovery.dispatch import consent
from cart_recovery.dispatch.whatsapp import FALLBACK_CODES

log = logging.getLogger(__name__)

STOP_PROMOTIONS_ERROR = "131050"
# Meta took the message but could not deliver it on WhatsApp: try email (dispatch.whatsapp's codes)
FALLBACK_ERRORS = frozenset(str(code) for code in FALLBACK_CODES)

QUEUE_FALLBACK_SQL = """
insert into ops.recovery_outbox (
    plan_key, cart_key, customer_key, shop_id, platform, stage, channel, template, language,
    status, planned_due_at, due_at, coupon_code, coupon_pct, coupon_free_shipping, coupon_expires_at,
    planned_by, fallback_of, created_at, updated_at
)
select
    failed.plan_key || ':email', failed.cart_key, failed.customer_key, failed.shop_id,
    failed.platform, failed.stage, 'email', failed.template, failed.language,
    'queued', failed.planned_due_at, greatest(failed.due_at, %(at)s), failed.coupon_code,
    failed.coupon_pct, failed.coupon_free_shipping, failed.coupon_expires_at,
    failed.planned_by, failed.outbox_id, %(now)s, %(now)s
from ops.recovery_outbox as failed
where failed.outbox_id = %(outbox_id)s
on conflict do nothing
"""

CANCEL_FALLBACK_SQL = """
update ops.recovery_outbox
set status = 'suppressed', reason = 'whatsapp_delivered', updated_at = %(now)s
where fallback_of = %(outbox_id)s and status = 'queued'
"""

# The order a row's status moves in; a status not listed here (never sent) is left alone.
STATUS_RANK = {"queued": 0, "sending": 0, "unknown": 0, "sent": 1, "failed": 2, "delivered": 3, "read": 4}
_TIME_COLUMNS = {"sent": "sent_at", "delivered": "delivered_at", "read": "read_at", "failed": "failed_at"}


@dataclass(frozen=True)
class StatusUpdate:
    """One item of ``statuses[]``."""

    message_id: str
    status: str  # sent | delivered | read | failed
    at: datetime
    recipient: str | None  # E.164, from recipient_id
    callback_data: str | None  # biz_opaque_callback_data: the plan_key the dispatcher sent
    error_code: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class InboundMessage:
    """One item of ``messages[]``."""

    message_id: str
    address: str  # E.164, from ``from``
    at: datetime
    type: str
    text: str | None  # the typed text, or the title of the tapped button


def _unix_time(value: Any, fallback: datetime) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return fallback


def _phone(value: Any) -> str | None:
    try:
        return consent.normalise_address("whatsapp", str(value)) if value else None
    except ValueError:
        return None


def parse_status(item: dict[str, Any], now: datetime) -> StatusUpdate | None:
    """The status, or None when it has no id or a status this funnel does not follow."""
    message_id, status = item.get("id"), item.get("status")
    if not isinstance(message_id, str) or not message_id or status not in _TIME_COLUMNS:
        return None
    error_code = error = None
    errors = item.get("errors")
    if status == "failed" and isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        error_code = str(first["code"]) if first.get("code") is not None else None
        details = (
            first.get("error_data", {}).get("details") if isinstance(first.get("error_data"), dict) else None
        )
        error = ": ".join(str(p) for p in (first.get("title"), details or first.get("message")) if p) or None
    callback = item.get("biz_opaque_callback_data")
    return StatusUpdate(
        message_id=message_id,
        status=status,
        at=_unix_time(item.get("timestamp"), now),
        recipient=_phone(item.get("recipient_id")),
        callback_data=callback if isinstance(callback, str) and callback else None,
        error_code=error_code,
        error=error,
    )


def _message_text(item: dict[str, Any]) -> str | None:
    kind = item.get("type")
    part = item.get(kind) if isinstance(kind, str) else None
    if not isinstance(part, dict):
        return None
    if kind == "text":
        return part.get("body")
    if kind == "button":  # a template's quick-reply button
        return part.get("text") or part.get("payload")
    if kind == "interactive":
        reply = part.get("button_reply") or part.get("list_reply")
        return reply.get("title") if isinstance(reply, dict) else None
    return None


def parse_message(item: dict[str, Any], now: datetime) -> InboundMessage | None:
    """The inbound message, or None without an id or a valid sender number."""
    message_id, address = item.get("id"), _phone(item.get("from"))
    if not isinstance(message_id, str) or not message_id or address is None:
        return None
    text = _message_text(item)
    return InboundMessage(
        message_id=message_id,
        address=address,
        at=_unix_time(item.get("timestamp"), now),
        type=str(item.get("type") or "unknown"),
        text=text if isinstance(text, str) else None,
    )


def next_status(current: str, incoming: str) -> str:
    """The row's status after a callback: only ever forward (see the module docstring)."""
    if current not in STATUS_RANK:
        return current
    return incoming if STATUS_RANK[incoming] > STATUS_RANK[current] else current


# -- applying -----------------------------------------------------------------------------------


def apply_whatsapp_event(cursor: psycopg2.extensions.cursor, topic: str, payload: str, now: datetime) -> None:
    """Apply one stored WhatsApp delivery (the single-item envelope ``whatsapp.split_deliveries``
    made); other topics and items without what the funnel needs are skipped."""
    if topic not in ("statuses", "messages"):
        return
    try:
        items = json.loads(payload)["entry"][0]["changes"][0]["value"][topic]
    except (ValueError, KeyError, IndexError, TypeError):
        log.warning("WhatsApp %s delivery without the expected envelope: skipped", topic)
        return
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        if topic == "statuses":
            status = parse_status(item, now)
            if status is None:
                log.debug("WhatsApp status %r not followed", item.get("status"))
            else:
                apply_status(cursor, status, now)
        else:
            message = parse_message(item, now)
            if message is None:
                log.warning("WhatsApp message without an id or a valid sender: skipped")
            else:
                apply_message(cursor, message, now)


def apply_status(cursor: psycopg2.extensions.cursor, update: StatusUpdate, now: datetime) -> bool:
    """Move the matching outbox row forward; False when no row matches (ignored)."""
    if update.status == "failed" and update.error_code == STOP_PROMOTIONS_ERROR and update.recipient:
        consent.revoke(
            cursor,
            "whatsapp",
            update.recipient,
            "whatsapp_131050",
            update.at,
            {"message_id": update.message_id, "plan_key": update.callback_data, "error": update.error},
        )
    cursor.execute(
        "select outbox_id, channel, status, provider_message_id, sent_at, delivered_at, read_at, failed_at "
        "from ops.recovery_outbox "
        "where provider_message_id = %(id)s "
        "   or (plan_key = %(plan_key)s and provider_message_id is null and channel = 'whatsapp') "
        "order by provider_message_id is not null desc limit 1 for update",
        {"id": update.message_id, "plan_key": update.callback_data},
    )
    row = cursor.fetchone()
    if row is None:
        log.debug("WhatsApp status %s of unknown message %s: ignored", update.status, update.message_id)
        return False
    outbox_id, channel, status, provider_id, *times = row
    current_times = dict(zip(("sent_at", "delivered_at", "read_at", "failed_at"), times, strict=True))
    changes: dict[str, Any] = {}
    if provider_id is None:
        changes["provider_message_id"] = update.message_id
    column = _TIME_COLUMNS[update.status]
    if current_times[column] is None:
        changes[column] = update.at
        if update.status == "failed" and (update.error_code or update.error):
            changes["error_code"] = update.error_code
            changes["error"] = update.error
    new_status = next_status(status, update.status)
    if new_status != status:
        changes["status"] = new_status
    if changes:
        changes["updated_at"] = now
        assignments = ", ".join(f"{name} = %({name})s" for name in changes)
        cursor.execute(
            f"update ops.recovery_outbox set {assignments} where outbox_id = %(outbox_id)s",
            {**changes, "outbox_id": outbox_id},
        )
    if new_status in ("delivered", "read") and channel == "whatsapp":
        # it arrived after all (Meta's statuses come out of order): an email still queued in its
        # place would be a second message
        cursor.execute(CANCEL_FALLBACK_SQL, {"outbox_id": outbox_id, "now": now})
    elif new_status == "failed" and channel == "whatsapp" and update.error_code in FALLBACK_ERRORS:
        cursor.execute(QUEUE_FALLBACK_SQL, {"outbox_id": outbox_id, "at": update.at, "now": now})
        if cursor.rowcount:
            log.info(
                "WhatsApp message %s undeliverable (%s): email queued", update.message_id, update.error_code
            )
    return True


def apply_message(cursor: psycopg2.extensions.cursor, message: InboundMessage, now: datetime) -> None:
    """Open (or refresh) the conversation, mark the reply, honour a STOP."""
    cursor.execute(
        "insert into ops.conversations (channel, address, last_inbound_at, last_message_id) "
        "values ('whatsapp', %s, %s, %s) "
        "on conflict on constraint conversations_pk do update "
        "set last_inbound_at = excluded.last_inbound_at, last_message_id = excluded.last_message_id "
        "where excluded.last_inbound_at > ops.conversations.last_inbound_at",
        (message.address, message.at, message.message_id),
    )
    # The reply belongs to the newest message sent to this phone before it; an earlier reply
    # (delivered late) moves replied_at back.
    cursor.execute(
        "update ops.recovery_outbox set replied_at = least(replied_at, %(at)s), updated_at = %(now)s "
        "where outbox_id = ("
        "    select outbox_id from ops.recovery_outbox "
        "    where recipient = %(address)s and channel = 'whatsapp' "
        "      and sent_at is not null and sent_at <= %(at)s "
        "    order by sent_at desc, outbox_id desc limit 1"
        ") and (replied_at is null or replied_at > %(at)s)",
        {"at": message.at, "now": now, "address": message.address},
    )
    if consent.is_stop_message(message.text):
        consent.revoke(
            cursor,
            "whatsapp",
            message.address,
            "whatsapp_stop",
            message.at,
            {"message_id": message.message_id, "type": message.type},
        )


# -- links ----------------------------------------------------------------------------------------

_WEB_URL = r"^https?://[^/?#\s]"  # where a click may lead: never javascript:, data:, relative


def record_click(
    cursor: psycopg2.extensions.cursor, plan_key: str, at: datetime, *, count: bool = True
) -> str | None:
    """The cart_url to redirect to (None: no such row, or no http(s) cart_url); with ``count``, the
    click is recorded (``clicked_at``: the first click wins)."""
    if count:
        cursor.execute(
            "update ops.recovery_outbox set clicked_at = least(clicked_at, %(at)s), updated_at = "
            "case when clicked_at is null or clicked_at > %(at)s then %(at)s else updated_at end "
            "where plan_key = %(plan_key)s and cart_url ~* %(web)s returning cart_url",
            {"at": at, "plan_key": plan_key, "web": _WEB_URL},
        )
    else:
        cursor.execute(
            "select cart_url from ops.recovery_outbox where plan_key = %s and cart_url ~* %s",
            (plan_key, _WEB_URL),
        )
    row = cursor.fetchone()
    return row[0] if row else None


@dataclass(frozen=True)
class UnsubscribeTarget:
    plan_key: str
    address: str  # the lower-cased email the reminder went to
    shop_id: str
    language: str | None
    revoked: bool  # already unsubscribed (from this shop or from every shop)


def unsubscribe_target(
    cursor: psycopg2.extensions.cursor, plan_key: str, at: datetime
) -> UnsubscribeTarget | None:
    """Who an email unsubscribe link stands for; None unless the row is an email with a recipient."""
    cursor.execute(
        "select recipient, shop_id, language from ops.recovery_outbox "
        "where plan_key = %s and channel = 'email' and recipient is not null",
        (plan_key,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    recipient, shop_id, language = row
    try:
        address = consent.normalise_address("email", recipient)
    except ValueError:
        log.error("Outbox row %s has no usable email recipient: unsubscribe refused", plan_key)
        return None
    return UnsubscribeTarget(
        plan_key=plan_key,
        address=address,
        shop_id=shop_id,
        language=language,
        revoked=consent.revoked(cursor, "email", address, at, shop_id=shop_id),
    )


def unsubscribe(cursor: psycopg2.extensions.cursor, plan_key: str, at: datetime) -> UnsubscribeTarget | None:
    """Revoke the email consent of the row's recipient for the row's shop (idempotent)."""
    target = unsubscribe_target(cursor, plan_key, at)
    if target is None:
        return None
    consent.revoke(
        cursor,
        "email",
        target.address,
        "email_unsubscribe",
        at,
        {"plan_key": plan_key},
        shop_id=target.shop_id,
    )
    return UnsubscribeTarget(target.plan_key, target.address, target.shop_id, target.language, revoked=True)
