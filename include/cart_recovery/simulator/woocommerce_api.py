"""Fake WooCommerce REST API v3 plus a cart-capture plugin's ``abandoned-carts`` endpoint.

Basic auth with the consumer key and secret; ``page``/``per_page`` pagination with ``X-WP-Total``
and ``X-WP-TotalPages``; ``modified_after``/``modified_before`` (GMT when ``dates_are_gmt``),
``orderby=modified&order=asc``.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cart_recovery.shops import Platform
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


def router(state: SimulatorState) -> APIRouter:
    api = APIRouter()

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
