"""Fake WooCommerce REST API v3 plus a cart-capture plugin's ``abandoned-carts`` endpoint.

Basic auth with the consumer key and secret; ``page``/``per_page`` pagination with ``X-WP-Total``
and ``X-WP-TotalPages``; ``modified_after``/``modified_before`` (GMT when ``dates_are_gmt``),
``orderby=modified&order=asc``.

Coupons: ``POST /coupons`` validates the body as WordPress's REST schema and ``WC_Coupon`` do
(types, ``discount_type``, amount, restriction emails, a code already in use:
``woocommerce_rest_coupon_code_already_exists``; a read-only key: ``woocommerce_rest_authentication_error``)
and stores the coupon, lower-cased as WooCommerce stores codes, in the shop's ``CouponBook``;
``GET /coupons`` (filter ``code``) and ``GET /coupons/<id>`` read them back with usage counts.
"""

from __future__ import annotations

import base64
import binascii
import html
import math
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cart_recovery.shops import Platform
from cart_recovery.simulator.coupons import SimCoupon
from cart_recovery.simulator.data import Cart, Customer, Order, Product, iso_gmt
from cart_recovery.simulator.state import SimulatorState, page

MAX_PER_PAGE = 100


def wc_cart(cart: Cart, shop_domain: str) -> dict:
    first = cart.customer.first_name if cart.customer else ""
    last = cart.customer.last_name if cart.customer else ""
    return {
        "id": cart.id % 10_000_000,
        "cart_key": cart.token,
        "customer_id": cart.customer.id % 10_000_000 if cart.customer else 0,
        "email": cart.email,
        "phone": cart.phone,
        "billing": {"first_name": first, "last_name": last, "email": cart.email, "phone": cart.phone},
        "consent": {
            "email": bool(cart.customer and cart.customer.email_consent),
            "whatsapp": bool(cart.customer and cart.customer.whatsapp_consent),
        },
        "line_items": [
            {
                "product_id": i.product.id % 10_000_000,
                "name": i.product.title,
                "quantity": i.quantity,
                "price": str(i.price),
            }
            for i in cart.items
        ],
        "total": str(cart.total),
        "currency": cart.currency,
        "cart_url": f"https://{shop_domain}/cart/?recover={cart.token}",
        "status": "recovered" if cart.completed_at else "abandoned",
        "date_created_gmt": iso_gmt(cart.created_at),
        "date_modified_gmt": iso_gmt(cart.updated_at),
    }


def wc_order(order: Order) -> dict:
    return {
        "id": order.id % 10_000_000,
        "order_key": f"wc_order_{order.id:x}",
        "status": "processing",
        "customer_id": order.customer.id % 10_000_000 if order.customer else 0,
        "billing": {"email": order.email, "phone": order.phone},
        "total": str(order.total),
        "currency": order.currency,
        "coupon_lines": [{"code": order.coupon_code}] if order.coupon_code else [],
        "date_created_gmt": iso_gmt(order.created_at),
        "date_modified_gmt": iso_gmt(order.updated_at),
    }


def wc_customer(c: Customer) -> dict:
    return {
        "id": c.id % 10_000_000,
        "email": c.email,
        "first_name": c.first_name,
        "last_name": c.last_name,
        "billing": {"phone": c.phone or ""},
        "meta_data": [
            {"id": 1, "key": "_marketing_email_consent", "value": "yes" if c.email_consent else "no"},
            {"id": 2, "key": "_whatsapp_consent", "value": "yes" if c.whatsapp_consent else "no"},
            {"id": 3, "key": "locale", "value": c.locale},
        ],
        "date_created_gmt": iso_gmt(c.created_at),
        "date_modified_gmt": iso_gmt(c.updated_at),
    }


def wc_product(p: Product) -> dict:
    attributes = []
    if p.product_type == "apparel":
        attributes.append({"id": 1, "name": "Size", "options": [v.title for v in p.variants]})
    return {
        "id": p.id % 10_000_000,
        "name": p.title,
        "attributes": attributes,
        "stock_quantity": sum(v.inventory_quantity for v in p.variants),
        "price": str(p.variants[0].price),
        "meta_data": [{"id": 9, "key": "size_chart", "value": p.size_chart}] if p.size_chart else [],
        "date_modified_gmt": iso_gmt(p.updated_at),
    }


def _authorised(request: Request, key: str, secret: str) -> bool:
    header = request.headers.get("Authorization", "")
    if header.startswith("Basic "):
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (user, password) == (key, secret)
    # WooCommerce also accepts the pair as query parameters over HTTPS.
    return (request.query_params.get("consumer_key"), request.query_params.get("consumer_secret")) == (
        key,
        secret,
    )


def _moment(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _local(moment: datetime | None, timezone: str) -> str | None:
    """The site-time fields (``date_expires``, ``date_created``): local time without an offset."""
    return moment.astimezone(ZoneInfo(timezone)).replace(tzinfo=None).isoformat() if moment else None


def wc_coupon(coupon: SimCoupon, timezone: str) -> dict:
    return {
        "id": coupon.id,
        "code": coupon.code,
        "amount": f"{coupon.pct:.2f}",
        "status": "publish",
        "date_created": _local(coupon.created_at, timezone),
        "date_created_gmt": iso_gmt(coupon.created_at),
        "date_modified": _local(coupon.created_at, timezone),
        "date_modified_gmt": iso_gmt(coupon.created_at),
        "discount_type": coupon.request.get("discount_type") or "fixed_cart",
        "description": coupon.request.get("description") or "",
        "date_expires": _local(coupon.ends_at, timezone),
        "date_expires_gmt": iso_gmt(coupon.ends_at),
        "usage_count": coupon.usage_count,
        "individual_use": coupon.individual_use,
        "product_ids": [],
        "excluded_product_ids": [],
        "usage_limit": coupon.usage_limit,
        "usage_limit_per_user": coupon.usage_limit_per_customer,
        "limit_usage_to_x_items": None,
        "free_shipping": coupon.free_shipping,
        "product_categories": [],
        "excluded_product_categories": [],
        "exclude_sale_items": False,
        "minimum_amount": "0.00",
        "maximum_amount": "0.00",
        "email_restrictions": list(coupon.email_restrictions),
        "used_by": [buyer.split(":", 1)[1] for buyer in coupon.used_by],
        "meta_data": [],
    }


# WordPress REST argument types of the coupon fields the fake understands (others are ignored, as
# WordPress ignores parameters its schema does not define).
_COUPON_ARGS = {
    "code": "string",
    "amount": "string",
    "discount_type": "string",
    "description": "string",
    "date_expires": "date-time",
    "date_expires_gmt": "date-time",
    "individual_use": "boolean",
    "usage_limit": "integer",
    "usage_limit_per_user": "integer",
    "free_shipping": "boolean",
    "email_restrictions": "array",
}
_DISCOUNT_TYPES = ("percent", "fixed_cart", "fixed_product")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _wp_error(code: str, message: str, status: int = 400, **data) -> JSONResponse:
    body = {"code": code, "message": message, "data": {"status": status, **data}}
    return JSONResponse(body, status_code=status)


def _coerce(kind: str, value):
    """WordPress's ``rest_sanitize_value_from_schema``; raises ValueError on a value of the wrong type."""
    if value is None and kind in ("integer", "date-time"):
        return None
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError("is not of type string.")
        return value
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if value in ("true", "1", 1):
            return True
        if value in ("false", "0", 0, ""):
            return False
        raise ValueError("is not of type boolean.")
    if kind == "integer":
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit())
        ):
            raise ValueError("is not of type integer.")
        return int(value)
    if kind == "array":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("is not of type array.")
        return value
    if kind == "date-time":
        if not isinstance(value, str):
            raise ValueError("is not of type string,null.")
        try:
            return _moment(value)
        except ValueError:
            raise ValueError("Invalid date.") from None
    return value


def _create_coupon(state: SimulatorState, shop_id: str, timezone: str, body) -> JSONResponse:
    if not isinstance(body, dict):
        return _wp_error("rest_invalid_json", "Invalid JSON body passed.")
    if "code" not in body:
        return _wp_error("rest_missing_callback_param", "Missing parameter(s): code", params=["code"])
    values, invalid = {}, {}
    for name, kind in _COUPON_ARGS.items():
        if name in body:
            try:
                values[name] = _coerce(kind, body[name])
            except ValueError as exc:
                invalid[name] = f"{name} {exc}"
    discount_type = values.get("discount_type", "fixed_cart")
    if "discount_type" not in invalid and discount_type not in _DISCOUNT_TYPES:
        invalid["discount_type"] = "discount_type is not one of percent, fixed_cart, and fixed_product."
    if invalid:
        return _wp_error("rest_invalid_param", f"Invalid parameter(s): {', '.join(invalid)}", params=invalid)
    # wc_format_coupon_code: entities decoded, trimmed, lower-cased.
    code = html.unescape(values["code"]).strip().lower()
    if not code:
        return _wp_error("woocommerce_rest_empty_coupon_code", "The coupon code cannot be empty.")
    try:
        amount = Decimal(values.get("amount") or "0")
    except InvalidOperation:
        amount = Decimal("0")  # WC_Coupon::set_amount reads a non-number as 0
    if amount < 0 or (discount_type == "percent" and amount > 100):
        return _wp_error("coupon_invalid_amount", "Invalid discount amount")
    emails = [e.strip().lower() for e in values.get("email_restrictions") or []]
    if any(not _EMAIL.match(e) for e in emails):
        return _wp_error("coupon_invalid_email_address", "Invalid email address restriction")
    expires = values.get("date_expires_gmt")
    if expires is None and values.get("date_expires") is not None:
        expires = values["date_expires"].replace(tzinfo=ZoneInfo(timezone))  # site time
    book = state.coupon_book(shop_id)
    existing = book.get(code)
    if existing is not None:
        return _wp_error(
            "woocommerce_rest_coupon_code_already_exists",
            "The coupon code already exists",
            resource_id=existing.id,
        )
    created = book.add(
        lambda number: SimCoupon(
            id=number,
            code=code,
            kind="percentage",
            pct=amount.quantize(Decimal("0.01")) if discount_type == "percent" else Decimal("0"),
            free_shipping=values.get("free_shipping", False),
            starts_at=None,
            ends_at=expires,
            usage_limit=values.get("usage_limit"),
            usage_limit_per_customer=values.get("usage_limit_per_user"),
            email_restrictions=tuple(emails),
            individual_use=values.get("individual_use", False),
            title=code,
            created_at=datetime.now(UTC),  # the fake models a live server
            request=body,
        )
    )
    if created is None:  # a concurrent request created the code since the check
        return _wp_error("woocommerce_rest_coupon_code_already_exists", "The coupon code already exists")
    return JSONResponse(wc_coupon(created, timezone), status_code=201)


def router(state: SimulatorState) -> APIRouter:
    api = APIRouter()

    def guarded(request: Request, shop_id: str, *, write: bool = False):
        """The shop, or the answer WooCommerce gives a wrong or read-only key (or an injected failure)."""
        data = state.shop(shop_id, Platform.WOOCOMMERCE)
        if not _authorised(request, data.shop.api_key, data.shop.api_secret):
            return data, _wp_error("woocommerce_rest_cannot_view", "Sorry, you cannot list resources.", 401)
        if write and state.knobs.read_only_keys:
            return data, _wp_error(
                "woocommerce_rest_authentication_error",
                "The API key provided does not have write permissions.",
                401,
            )
        return data, state.injected_failure(shop_id)

    @api.post("/shops/{shop_id}/wp-json/wc/v3/coupons")
    async def create_coupon(shop_id: str, request: Request):
        data, refusal = guarded(request, shop_id, write=True)
        if refusal is not None:
            return refusal
        try:
            body = await request.json()
        except ValueError:
            body = None
        return _create_coupon(state, shop_id, data.shop.timezone, body)

    @api.get("/shops/{shop_id}/wp-json/wc/v3/coupons")
    async def list_coupons(shop_id: str, request: Request):
        data, refusal = guarded(request, shop_id)
        if refusal is not None:
            return refusal
        params = request.query_params
        try:
            number, per_page = int(params.get("page", 1)), int(params.get("per_page", 10))
        except ValueError as exc:
            return _wp_error("rest_invalid_param", str(exc))
        coupons = sorted(state.coupon_book(shop_id).all(), key=lambda c: c.id)
        if params.get("code") is not None:
            wanted = html.unescape(params["code"]).strip().lower()
            coupons = [c for c in coupons if c.code == wanted]
        body = [wc_coupon(c, data.shop.timezone) for c in page(coupons, number, per_page)]
        return JSONResponse(
            body,
            headers={
                "X-WP-Total": str(len(coupons)),
                "X-WP-TotalPages": str(math.ceil(len(coupons) / max(per_page, 1))),
            },
        )

    @api.get("/shops/{shop_id}/wp-json/wc/v3/coupons/{coupon_id}")
    async def get_coupon(shop_id: str, coupon_id: int, request: Request):
        data, refusal = guarded(request, shop_id)
        if refusal is not None:
            return refusal
        found = [c for c in state.coupon_book(shop_id).all() if c.id == coupon_id]
        if not found:
            return _wp_error("woocommerce_rest_shop_coupon_invalid_id", "Invalid ID.", 404)
        return JSONResponse(wc_coupon(found[0], data.shop.timezone))

    def listing(resource: str, source, render):
        async def handler(shop_id: str, request: Request):
            data = state.shop(shop_id, Platform.WOOCOMMERCE)
            if not _authorised(request, data.shop.api_key, data.shop.api_secret):
                return JSONResponse(
                    {
                        "code": "woocommerce_rest_cannot_view",
                        "message": "Sorry, you cannot list resources.",
                        "data": {"status": 401},
                    },
                    status_code=401,
                )
            failure = state.injected_failure(shop_id)
            if failure is not None:
                return failure
            params = request.query_params
            try:
                number = 1 if state.knobs.ignore_paging else int(params.get("page", 1))
                per_page = int(params.get("per_page", 10))
                since, until = _moment(params.get("modified_after")), _moment(params.get("modified_before"))
            except ValueError as exc:
                return JSONResponse(
                    {"code": "rest_invalid_param", "message": str(exc), "data": {"status": 400}},
                    status_code=400,
                )
            if not 1 <= per_page <= MAX_PER_PAGE:
                return JSONResponse(
                    {
                        "code": "rest_invalid_param",
                        "message": "Invalid parameter(s): per_page",
                        "data": {"status": 400},
                    },
                    status_code=400,
                )
            chosen = state.listing(
                (shop_id, resource),
                lambda: source(data),
                lambda r: r.updated_at,
                since,
                until,
                exclusive_since=True,
                first_page=number <= 1,
            )
            total = len(chosen)
            body = [render(r, data.shop.domain) for r in page(chosen, number, per_page)]
            return JSONResponse(
                body,
                headers={
                    "X-WP-Total": str(total),
                    "X-WP-TotalPages": str(math.ceil(total / per_page)),
                },
            )

        api.add_api_route(f"/shops/{{shop_id}}/wp-json/wc/v3/{resource}", handler, methods=["GET"])

    listing("abandoned-carts", lambda d: d.carts, wc_cart)
    listing("orders", lambda d: d.orders, lambda r, _domain: wc_order(r))
    listing("customers", lambda d: d.customers, lambda r, _domain: wc_customer(r))
    listing("products", lambda d: d.products, lambda r, _domain: wc_product(r))
    return api
