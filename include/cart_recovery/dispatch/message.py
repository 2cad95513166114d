"""What a recovery message is made of, shared by the dispatcher, the templates and the channels."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Coupon:
    """A code created for one plan row: unique, single use, expiring."""

    code: str
    pct: Decimal
    free_shipping: bool
    expires_at: datetime


@dataclass(frozen=True)
class MessageContext:
    """Everything a template may use for one plan row (one cart, one stage)."""

    plan_key: str
    cart_key: str
    shop_id: str
    shop_name: str
    platform: str
    stage: int
    template: str  # the plan's template name, e.g. cart_reminder_gentle_tr
    language: str  # 'tr' or 'en'
    timezone: str  # the customer's (the shop's) IANA time zone, for dates in the text
    first_name: str | None
    product: str  # the title of the cart's main line item
    item_count: int
    cart_value: Decimal
    currency: str
    cart_link: str  # the signed click link (GET /r/<token>) that redirects to the cart
    unsubscribe_link: str | None = None  # email only (GET/POST /u/<token>)
    coupon: Coupon | None = None


class Outcome(enum.Enum):
    """How a provider answered one send."""

    SENT = "sent"  # accepted: provider_message_id is set
    REJECTED = "rejected"  # refused for good (unknown template, bad number): failed, not retried
    RETRY = "retry"  # refused before sending (429 after backoff, 5xx): back to queued, sent later
    UNKNOWN = "unknown"  # the request went out and no answer came (timeout): never re-sent
    FALLBACK = "fallback"  # this channel cannot reach the person (131047, 131026): try email
    STOP = "stop"  # the person stopped promotions (131050): suppress and revoke consent
    DEFER = "defer"  # too many messages to this person just now (131056): send later


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    provider_message_id: str | None = None
    error_code: str | None = None
    error: str | None = None
    response: dict[str, Any] | None = field(default=None)
