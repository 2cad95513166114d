"""Shopify: Admin GraphQL (2024-10) ``abandonedCheckouts``, ``orders``, ``customers``, ``products``.

Connection: ``password`` = Admin API access token (sent as ``X-Shopify-Access-Token``). Nodes are
converted to the REST field shape of ``docs/raw-layer.md`` before landing, so staging reads one
shape for webhooks and polling. GraphQL does not expose a checkout's ``token``/``cart_token``;
polled checkouts carry them as null (the webhook copy has them).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any, ClassVar

from cart_recovery.platforms.base import (
    PageGuard,
    PlatformClient,
    PlatformError,
    PlatformUnavailable,
    PolledRecord,
    Window,
    decimal_text,
    iso_utc,
    parse_time,
)

log = logging.getLogger(__name__)

API_VERSION = "2024-10"
MAX_PAGE = 250

_CUSTOMER_FIELDS = """
    id firstName lastName email phone locale createdAt updatedAt
    emailMarketingConsent { marketingState }
    smsMarketingConsent { marketingState }
"""
_SELECTIONS = {
    "abandonedCheckouts": f"""
        id name abandonedCheckoutUrl createdAt updatedAt completedAt discountCodes
        customer {{ {_CUSTOMER_FIELDS} }}
        billingAddress {{ phone }}
        totalPriceSet {{ shopMoney {{ amount currencyCode }} }}
        lineItems(first: 100) {{ edges {{ node {{
            title variantTitle quantity
            originalUnitPriceSet {{ shopMoney {{ amount currencyCode }} }}
            product {{ id }} variant {{ id }}
        }} }} }}
    """,
    "orders": """
        id name email phone createdAt updatedAt discountCodes
        customer { id }
        totalPriceSet { shopMoney { amount currencyCode } }
    """,
    "customers": _CUSTOMER_FIELDS,
    "products": """
        id title productType createdAt updatedAt
        variants(first: 100) { edges { node { id title price inventoryQuantity } } }
        sizeChart: metafield(namespace: "custom", key: "size_chart") { value }
    """,
}
_ROOTS = {"cart": "abandonedCheckouts", "order": "orders", "customer": "customers", "product": "products"}


def _query(root: str) -> str:
    return (
        f"query Poll($first: Int!, $after: String, $query: String) {{\n"
        f"  {root}(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {{\n"
        f"    edges {{ cursor node {{ {_SELECTIONS[root]} }} }}\n"
        f"    pageInfo {{ hasNextPage endCursor }}\n"
        f"  }}\n}}"
    )


def numeric_id(gid: Any) -> int | None:
    """``gid://shopify/AbandonedCheckout/123`` -> 123."""
    if not isinstance(gid, str):
        return None
    tail = gid.rsplit("/", 1)[-1].split("?", 1)[0]
    return int(tail) if tail.isdigit() else None


def _money(money_set: dict | None) -> tuple[str | None, str | None]:
    shop_money = (money_set or {}).get("shopMoney") or {}
    return decimal_text(shop_money.get("amount")), shop_money.get("currencyCode")


def _consent(consent: dict | None) -> dict | None:
    if not consent:
        return None
    state = consent.get("marketingState")
    return {"state": state.lower() if isinstance(state, str) else state}


def rest_customer(node: dict) -> dict:
    return {
        "id": numeric_id(node.get("id")),
        "email": node.get("email"),
        "phone": node.get("phone"),
        "first_name": node.get("firstName"),
        "last_name": node.get("lastName"),
        "locale": node.get("locale"),
        "email_marketing_consent": _consent(node.get("emailMarketingConsent")),
        "sms_marketing_consent": _consent(node.get("smsMarketingConsent")),
        "created_at": node.get("createdAt"),
        "updated_at": node.get("updatedAt"),
    }


def rest_checkout(node: dict) -> dict:
    customer = node.get("customer") or None
    billing = node.get("billingAddress") or {}
    total, currency = _money(node.get("totalPriceSet"))
    line_items = []
    for edge in (node.get("lineItems") or {}).get("edges", []):
        item = edge.get("node") or {}
        price, _ = _money(item.get("originalUnitPriceSet"))
        line_items.append(
            {
                "product_id": numeric_id((item.get("product") or {}).get("id")),
                "variant_id": numeric_id((item.get("variant") or {}).get("id")),
                "title": item.get("title"),
                "variant_title": item.get("variantTitle"),
                "quantity": item.get("quantity"),
                "price": price,
            }
        )
    return {
        "id": numeric_id(node.get("id")),
        "token": None,
        "cart_token": None,
        "email": customer.get("email") if customer else None,
        "phone": (customer or {}).get("phone") or billing.get("phone"),
        "customer_locale": customer.get("locale") if customer else None,
        "customer": rest_customer(customer) if customer else None,
        "line_items": line_items,
        "total_price": total,
        "currency": currency,
        "abandoned_checkout_url": node.get("abandonedCheckoutUrl"),
        "discount_codes": [{"code": code} for code in node.get("discountCodes") or []],
        "created_at": node.get("createdAt"),
        "updated_at": node.get("updatedAt"),
        "completed_at": node.get("completedAt"),
    }


def rest_order(node: dict) -> dict:
    total, currency = _money(node.get("totalPriceSet"))
    customer_id = numeric_id((node.get("customer") or {}).get("id"))
    return {
        "id": numeric_id(node.get("id")),
        "name": node.get("name"),
        "email": node.get("email"),
        "phone": node.get("phone"),
        "customer": {"id": customer_id} if customer_id else None,
        # The orders query does not read the checkout: only webhooks link an order to its checkout.
        "checkout_id": None,
        "checkout_token": None,
        "cart_token": None,
        "total_price": total,
        "currency": currency,
        "discount_codes": [
            {"code": code, "amount": None, "type": None} for code in node.get("discountCodes") or []
        ],
        "created_at": node.get("createdAt"),
        "updated_at": node.get("updatedAt"),
    }


def rest_product(node: dict) -> dict:
    size_chart = None
    raw_chart = (node.get("sizeChart") or {}).get("value")
    if raw_chart:
        try:
            size_chart = json.loads(raw_chart)
        except ValueError:
            size_chart = {"raw": raw_chart}
    return {
        "id": numeric_id(node.get("id")),
        "title": node.get("title"),
        "product_type": node.get("productType"),
        "variants": [
            {
                "id": numeric_id(v.get("id")),
                "title": v.get("title"),
                "price": decimal_text(v.get("price")),
                "inventory_quantity": v.get("inventoryQuantity"),
            }
            for v in (e.get("node") or {} for e in (node.get("variants") or {}).get("edges", []))
        ],
        "size_chart": size_chart,
        "created_at": node.get("createdAt"),
        "updated_at": node.get("updatedAt"),
    }


try:  # msgspec (installed with Airflow) decodes a 250-checkout page about 3x faster than json
    from msgspec.json import decode as _msgspec_decode

    def _decode(content: bytes) -> Any:
        return _msgspec_decode(content)

except ImportError:  # pragma: no cover

    def _decode(content: bytes) -> Any:
        return json.loads(content)


_CONVERTERS = {"cart": rest_checkout, "order": rest_order, "customer": rest_customer, "product": rest_product}


def polled_record(entity: str, payload: dict) -> PolledRecord:
    record_id = payload.get("id")
    customer = payload.get("customer") or {}
    return PolledRecord(
        entity=entity,
        record_id=str(record_id) if record_id is not None else None,
        updated_at=parse_time(payload.get("updated_at")),
        created_at=parse_time(payload.get("created_at")),
        payload=payload,
        currency=payload.get("currency"),
        total=payload.get("total_price"),
        email=payload.get("email") or customer.get("email"),
        phone=payload.get("phone") or customer.get("phone"),
    )


class ShopifyClient(PlatformClient):
    platform = "shopify"
    default_page_size: ClassVar[int] = 100
    use_connection_login_as_basic_auth = False
    max_throttled_in_body = 5

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        version = self.extra.get("api_version") or API_VERSION
        self.endpoint = f"admin/api/{version}/graphql.json"
        self.session.headers["X-Shopify-Access-Token"] = self.password
        self.session.headers["Content-Type"] = "application/json"

    def _graphql(self, query: str, variables: dict) -> dict:
        for _attempt in range(self.max_throttled_in_body):
            response = self.request("POST", self.endpoint, json={"query": query, "variables": variables})
            body = _decode(response.content)
            errors = body.get("errors")
            if not errors:
                return body["data"]
            codes = {(e.get("extensions") or {}).get("code") for e in errors if isinstance(e, dict)}
            if "THROTTLED" not in codes:
                raise PlatformError(f"{self.shop.id}: Shopify GraphQL errors: {json.dumps(errors)[:500]}")
            # GraphQL cost throttling answers 200 with THROTTLED; wait for the bucket to refill.
            self.stats["throttled"] += 1
            self.retry.sleep(self.retry.base_delay * 2)
        raise PlatformUnavailable(f"{self.shop.id}: Shopify kept answering THROTTLED; the task will retry")

    def fetch(self, entity: str, window: Window) -> Iterator[PolledRecord]:
        root = _ROOTS[entity]
        search = f"updated_at:<='{iso_utc(window.until)}'"
        if window.since is not None:
            search = f"updated_at:>='{iso_utc(window.since)}' AND {search}"
        query = _query(root)
        after = None
        guard = PageGuard(self.shop.id, entity)
        while True:
            data = self._graphql(
                query, {"first": min(self.page_size, MAX_PAGE), "after": after, "query": search}
            )
            connection = data[root]
            records = [
                polled_record(entity, _CONVERTERS[entity](edge["node"])) for edge in connection["edges"]
            ]
            guard.check(records)
            yield from records
            page_info = connection["pageInfo"]
            if not page_info.get("hasNextPage") or not page_info.get("endCursor"):
                return
            after = page_info["endCursor"]
