"""The cart a conversation is about, read from ``marts.abandoned_carts`` by its cart key."""

from __future__ import annotations

from decimal import Decimal

import psycopg2.extensions

from cart_recovery.assistant.replies import Cart, CartLine
from cart_recovery.errors import ConfigurationError


def _product_types(
    cursor: psycopg2.extensions.cursor, shop_id: str, product_ids: list[str]
) -> dict[str, str]:
    """Product types from the staged products where the platform sends one (Shopify's
    ``product_type``); empty where the model is not built."""
    cursor.execute("select to_regclass('staging.stg_shopify__products') is not null")
    if not product_ids or not cursor.fetchone()[0]:
        return {}
    cursor.execute(
        "select product_id, product_type from staging.stg_shopify__products "
        "where shop_id = %s and product_id = any(%s) and product_type is not null",
        (shop_id, product_ids),
    )
    return {str(product_id): product_type for product_id, product_type in cursor.fetchall()}


def load_cart(cursor: psycopg2.extensions.cursor, shop_id: str, cart_key: str) -> Cart:
    """The abandoned cart ``cart_key`` of ``shop_id``: its lines, value, currency and link."""
    cursor.execute("select to_regclass('marts.abandoned_carts') is not null")
    if not cursor.fetchone()[0]:
        raise ConfigurationError(
            "marts.abandoned_carts does not exist yet: run the transform (dbt build) first, "
            "or ask without --cart to answer from the shop's policy."
        )
    cursor.execute(
        "select cart_key, currency, cart_value, line_items, cart_url, language "
        "from marts.abandoned_carts where shop_id = %s and cart_key = %s",
        (shop_id, cart_key),
    )
    row = cursor.fetchone()
    if row is None:
        raise ConfigurationError(
            f"No abandoned cart {cart_key!r} of shop {shop_id!r} in marts.abandoned_carts; "
            "check the cart key (select cart_key from marts.abandoned_carts where shop_id = ...)."
        )
    key, currency, value, items, url, language = row
    items = items or []
    types = _product_types(cursor, shop_id, [str(i["product_id"]) for i in items if i.get("product_id")])
    lines = tuple(
        CartLine(
            title=item.get("title") or "",
            variant_title=item.get("variant_title"),
            quantity=int(item.get("quantity") or 1),
            price=Decimal(str(item.get("price") or 0)),
            product_type=types.get(str(item.get("product_id"))),
        )
        for item in items
    )
    return Cart(key, currency, Decimal(value or 0), lines, url, language)
