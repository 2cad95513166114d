"""One stage's due batch: into the outbox, through the guards, coupons and channels, recorded.

``dispatch_due(stage, now)`` is what a stage DAG's send task runs. It

1. turns rows left ``sending`` past their lease into ``unknown`` (a dispatcher died mid-send);
2. inserts the stage's plan rows that fell due by ``now`` into the outbox;
3. claims them a chunk at a time (``outbox.claim``: guards checked, verdicts committed), and for
   each row it claimed creates the coupon, renders the message, sends it and records the answer.

``now`` is the run's moment (the trigger's clock or the run's time), never the wall clock; the
timestamps written while a batch is sending advance from it with a monotonic clock, so a replay
or a simulated week writes the times it stands for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg2
from psycopg2.extras import RealDictCursor

from cart_recovery.dispatch import outbox
from cart_recovery.dispatch.config import DispatchSettings
from cart_recovery.dispatch.message import Coupon, MessageContext, Outcome, SendResult

log = logging.getLogger(__name__)

# How many sends are in flight at once without a WhatsApp client to say (its ``max_connections``:
# enough for its limit at a provider's latency); the client's rate limiter decides the pace, this
# only bounds open connections.
CONCURRENCY = 64


class Clock:
    """The run's moment, advancing with a monotonic clock while the batch runs."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=time.monotonic() - self._t0)


@dataclass
class Summary:
    """What one run did, by outcome and reason: the task's XCom and the line in its log."""

    stage: int
    now: str
    leases_expired: int = 0
    enqueued: int = 0
    claimed: int = 0
    counts: Counter = field(default_factory=Counter)  # outcome -> n
    reasons: Counter = field(default_factory=Counter)  # "<outcome>:<reason>" -> n

    def add(self, outcome: str, reason: str | None = None) -> None:
        self.counts[outcome] += 1
        if reason:
            self.reasons[f"{outcome}:{reason}"] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "now": self.now,
            "leases_expired": self.leases_expired,
            "enqueued": self.enqueued,
            "claimed": self.claimed,
            "counts": dict(sorted(self.counts.items())),
            "reasons": dict(sorted(self.reasons.items())),
        }


@dataclass
class Channels:
    """The senders a batch uses; built from the Airflow connections unless a test passes its own."""

    whatsapp: Any = None  # cart_recovery.dispatch.whatsapp.WhatsAppClient
    email: Any = None  # cart_recovery.dispatch.email.EmailSender
    coupons: Callable[[str], Any] | None = None  # shop_id -> CouponIssuer


def dispatch_due(
    stage: int,
    now: datetime,
    *,
    database_url: str,
    claimer: str,
    settings: DispatchSettings | None = None,
    channels: Channels | None = None,
    shops: Mapping[str, Any] | None = None,
) -> Summary:
    """Send the stage's due messages as of ``now``; returns what happened, by outcome."""
    from cart_recovery.dispatch.links import LinkSigner

    settings = settings or DispatchSettings.from_env()
    LinkSigner.from_env()  # a missing link secret or public URL fails here, before any row is claimed
    summary = Summary(stage=stage, now=now.isoformat())
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cursor:
            summary.leases_expired = outbox.expire_leases(cursor, now, settings)
            summary.enqueued = outbox.enqueue_due(cursor, stage, now, settings)
        no_coupon_templates = _no_coupon_templates(conn, stage)
        asyncio.run(
            _run(
                conn,
                database_url,
                stage,
                now,
                settings,
                claimer,
                summary,
                channels,
                shops,
                no_coupon_templates,
            )
        )
    finally:
        conn.close()
    log.info("stage %s as of %s: %s", stage, now.isoformat(), summary.as_dict())
    return summary


async def _run(
    conn, database_url, stage, now, settings, claimer, summary, channels, shops, no_coupon_templates
) -> None:
    """Claim, send and record chunk after chunk, one chunk ahead.

    A chunk's sends start as soon as its claim has committed, and the next chunk is claimed while
    this one sends, so the provider's limit is not left idle while PostgreSQL checks the guards of
    the next chunk or stores the answers of the last one (claims and records run in worker
    threads, on two connections). At most two chunks are in progress: the next claim waits for
    the chunk before the current one to be recorded. A dispatcher killed outright leaves at most
    those two chunks ``sending`` (then ``unknown``); on an error the chunks already claimed are
    still sent and recorded before it propagates.
    """
    clock = Clock(now)
    shops = shops if shops is not None else _shops()
    channels = channels or channels_from_connections(database_url, shops)
    contacted: dict[str, tuple[datetime, str]] = {}  # person -> (claimed at, cart)
    # one second of sends at the WhatsApp limit per chunk (at least 200 rows), unless configured
    chunk_rows = settings.chunk_rows(getattr(getattr(channels.whatsapp, "limiter", None), "rate", None))
    recorder = psycopg2.connect(database_url)
    recording = asyncio.Lock()  # one record transaction at a time on the recorder connection
    # ``in_flight`` senders take the claimed rows in claim order, across chunks: no task per row,
    # and never more sends in flight than the WhatsApp client's pool
    rows: asyncio.Queue[tuple[_Chunk, int, outbox.Claimed] | None] = asyncio.Queue()
    senders: list[asyncio.Task] = []

    async def sender() -> None:
        while (job := await rows.get()) is not None:
            sending, position, row = job
            try:
                sending.answers[position] = await _send(
                    row, clock, settings, channels, shops, no_coupon_templates
                )
            except (Exception, asyncio.CancelledError) as error:
                if asyncio.current_task().cancelling():
                    raise  # the run itself is being cancelled
                sending.answers[position] = error
            sending.pending -= 1
            if not sending.pending:
                sending.done.set()

    async def chunk(claimed: list[outbox.Claimed]) -> None:
        if not senders:
            senders.extend(asyncio.create_task(sender()) for _ in range(in_flight(channels)))
        sending = _Chunk(answers=[None] * len(claimed), pending=len(claimed))
        for position, row in enumerate(claimed):
            rows.put_nowait((sending, position, row))
        await sending.done.wait()
        results = [
            answer if isinstance(answer, outbox.Result) else _crashed(row, answer, clock)
            for row, answer in zip(claimed, sending.answers, strict=True)
        ]
        async with recording:
            await asyncio.to_thread(_record, recorder, claimer, results, clock)
        for result in results:
            summary.add(result.status, result.reason)

    in_progress: list[asyncio.Task] = []
    try:
        while True:
            # each chunk is decided at its own moment: a STOP or an order that lands while a
            # long batch sends is seen by the next chunk
            claimed, decided = await asyncio.to_thread(
                outbox.claim, conn, stage, clock.now(), settings, claimer, contacted, limit=chunk_rows
            )
            if not decided:
                break
            summary.claimed += len(claimed)
            for _facts, verdict in decided:
                if verdict.action != "send":
                    summary.add(
                        {
                            "suppress": "suppressed",
                            "defer": "deferred",
                            "holdout": "holdout",
                            "expire": "expired",
                        }[verdict.action],
                        verdict.reason,
                    )
            if claimed:
                in_progress.append(asyncio.create_task(chunk(claimed)))
            while len(in_progress) > 1:  # the chunk before this one: recorded before the next claim
                await in_progress.pop(0)
        while in_progress:
            await in_progress.pop(0)
    finally:
        # an error above: what was claimed is still sent and recorded, then the error goes on
        await asyncio.gather(*in_progress, return_exceptions=True)
        for _ in senders:
            rows.put_nowait(None)
        await asyncio.gather(*senders, return_exceptions=True)
        recorder.close()
        await _close(channels)


@dataclass
class _Chunk:
    """One chunk's answers as its rows are sent, by claim position."""

    answers: list[Any]
    pending: int
    done: asyncio.Event = field(default_factory=asyncio.Event)


def in_flight(channels: Channels) -> int:
    """Sends in flight at once: the WhatsApp client's pool size, else ``CONCURRENCY``."""
    return getattr(channels.whatsapp, "max_connections", None) or CONCURRENCY


def _record(recorder, claimer: str, results: list[outbox.Result], clock: Clock) -> None:
    outbox.record(recorder, claimer, results, revoke=functools.partial(_revoke, at=clock.now()))


async def _send(
    row: outbox.Claimed,
    clock: Clock,
    settings: DispatchSettings,
    channels: Channels,
    shops: Mapping[str, Any],
    no_coupon_templates: Mapping[str, str],
) -> outbox.Result:
    """Coupon, render, send one claimed row; the Result to record.

    Anything that fails before a provider is called (a coupon API that raises, a template that
    cannot be filled) fails this row alone, as ``failed`` / ``not_prepared``: nothing was sent.
    """
    facts, verdict = row.facts, row.verdict
    channel = verdict.channel
    recipient = facts["phone"] if channel == "whatsapp" else facts["email"]
    notes: dict[str, str] = {}
    shop = shops.get(facts["shop_id"])
    coupon: Coupon | None = None
    if facts.get("fallback_of") is not None:
        notes["whatsapp"] = f"fallback:{facts['fallback_error']}"
    try:
        coupon = await _coupon(facts, shop, clock, settings, channels, notes)
        template = _template(facts, coupon, no_coupon_templates)
        context = _context(facts, shop, template, coupon, channel)
        if channel == "whatsapp":
            sent = await _send_whatsapp(context, recipient, channels)
        else:
            sent = await _send_email(context, recipient, channels, clock.now())
    except Exception as exc:  # nothing was sent: a clear failure of this row, not a retry loop
        log.exception("plan row %s could not be prepared", row.plan_key)
        return outbox.Result(
            row.plan_key,
            "failed",
            channel,
            recipient,
            clock.now(),
            reason="not_prepared",
            error=f"{type(exc).__name__}: {exc}",
            guards=notes or None,
            **_coupon_fields(coupon),
        )

    outcome = sent[0].outcome
    if channel == "whatsapp" and outcome is Outcome.STOP:
        # 131050, "stop promotions": suppressed and message consent revoked (DOMAIN.md), no retry
        notes["whatsapp"] = f"stop:{sent[0].error_code}"
        return _result(
            row,
            sent,
            channel,
            recipient,
            clock,
            coupon,
            notes,
            status="suppressed",
            reason="stop_promotions",
            revoke=facts["phone"],
        )
    if channel == "whatsapp" and outcome is Outcome.FALLBACK:
        # not reachable on WhatsApp (131026, 131047): email where the person gave email consent
        notes["whatsapp"] = f"fallback:{sent[0].error_code}"
        if not (facts["email"] and facts["email_consent"] and not facts["email_revoked"]):
            return _result(
                row,
                sent,
                channel,
                recipient,
                clock,
                coupon,
                notes,
                status="suppressed",
                reason="whatsapp_unreachable",
            )
        try:
            channel, recipient = "email", facts["email"]
            context = _context(facts, shop, template, coupon, channel)
            sent = await _send_email(context, recipient, channels, clock.now())
        except Exception as exc:
            log.exception("email fallback of %s could not be prepared", row.plan_key)
            return outbox.Result(
                row.plan_key,
                "suppressed",
                "whatsapp",
                facts["phone"],
                clock.now(),
                reason="whatsapp_unreachable",
                error=f"email fallback: {type(exc).__name__}: {exc}",
                guards=notes,
            )
    return _result(row, sent, channel, recipient, clock, coupon, notes, settings=settings)


def _coupon_fields(coupon: Coupon | None) -> dict[str, Any]:
    """The coupon's columns of an outbox Result (all None without a coupon)."""
    return {
        "coupon_code": coupon.code if coupon else None,
        "coupon_pct": coupon.pct if coupon else None,
        "coupon_free_shipping": coupon.free_shipping if coupon else None,
        "coupon_expires_at": coupon.expires_at if coupon else None,
    }


def _crashed(row: outbox.Claimed, error: BaseException, clock: Clock) -> outbox.Result:
    """A send that raised past every handler: the request may have gone out, so ``unknown``."""
    log.error("send of %s ended with %r; recorded unknown, never re-sent", row.plan_key, error)
    channel = row.verdict.channel
    return outbox.Result(
        row.plan_key,
        "unknown",
        channel,
        row.facts["phone"] if channel == "whatsapp" else row.facts["email"],
        clock.now(),
        reason="crashed",
        error=f"{type(error).__name__}: {error}",
    )


def _result(
    row,
    sent,
    channel,
    recipient,
    clock,
    coupon,
    notes,
    *,
    settings=None,
    status=None,
    reason=None,
    revoke=None,
):
    result, template, text = sent
    at = clock.now()
    due_at = None
    if status is None:
        status, reason, due_at = _status_of(result, row, at, settings)
    return outbox.Result(
        plan_key=row.plan_key,
        status=status,
        reason=reason,
        channel=channel,
        recipient=recipient,
        at=at,
        template=template,
        due_at=due_at,
        # an answer lost after the data went out keeps the id we gave the message (an email's
        # Message-ID): the only id a bounce or a status callback can settle it by
        provider_message_id=result.provider_message_id
        if result.outcome in (Outcome.SENT, Outcome.UNKNOWN)
        else None,
        provider_response=result.response,
        rendered_text=text,
        **_coupon_fields(coupon),
        error_code=result.error_code,
        error=result.error,
        guards=notes or None,
        revoke_whatsapp=revoke,
    )


def _status_of(result: SendResult, row: outbox.Claimed, at: datetime, settings: DispatchSettings):
    """Outbox status, reason and new due time for a provider's answer."""
    outcome = result.outcome
    if outcome is Outcome.SENT:
        return "sent", None, None
    if outcome is Outcome.UNKNOWN:
        return "unknown", "no_answer", None
    if outcome is Outcome.STOP:
        return "suppressed", "stop_promotions", None
    attempts = int(row.facts.get("attempts") or 0) + 1
    if outcome is Outcome.DEFER:
        if attempts >= settings.max_attempts:
            return "failed", "pair_rate_limited", None
        return "queued", "pair_rate_limited", at + settings.retry_delay
    if outcome is Outcome.RETRY:
        if attempts >= settings.max_attempts:
            return "failed", "provider_unavailable", None
        return "queued", "provider_retry", at + settings.retry_delay * attempts
    return "failed", "rejected", None


async def _send_whatsapp(context: MessageContext, recipient: str, channels: Channels):
    from cart_recovery.dispatch.templates import render_whatsapp

    message = render_whatsapp(context)
    try:
        result = await channels.whatsapp.send_template(
            recipient, message.template, message.language, message.parameters, context.plan_key
        )
    except Exception as exc:  # the request may have gone out: never re-sent automatically
        log.exception("WhatsApp send of %s ended without an answer", context.plan_key)
        result = SendResult(Outcome.UNKNOWN, error=f"{type(exc).__name__}: {exc}")
    return result, message.template, message.text


async def _send_email(context: MessageContext, recipient: str, channels: Channels, at: datetime):
    from cart_recovery.dispatch.templates import render_email

    # the content carries the unsubscribe link; the sender turns it into the RFC 8058 headers
    content = render_email(context)
    try:
        result = await asyncio.to_thread(channels.email.send, recipient, content, None, sent_at=at)
    except Exception as exc:
        log.exception("email send of %s ended without an answer", context.plan_key)
        result = SendResult(Outcome.UNKNOWN, error=f"{type(exc).__name__}: {exc}")
    return result, context.template, content.text


def _template(facts: Mapping[str, Any], coupon: Coupon | None, no_coupon_templates: Mapping[str, str]) -> str:
    """The plan's template, unless the coupon came out differently from what the plan offered.

    No coupon (creation failed, or its validity ended before the next sale): the stage's
    template without a coupon. A coupon without the free shipping the template promises (a
    Shopify code is one kind of discount): the coupon template without that promise.
    """
    from cart_recovery.dispatch.templates import FREE_SHIPPING_TEMPLATES

    template = facts["template"]
    if coupon is None and _offers_coupon(facts):
        return no_coupon_templates.get(facts["language"] or "en", template)
    if coupon is not None and not coupon.free_shipping and template in FREE_SHIPPING_TEMPLATES:
        return template.replace("_last_chance_", "_coupon_")
    return template


def _offers_coupon(facts: Mapping[str, Any]) -> bool:
    return bool((facts["coupon_pct"] or 0) > 0 or facts["free_shipping"])


async def _coupon(facts, shop, clock, settings, channels, notes) -> Coupon | None:
    """The row's coupon, created now through the shop; None (noted) when it cannot be. An email
    that stands in for an undelivered WhatsApp message carries that message's coupon, if any."""
    if facts.get("fallback_of") is not None:
        return _fallback_coupon(facts, clock.now(), notes)
    if not _offers_coupon(facts):
        return None
    now = clock.now()
    expires_at = now + settings.coupon_validity
    planned = facts["coupon_expires_at"]
    if planned is not None and planned - facts["plan_due_at"] < settings.coupon_validity:
        expires_at = min(expires_at, planned)  # the plan capped it before the next sale
    if expires_at <= now:
        notes["coupon"] = "skipped: its validity ended before the send (next sale)"
        return None
    if shop is None or channels.coupons is None:
        notes["coupon"] = f"failed: no coupon issuer for shop {facts['shop_id']}"
        return None
    try:
        issuer = channels.coupons(facts["shop_id"])
        return await issuer.create(
            facts["plan_key"],
            facts["email"],
            Decimal(facts["coupon_pct"] or 0),
            bool(facts["free_shipping"]),
            expires_at,
            now=now,
        )
    except Exception as exc:  # sent without a coupon, recorded (the rule)
        log.warning("coupon for %s not created: %s", facts["plan_key"], exc)
        notes["coupon"] = f"failed: {exc}"
        return None


def _fallback_coupon(facts, now: datetime, notes: dict[str, str]) -> Coupon | None:
    code, expires_at = facts["fallback_coupon_code"], facts["fallback_coupon_expires_at"]
    if code is None:
        return None
    if expires_at is not None and expires_at <= now:
        notes["coupon"] = f"skipped: {code} expired before the email fallback"
        return None
    return Coupon(
        code=code,
        pct=Decimal(facts["fallback_coupon_pct"] or 0),
        free_shipping=bool(facts["fallback_coupon_free_shipping"]),
        expires_at=expires_at,
    )


def _context(facts, shop, template, coupon, channel) -> MessageContext:
    from cart_recovery.dispatch import links

    items = facts["line_items"] or []
    main = max(
        items, key=lambda item: float(item.get("price") or 0) * int(item.get("quantity") or 1), default={}
    )
    return MessageContext(
        plan_key=facts["plan_key"],
        cart_key=facts["cart_key"],
        shop_id=facts["shop_id"],
        shop_name=shop.display_name if shop is not None else facts["shop_id"],
        platform=facts["platform"],
        stage=facts["stage"],
        template=template,
        language=facts["language"] or "en",
        timezone=facts["timezone"] or "UTC",
        first_name=facts["first_name"],
        product=str(main.get("title") or ""),
        item_count=sum(int(item.get("quantity") or 1) for item in items),
        cart_value=Decimal(facts["cart_value"] or 0),
        currency=facts["currency"] or "",
        cart_link=links.click_url(facts["plan_key"]),
        unsubscribe_link=links.unsubscribe_url(facts["plan_key"]) if channel == "email" else None,
        coupon=coupon,
    )


def _revoke(cursor, results: list[outbox.Result], at: datetime) -> None:
    """Meta's 131050 ("stop promotions") takes back message consent at once, in the transaction
    that records the answer (one business number serves every shop: no shop)."""
    from cart_recovery.dispatch import consent

    for result in results:
        if result.revoke_whatsapp:
            consent.revoke(
                cursor,
                "whatsapp",
                result.revoke_whatsapp,
                "whatsapp_131050",
                at,
                {"plan_key": result.plan_key},
            )


def _no_coupon_templates(conn, stage: int) -> dict[str, str]:
    """The stage's templates without a coupon, per language (policy seed recovery_stages)."""
    with conn, conn.cursor(cursor_factory=RealDictCursor) as cursor:
        cursor.execute(
            "select template_no_coupon_en, template_no_coupon_tr from policy.recovery_stages"
            " where stage = %s",
            (stage,),
        )
        row = cursor.fetchone()
    if row is None:
        return {}
    return {"en": row["template_no_coupon_en"], "tr": row["template_no_coupon_tr"]}


def _shops() -> dict[str, Any]:
    from cart_recovery.shops import load_shops

    return {shop.id: shop for shop in load_shops()}


def channels_from_connections(database_url: str, shops: Mapping[str, Any] | None = None) -> Channels:
    """WhatsApp, email and each shop's coupon issuer (one per shop, reused) from the connections."""
    from cart_recovery.dispatch.coupons import issuer_for
    from cart_recovery.dispatch.email import EmailSender
    from cart_recovery.dispatch.whatsapp import WhatsAppClient

    shops = shops if shops is not None else _shops()
    issuers: dict[str, Any] = {}

    def coupons(shop_id: str):
        if shop_id not in issuers:
            issuers[shop_id] = issuer_for(shops[shop_id], database_url)
        return issuers[shop_id]

    return Channels(
        whatsapp=WhatsAppClient.from_connection(),
        email=EmailSender.from_connection(),
        coupons=coupons,
    )


async def _close(channels: Channels) -> None:
    close = getattr(channels.whatsapp, "aclose", None)
    if close is not None:
        await close()
