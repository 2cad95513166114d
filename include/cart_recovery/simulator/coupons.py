"""The fake shops' coupons: created through the fake Shopify and WooCommerce APIs, redeemed by orders.

Each shop has a ``CouponBook``. The fake APIs add coupons to it (``shopify_api`` for
``discountCodeBasicCreate``/``discountCodeFreeShippingCreate``, ``woocommerce_api`` for ``POST
/coupons``) after validating the request as the real platform does; an order the simulator places
with a code goes through ``CouponBook.redeem``, which enforces the terms a real checkout enforces:
the code exists, has started and not expired, has uses left (``usage_limit``), and belongs to the
buyer (Shopify's customer selection, WooCommerce's ``email_restrictions``, once per customer).

Tests read the stored coupons in Python: ``simulator.state.coupon_book(shop_id).get(code)``.
Codes are case-insensitive on both platforms; WooCommerce stores them lower-cased, Shopify as sent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from cart_recovery.simulator.data import Cart, Order


class CouponRefused(Exception):
    """An order tried a code the shop would not accept; ``reason`` is a stable key for tests."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class SimCoupon:
    """One code and its terms, as the fake platform stored them."""

    id: int
    code: str  # as the platform stores it
    kind: str  # "percentage" (Shopify basic, WooCommerce percent) or "free_shipping" (Shopify)
    pct: Decimal  # 0 for a free-shipping-only coupon
    free_shipping: bool
    starts_at: datetime | None
    ends_at: datetime | None
    usage_limit: int | None  # None: unlimited
    usage_limit_per_customer: int | None  # Shopify appliesOncePerCustomer -> 1; WooCommerce as sent
    customer_ids: tuple[int, ...] = ()  # Shopify: the customers it is bound to; () = everyone
    email_restrictions: tuple[str, ...] = ()  # WooCommerce: lower-cased; () = everyone
    individual_use: bool = False
    title: str = ""
    created_at: datetime | None = None
    request: dict = field(default_factory=dict)  # the input exactly as the API received it
    usage_count: int = 0
    used_by: list[str] = field(default_factory=list)  # buyer keys (customer id or email), per use

    def may_be_used_by(self, email: str | None, customer_id: int | None) -> bool:
        if self.customer_ids and customer_id not in self.customer_ids:
            return False
        return not self.email_restrictions or (email or "").lower() in self.email_restrictions


def _buyer_key(email: str | None, customer_id: int | None) -> str:
    return f"customer:{customer_id}" if customer_id is not None else f"email:{(email or '').lower()}"


@dataclass
class CouponBook:
    """One shop's coupons, keyed by the case-folded code. Thread-safe: uvicorn serves from a thread."""

    _coupons: dict[str, SimCoupon] = field(default_factory=dict)
    _next_id: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def get(self, code: str) -> SimCoupon | None:
        with self._lock:
            return self._coupons.get(code.casefold())

    def all(self) -> list[SimCoupon]:
        with self._lock:
            return list(self._coupons.values())

    def add(self, make) -> SimCoupon | None:
        """Store ``make(id)`` unless its code is taken (then None): check and insert are one step,
        so two concurrent creations of one code end with one coupon, as on the real platforms."""
        with self._lock:
            coupon = make(self._next_id)
            key = coupon.code.casefold()
            if key in self._coupons:
                return None
            self._coupons[key] = coupon
            self._next_id += 1
            return coupon

    def redeem(self, code: str, *, email: str | None, customer_id: int | None, at: datetime) -> SimCoupon:
        """Use ``code`` for an order placed at ``at``; CouponRefused when the shop would refuse it."""
        with self._lock:
            coupon = self._coupons.get(code.casefold())
            if coupon is None:
                raise CouponRefused("unknown", f'Coupon "{code}" does not exist!')
            if coupon.starts_at is not None and at < coupon.starts_at:
                raise CouponRefused("not_started", f'Coupon "{code}" is not active yet.')
            if coupon.ends_at is not None and at >= coupon.ends_at:
                raise CouponRefused("expired", "This coupon has expired.")
            if coupon.usage_limit is not None and coupon.usage_count >= coupon.usage_limit:
                raise CouponRefused("usage_limit", "Coupon usage limit has been reached.")
            if not coupon.may_be_used_by(email, customer_id):
                raise CouponRefused("not_yours", f'Sorry, it seems the coupon "{code}" is not yours.')
            buyer = _buyer_key(email, customer_id)
            per_customer = coupon.usage_limit_per_customer
            if per_customer is not None and coupon.used_by.count(buyer) >= per_customer:
                raise CouponRefused("usage_limit_per_customer", "Coupon usage limit has been reached.")
            coupon.usage_count += 1
            coupon.used_by.append(buyer)
            return coupon

    def usable(self, *, email: str | None, customer_id: int | None, at: datetime) -> list[SimCoupon]:
        """The codes this buyer could still use at ``at`` (what a returning customer might type)."""
        with self._lock:
            return [
                c
                for c in self._coupons.values()
                if (c.starts_at is None or c.starts_at <= at)
                and (c.ends_at is None or at < c.ends_at)
                and (c.usage_limit is None or c.usage_count < c.usage_limit)
                and (c.customer_ids or c.email_restrictions)  # only codes made for someone
                and c.may_be_used_by(email, customer_id)
            ]


def place_order(
    book: CouponBook, cart: Cart, *, order_id: int, at: datetime, coupon_code: str | None = None
) -> Order:
    """Complete ``cart`` with an order placed at ``at``, redeeming ``coupon_code`` if given.

    The code is redeemed first: when the shop refuses it (``CouponRefused``: used up, expired,
    not this buyer's) no order is placed and the cart stays open, as at a real checkout.
    """
    customer_id = cart.customer.id if cart.customer else None
    if coupon_code is not None:
        book.redeem(coupon_code, email=cart.email, customer_id=customer_id, at=at)
    cart.completed_at = at
    cart.updated_at = at
    return Order(
        id=order_id,
        customer=cart.customer,
        email=cart.email,
        phone=cart.phone,
        cart=cart,
        currency=cart.currency,
        total=cart.total,
        coupon_code=coupon_code,
        created_at=at,
        updated_at=at,
    )
