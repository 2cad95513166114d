"""Fake Shopify Admin API: GraphQL ``abandonedCheckouts``, ``customers``, ``orders``, ``products``.

Only the parts of GraphQL the poller uses are understood: the root field, and the ``first``,
``after`` and ``query`` arguments passed as variables (or inline); ``customers`` also filters on
``email:`` (the coupon client's customer lookup). Nodes always carry the full set of fields
below, whatever the selection set asks for. Checkout webhooks use the REST shape
(``rest_checkout``), as Shopify's do. Discount codes live in ``shopify_discounts.py``.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cart_recovery.shops import Platform
from cart_recovery.simulator import shopify_discounts
from cart_recovery.simulator.data import Cart, Customer, Order, Product, ShopData, iso
from cart_recovery.simulator.state import SimulatorState, in_window

API_VERSION = "2024-10"
_ROOT_FIELD = re.compile(r"\b(abandonedCheckouts|customers|orders|products)\s*\(")
_INLINE_ARG = re.compile(r"\b(first|after|query)\s*:\s*(\"(?:[^\"\\]|\\.)*\"|\d+|\$\w+)")
_FILTER = re.compile(r"updated_at:(>=|<=|>|<)\s*'?([0-9T:.+\-Z]+)'?")
_EMAIL_FILTER = re.compile(r"""\bemail:\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([^\s()]+))""")
MAX_PAGE = 250


def gid(kind: str, number: int) -> str:
    return f"gid://shopify/{kind}/{number}"


def _money(amount: Any, currency: str) -> dict:
    return {"shopMoney": {"amount": str(amount), "currencyCode": currency}}


def _consent(flag: bool) -> str:
    return "SUBSCRIBED" if flag else "NOT_SUBSCRIBED"


def gql_customer(c: Customer) -> dict:
    return {
        "id": gid("Customer", c.id),
        "firstName": c.first_name,
        "lastName": c.last_name,
        "email": c.email,
        "phone": c.phone,
        "locale": c.locale,
        "emailMarketingConsent": {"marketingState": _consent(c.email_consent)},
        "smsMarketingConsent": {"marketingState": _consent(c.whatsapp_consent)} if c.phone else None,
        "createdAt": iso(c.created_at),
        "updatedAt": iso(c.updated_at),
    }


def gql_checkout(cart: Cart, shop_domain: str) -> dict:
    customer = gql_customer(cart.customer) if cart.customer else None
    if customer is not None:
        # The checkout carries the contact details given at checkout, which may differ.
        customer = {**customer, "email": cart.email, "phone": cart.phone}
    return {
        "id": gid("AbandonedCheckout", cart.id),
        "name": f"#{cart.id}",
        "abandonedCheckoutUrl": f"https://{shop_domain}/checkouts/{cart.token}/recover?key={cart.token[:16]}",
        "createdAt": iso(cart.created_at),
        "updatedAt": iso(cart.updated_at),
        "completedAt": iso(cart.completed_at),
        "customer": customer,
        "billingAddress": {"phone": cart.phone} if cart.phone and cart.customer is None else None,
        "discountCodes": [],
        "totalPriceSet": _money(cart.total, cart.currency),
        "lineItems": {
            "edges": [
                {
                    "node": {
                        "title": item.product.title,
                        "variantTitle": item.variant.title,
                        "quantity": item.quantity,
                        "originalUnitPriceSet": _money(item.price, cart.currency),
                        "product": {"id": gid("Product", item.product.id)},
                        "variant": {"id": gid("ProductVariant", item.variant.id)},
                    }
                }
                for item in cart.items
            ]
        },
    }


def gql_order(order: Order) -> dict:
    return {
        "id": gid("Order", order.id),
        "name": f"#{order.id % 100000}",
        "email": order.email,
        "phone": order.phone,
        "customer": {"id": gid("Customer", order.customer.id)} if order.customer else None,
        "totalPriceSet": _money(order.total, order.currency),
        "discountCodes": [order.coupon_code] if order.coupon_code else [],
        "createdAt": iso(order.created_at),
        "updatedAt": iso(order.updated_at),
    }


def gql_product(p: Product) -> dict:
    return {
        "id": gid("Product", p.id),
        "title": p.title,
        "productType": p.product_type,
        "createdAt": iso(p.created_at),
        "updatedAt": iso(p.updated_at),
        "variants": {
            "edges": [
                {
                    "node": {
                        "id": gid("ProductVariant", v.id),
                        "title": v.title,
                        "price": str(v.price),
                        "inventoryQuantity": v.inventory_quantity,
                    }
                }
                for v in p.variants
            ]
        },
        "sizeChart": {"value": json.dumps(p.size_chart, ensure_ascii=False)} if p.size_chart else None,
    }


def rest_customer(c: Customer) -> dict:
    def consent(flag: bool) -> dict:
        return {"state": "subscribed" if flag else "not_subscribed"}

    return {
        "id": c.id,
        "email": c.email,
        "phone": c.phone,
        "first_name": c.first_name,
        "last_name": c.last_name,
        "email_marketing_consent": consent(c.email_consent),
        "sms_marketing_consent": consent(c.whatsapp_consent) if c.phone else None,
        "created_at": iso(c.created_at),
        "updated_at": iso(c.updated_at),
    }


def rest_checkout(cart: Cart, shop_domain: str) -> dict:
    """The REST checkout shape of ``checkouts/create`` and ``checkouts/update`` webhooks."""
    customer = None
    if cart.customer:
        customer = {**rest_customer(cart.customer), "email": cart.email, "phone": cart.phone}
    return {
        "id": cart.id,
        "token": cart.token,
        "cart_token": cart.token[::-1],
        "email": cart.email,
        "phone": cart.phone,
        "customer_locale": cart.customer.locale if cart.customer else None,
        "customer": customer,
        "line_items": [
            {
                "product_id": i.product.id,
                "variant_id": i.variant.id,
                "title": i.product.title,
                "variant_title": i.variant.title,
                "quantity": i.quantity,
                "price": str(i.price),
            }
            for i in cart.items
        ],
        "total_price": str(cart.total),
        "currency": cart.currency,
        "abandoned_checkout_url": f"https://{shop_domain}/checkouts/{cart.token}/recover?key={cart.token[:16]}",
        "created_at": iso(cart.created_at),
        "updated_at": iso(cart.updated_at),
        "completed_at": iso(cart.completed_at),
    }


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _window(search: str | None) -> tuple[datetime | None, datetime | None, bool]:
    since = until = None
    exclusive = False
    for op, value in _FILTER.findall(search or ""):
        if op.startswith(">"):
            since, exclusive = _parse_time(value), op == ">"
        else:
            until = _parse_time(value)
    return since, until, exclusive


def _arguments(query: str, variables: dict) -> dict:
    args: dict[str, Any] = {}
    for name, raw in _INLINE_ARG.findall(query):
        if raw.startswith("$"):
            value = variables.get(raw[1:])
        elif raw.startswith('"'):
            value = json.loads(raw)
        else:
            value = int(raw)
        args.setdefault(name, value)  # the root field's arguments come first; nested ones later
    return args


def _updated_at(record: Cart | Customer | Order | Product) -> datetime:
    return record.updated_at


def _cursor(offset: int) -> str:
    return base64.b64encode(f"offset:{offset}".encode()).decode()


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    return int(base64.b64decode(cursor).decode().split(":", 1)[1])


def _connection(state: SimulatorState, data: ShopData, field_name: str, args: dict) -> dict:
    shop = data.shop
    sources = {
        "abandonedCheckouts": (data.carts, lambda r: gql_checkout(r, shop.domain)),
        "customers": (data.customers, gql_customer),
        "orders": (data.orders, gql_order),
        "products": (data.products, gql_product),
    }
    records, render = sources[field_name]
    since, until, exclusive = _window(args.get("query"))
    first = min(int(args.get("first") or 50), MAX_PAGE)
    start = 0 if state.knobs.ignore_paging else _offset(args.get("after"))
    email = _EMAIL_FILTER.search(args.get("query") or "") if field_name == "customers" else None
    if email is not None:  # a customer looked up by email (the coupon client does): case-insensitive
        wanted = next(g for g in email.groups() if g is not None).replace('\\"', '"').casefold()
        chosen = in_window(
            (c for c in data.customers if (c.email or "").casefold() == wanted),
            _updated_at,
            since,
            until,
            exclusive_since=exclusive,
        )
    else:
        chosen = state.listing(
            (shop.id, field_name),
            lambda: records,
            _updated_at,
            since,
            until,
            exclusive_since=exclusive,
            first_page=start == 0,
        )
    window = chosen[start : start + first]
    edges = [{"cursor": _cursor(start + n + 1), "node": render(r)} for n, r in enumerate(window)]
    return {
        "edges": edges,
        "pageInfo": {
            "hasNextPage": start + first < len(chosen),
            "endCursor": edges[-1]["cursor"] if edges else None,
        },
    }


def router(state: SimulatorState) -> APIRouter:
    api = APIRouter()

    @api.post(f"/shops/{{shop_id}}/admin/api/{API_VERSION}/graphql.json")
    async def graphql(shop_id: str, request: Request):
        data = state.shop(shop_id, Platform.SHOPIFY)
        if request.headers.get("X-Shopify-Access-Token") != data.shop.api_key:
            return JSONResponse(
                {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"},
                status_code=401,
            )
        failure = state.injected_failure(shop_id)
        if failure is not None:
            return failure
        try:
            body = await request.json()
            query = body["query"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse(
                {"errors": [{"message": "Parse error: expected a JSON body with query"}]}, status_code=400
            )
        discount = shopify_discounts.ROOT_FIELD.search(query)
        if discount is not None:
            return JSONResponse(
                shopify_discounts.answer(
                    state, data, discount.group(1), query[discount.end() :], body.get("variables") or {}
                )
            )
        match = _ROOT_FIELD.search(query)
        if match is None:
            return JSONResponse({"errors": [{"message": "Field not supported by the simulator"}]})
        field_name = match.group(1)
        args = _arguments(query[match.end() :], body.get("variables") or {})
        return JSONResponse(
            {
                "data": {field_name: _connection(state, data, field_name, args)},
                "extensions": {
                    "cost": {
                        "requestedQueryCost": 52,
                        "actualQueryCost": 12,
                        "throttleStatus": {
                            "maximumAvailable": 2000.0,
                            "currentlyAvailable": 1988,
                            "restoreRate": 100.0,
                        },
                    }
                },
            }
        )

    return api
