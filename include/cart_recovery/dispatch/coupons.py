"""Coupons created at send time, one per plan row, through the shop's own API or the code pool.

``issuer_for(shop)`` picks the way by platform:

- Shopify: Admin GraphQL ``discountCodeBasicCreate`` (a percentage off every item) or, for a free
  shipping offer without a percentage, ``discountCodeFreeShippingCreate``; ``usageLimit: 1``,
  ``appliesOncePerCustomer``, ``startsAt`` = now, ``endsAt`` = the expiry, and ``customerSelection``
  bound to the customer whose email the cart carries (looked up with the ``customers`` query), or
  all customers for a guest, whom Shopify cannot bind a code to. A Shopify code discount is one
  kind of discount: a plan asking for a percentage *and* free shipping gets the percentage code,
  and the returned ``Coupon`` says ``free_shipping=False`` (the outbox records what was given).
- WooCommerce: REST v3 ``POST /wp-json/wc/v3/coupons``, ``discount_type: percent``, usage limit 1
  (per user too), ``individual_use``, ``email_restrictions: [email]``, ``date_expires_gmt``,
  ``free_shipping`` (which needs a free shipping method that accepts coupons in the shop).
- Ideasoft and Ticimax: no coupon API is known (shared/DOMAIN.md), so a code is claimed from
  ``ops.coupon_pool``, which the operator loads (``coupon_pool.py``, ``cart-recovery coupons``).

HTTP goes through the poller's platform clients (``cart_recovery.platforms``), so coupons use the
same Airflow connection (``shop.conn_id``), base URL, credentials, API version and retries.

One coupon per plan row, however often it is retried. The code is not random: it is
``CR`` + 12 Crockford base-32 characters (60 bits) of HMAC-SHA256(the shop's API credential,
shop id and plan key). Nobody without the credential can guess a code, two plan rows never share
one, and a retry of the same plan row (after a timeout, a crash, or by a second worker) asks for
the same code: the platform answers that it exists (Shopify ``TAKEN``,
``woocommerce_rest_coupon_code_already_exists``), the existing coupon is read back and returned
when its terms match, so a second live coupon is never made. (Rotating the credential changes
future codes only.) The pool gets the same guarantee from its unique ``plan_key`` column.

Every failure raises ``CouponError`` with the platform's answer; the dispatcher then sends the
stage without a coupon and records why.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from cart_recovery.dispatch.message import Coupon
from cart_recovery.errors import CartRecoveryError, ConfigurationError
from cart_recovery.platforms.base import PlatformError, RetryPolicy, iso_utc, parse_time
from cart_recovery.platforms.shopify import ShopifyClient
from cart_recovery.platforms.woocommerce import WooCommerceClient
from cart_recovery.shops import Platform, Shop

log = logging.getLogger(__name__)

CODE_PREFIX = "CR"
CODE_LENGTH = 12  # characters after the prefix: 60 bits
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # no I, L, O, U: read aloud and typed without doubt
_CENT = Decimal("0.01")


def coupon_retry_policy() -> RetryPolicy:
    """Send time is not polling time: a few quick retries, then the stage goes without a coupon."""
    return RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=4.0, max_retry_after=10.0, timeout=15.0)


class CouponError(CartRecoveryError):
    """No coupon could be made; the message says why, ``platform_response`` keeps the answer."""

    def __init__(self, message: str, *, platform_response: Any = None) -> None:
        super().__init__(message)
        self.platform_response = platform_response


def coupon_code(secret: str, shop_id: str, plan_key: str) -> str:
    """The plan row's code: unguessable without ``secret``, the same on every retry."""
    message = f"cart-recovery/coupon/v1\0{shop_id}\0{plan_key}".encode()
    number = int.from_bytes(hmac.new(secret.encode(), message, hashlib.sha256).digest(), "big")
    chars = []
    for _ in range(CODE_LENGTH):
        number, digit = divmod(number, 32)
        chars.append(_CROCKFORD[digit])
    return CODE_PREFIX + "".join(chars)


def _percent(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(_CENT)


class CouponIssuer(ABC):
    """Makes the coupon of one plan row in one shop. ``create`` checks the terms, then issues."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    async def create(
        self,
        plan_key: str,
        email: str | None,
        pct: Decimal,
        free_shipping: bool,
        expires_at: datetime,
        *,
        now: datetime,
    ) -> Coupon:
        """A coupon of ``pct`` percent off (and free shipping) for ``email``, ending at ``expires_at``
        (the latest expiry allowed: 48 hours by default, before the next sale), created at ``now``.

        Retrying the same ``plan_key`` returns the coupon made the first time. Raises CouponError.
        """
        if not plan_key:
            raise CouponError("a coupon needs the plan row's plan_key")
        if now.tzinfo is None or expires_at.tzinfo is None:
            raise CouponError("now and expires_at must be timezone-aware")
        try:
            pct = Decimal(str(pct))  # str: a float 10.1 means 10.10, not its binary expansion
        except InvalidOperation:
            raise CouponError(f"coupon percentage {pct!r} is not a number") from None
        free_shipping = bool(free_shipping)
        if not pct.is_finite() or not 0 <= pct <= 100 or pct != pct.quantize(_CENT):
            raise CouponError(f"coupon percentage {pct} must be between 0 and 100 with at most two decimals")
        if pct == 0 and not free_shipping:
            raise CouponError(
                f"plan row {plan_key} asks for a coupon that gives nothing (0%, no free shipping)"
            )
        if expires_at <= now:
            raise CouponError(f"coupon expiry {expires_at.isoformat()} is not after now ({now.isoformat()})")
        email = email.strip() if email and email.strip() else None
        coupon = await self._issue(plan_key, email, pct.quantize(_CENT), free_shipping, expires_at, now)
        log.info(
            "%s: coupon %s for plan row %s: %s%% off%s, until %s",
            self.shop.id,
            coupon.code,
            plan_key,
            coupon.pct,
            " + free shipping" if coupon.free_shipping else "",
            coupon.expires_at.isoformat(),
        )
        return coupon

    @abstractmethod
    async def _issue(
        self,
        plan_key: str,
        email: str | None,
        pct: Decimal,
        free_shipping: bool,
        expires_at: datetime,
        now: datetime,
    ) -> Coupon: ...


class _ApiIssuer(CouponIssuer):
    """A platform whose API creates coupons: the (blocking) client runs in a worker thread, one
    call at a time per issuer, since its requests session is not meant to be shared by threads."""

    client_class: Any  # a platform client with issue(code, plan_key, email, pct, free_shipping, ...)

    def __init__(self, shop: Shop, *, retry: RetryPolicy | None = None) -> None:
        super().__init__(shop)
        self.client = self.client_class(shop, retry=retry or coupon_retry_policy())
        self._one_call = threading.Lock()
        if not self.client.password:
            raise ConfigurationError(
                f"{shop.id}: the Airflow connection {shop.conn_id!r} has no password (the API credential)"
            )

    def _call(self, *args: Any) -> Coupon:
        with self._one_call:
            return self.client.issue(*args)

    def code_for(self, plan_key: str) -> str:
        return coupon_code(self.client.password, self.shop.id, plan_key)

    async def _issue(self, plan_key, email, pct, free_shipping, expires_at, now) -> Coupon:
        code = self.code_for(plan_key)
        try:
            return await asyncio.to_thread(
                self._call, code, plan_key, email, pct, free_shipping, expires_at, now
            )
        except CouponError:
            raise
        except PlatformError as exc:
            raise CouponError(f"{self.shop.id}: coupon {code} not created: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:  # an answer that is not what the API documents
            raise CouponError(f"{self.shop.id}: unreadable answer creating coupon {code}: {exc!r}") from exc


def reusable(existing: Coupon, pct: Decimal, free_shipping: bool, code: str, shop_id: str, now: datetime):
    """The coupon a retry found, when its terms are the ones asked for and it is still valid."""
    if existing.pct != pct or existing.free_shipping != free_shipping:
        raise CouponError(
            f"{shop_id}: code {code} already exists with other terms ({existing.pct}% off, free shipping "
            f"{existing.free_shipping}) than asked ({pct}%, free shipping {free_shipping}); not reused"
        )
    if existing.expires_at <= now:
        raise CouponError(
            f"{shop_id}: the coupon {code} made for this plan row earlier expired at "
            f"{existing.expires_at.isoformat()}; a plan row gets one coupon, not a second"
        )
    return existing


# -- Shopify ---------------------------------------------------------------------------------------

_DISCOUNT_FIELDS = """
    id
    codeDiscount {
      __typename
      ... on DiscountCodeBasic {
        title startsAt endsAt usageLimit appliesOncePerCustomer
        codes(first: 1) { nodes { code } }
        customerGets { value { ... on DiscountPercentage { percentage } } }
      }
      ... on DiscountCodeFreeShipping {
        title startsAt endsAt usageLimit appliesOncePerCustomer
        codes(first: 1) { nodes { code } }
      }
    }
"""
_CREATE = {
    "percentage": (
        "discountCodeBasicCreate",
        "basicCodeDiscount",
        "DiscountCodeBasicInput",
    ),
    "free_shipping": (
        "discountCodeFreeShippingCreate",
        "freeShippingCodeDiscount",
        "DiscountCodeFreeShippingInput",
    ),
}
_CUSTOMER_QUERY = """
query CouponCustomer($query: String!) {
  customers(first: 5, query: $query) { edges { node { id email } } }
}
"""
_BY_CODE_QUERY = f"""
query CouponByCode($code: String!) {{
  codeDiscountNodeByCode(code: $code) {{ {_DISCOUNT_FIELDS} }}
}}
"""


def _mutation(kind: str) -> str:
    name, argument, input_type = _CREATE[kind]
    return (
        f"mutation CouponCreate(${argument}: {input_type}!) {{\n"
        f"  {name}({argument}: ${argument}) {{\n"
        f"    codeDiscountNode {{ {_DISCOUNT_FIELDS} }}\n"
        f"    userErrors {{ field code message }}\n"
        f"  }}\n}}"
    )


def _search_value(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def shopify_coupon(node: dict | None) -> Coupon:
    """A ``DiscountCodeNode`` as a ``Coupon``."""
    discount = (node or {}).get("codeDiscount") or {}
    kind = discount.get("__typename")
    codes = ((discount.get("codes") or {}).get("nodes")) or []
    ends_at = parse_time(discount.get("endsAt"))
    if kind not in ("DiscountCodeBasic", "DiscountCodeFreeShipping") or not codes or ends_at is None:
        raise CouponError(f"Shopify answered a discount the project cannot read: {json.dumps(node)[:300]}")
    if kind == "DiscountCodeBasic":
        percentage = ((discount.get("customerGets") or {}).get("value") or {}).get("percentage")
        if percentage is None:
            raise CouponError(f"Shopify discount {codes[0]['code']} is not a percentage off")
        return Coupon(codes[0]["code"], _percent(Decimal(str(percentage)) * 100), False, ends_at)
    return Coupon(codes[0]["code"], Decimal("0.00"), True, ends_at)


class ShopifyCouponClient(ShopifyClient):
    """The poller's Shopify client (token header, API version, retries) plus discount calls."""

    def graphql(self, query: str, variables: dict) -> dict:
        try:
            return self._graphql(query, variables)
        except PlatformError as exc:  # ACCESS_DENIED, INVALID_VARIABLE, 5xx after retries...
            raise CouponError(f"{self.shop.id}: Shopify refused the discount call: {exc}") from exc

    def customer_gid(self, email: str) -> str | None:
        query = f"email:{_search_value(email)}"
        edges = self.graphql(_CUSTOMER_QUERY, {"query": query})["customers"]["edges"]
        for edge in edges:  # the search is fuzzy; the binding must be exact
            node = edge.get("node") or {}
            if (node.get("email") or "").casefold() == email.casefold():
                return node.get("id")
        return None

    def existing(self, code: str) -> Coupon | None:
        node = self.graphql(_BY_CODE_QUERY, {"code": code}).get("codeDiscountNodeByCode")
        return shopify_coupon(node) if node else None

    def issue(self, code, plan_key, email, pct, free_shipping, expires_at, now) -> Coupon:
        kind = "percentage" if pct > 0 else "free_shipping"
        if pct > 0 and free_shipping:
            log.warning(
                "%s: plan row %s asks for %s%% off and free shipping; a Shopify code is one "
                "discount, so the code gives the percentage only",
                self.shop.id,
                plan_key,
                pct,
            )
        customer = self.customer_gid(email) if email else None
        name, argument, _ = _CREATE[kind]
        terms: dict[str, Any] = {
            "title": f"Cart recovery {plan_key}",
            "code": code,
            "startsAt": iso_utc(now),
            "endsAt": iso_utc(expires_at),
            "usageLimit": 1,
            "appliesOncePerCustomer": True,
            "customerSelection": {"customers": {"add": [customer]}} if customer else {"all": True},
            "combinesWith": {
                "productDiscounts": False,
                "orderDiscounts": False,
                "shippingDiscounts": True,
            },
        }
        if kind == "percentage":
            terms["customerGets"] = {"value": {"percentage": float(pct / 100)}, "items": {"all": True}}
        else:
            terms["destination"] = {"all": True}
        result = self.graphql(_mutation(kind), {argument: terms})[name]
        errors = result.get("userErrors") or []
        if not errors:
            return shopify_coupon(result.get("codeDiscountNode"))
        messages = "; ".join(
            f"{'.'.join(e.get('field') or [])}: {e.get('message')} ({e.get('code')})" for e in errors
        )
        refused = f"{self.shop.id}: Shopify refused the discount code {code}: {messages}"
        if any(e.get("code") == "TAKEN" and (e.get("field") or [])[-1:] == ["code"] for e in errors):
            existing = self.existing(code)
            if existing is not None:
                try:
                    reused = reusable(
                        existing,
                        pct if kind == "percentage" else Decimal("0.00"),
                        kind == "free_shipping",
                        code,
                        self.shop.id,
                        now,
                    )
                except CouponError as exc:
                    raise CouponError(f"{exc} ({refused})", platform_response=result) from None
                log.info("%s: coupon %s exists already (a retry of %s): reused", self.shop.id, code, plan_key)
                return reused
        raise CouponError(refused, platform_response=result)


class ShopifyCoupons(_ApiIssuer):
    client_class = ShopifyCouponClient


# -- WooCommerce -----------------------------------------------------------------------------------

COUPONS_ENDPOINT = "wp-json/wc/v3/coupons"


def _gmt(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


def woocommerce_coupon(body: dict) -> Coupon:
    """A WooCommerce coupon resource as a ``Coupon``."""
    expires = parse_time(body.get("date_expires_gmt"), "UTC")
    if body.get("discount_type") != "percent" or not body.get("code") or expires is None:
        raise CouponError(f"WooCommerce answered a coupon the project cannot read: {json.dumps(body)[:300]}")
    return Coupon(body["code"], _percent(body.get("amount") or "0"), bool(body.get("free_shipping")), expires)


class WooCommerceCouponClient(WooCommerceClient):
    """The poller's WooCommerce client (consumer key and secret, retries) plus coupons."""

    def existing(self, code: str) -> Coupon | None:
        response = self.request("GET", COUPONS_ENDPOINT, params={"code": code})
        found = [c for c in response.json() if str(c.get("code", "")).casefold() == code.casefold()]
        return woocommerce_coupon(found[0]) if found else None

    def issue(self, code, plan_key, email, pct, free_shipping, expires_at, now) -> Coupon:
        body = {
            "code": code,
            "discount_type": "percent",
            "amount": f"{pct:.2f}",
            "description": f"Cart recovery {plan_key}",
            "individual_use": True,
            "usage_limit": 1,
            "usage_limit_per_user": 1,
            "free_shipping": free_shipping,
            "date_expires_gmt": _gmt(expires_at),
            "email_restrictions": [email] if email else [],
        }
        try:
            return woocommerce_coupon(self.request("POST", COUPONS_ENDPOINT, json=body).json())
        except PlatformError as refused:
            # Already there (a retry; or the first POST timed out after WooCommerce stored it)?
            try:
                existing = self.existing(code)
            except PlatformError as exc:
                raise CouponError(
                    f"{self.shop.id}: WooCommerce refused coupon {code} ({refused}) and could not "
                    f"be asked whether it exists ({exc})"
                ) from refused
            if existing is None:
                raise CouponError(
                    f"{self.shop.id}: WooCommerce refused coupon {code}: {refused}",
                    platform_response=str(refused),
                ) from refused
            log.info("%s: coupon %s exists already (a retry of %s): reused", self.shop.id, code, plan_key)
            return reusable(existing, pct, free_shipping, code, self.shop.id, now)


class WooCommerceCoupons(_ApiIssuer):
    client_class = WooCommerceCouponClient


# -- the code pool (Ideasoft, Ticimax) -------------------------------------------------------------


class PoolCoupons(CouponIssuer):
    """Claims an operator-loaded code from ``ops.coupon_pool`` (see ``coupon_pool.claim``)."""

    def __init__(self, shop: Shop, database: Any, *, min_validity: timedelta | None = None) -> None:
        super().__init__(shop)
        self.database = database
        self.min_validity = min_validity

    async def _issue(self, plan_key, email, pct, free_shipping, expires_at, now) -> Coupon:
        from cart_recovery.dispatch import coupon_pool

        kwargs = {"min_validity": self.min_validity} if self.min_validity is not None else {}
        return await asyncio.to_thread(
            coupon_pool.claim,
            self.database,
            shop_id=self.shop.id,
            plan_key=plan_key,
            pct=pct,
            free_shipping=free_shipping,
            latest_expiry=expires_at,
            now=now,
            **kwargs,
        )


def issuer_for(shop: Shop, database: Any = None, *, retry: RetryPolicy | None = None) -> CouponIssuer:
    """The coupon issuer of ``shop``. ``database`` (a URL or an open psycopg2 connection; default the
    configured warehouse) is used by the code pool only. With a connection, a pool claim runs in
    the caller's transaction and the caller commits it (with its outbox row, say)."""
    if shop.platform is Platform.SHOPIFY:
        return ShopifyCoupons(shop, retry=retry)
    if shop.platform is Platform.WOOCOMMERCE:
        return WooCommerceCoupons(shop, retry=retry)
    if database is None:
        from cart_recovery.database import Database

        database = Database.from_env().url
    return PoolCoupons(shop, database)
