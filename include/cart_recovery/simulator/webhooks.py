"""Outgoing webhooks, signed and addressed the way each platform sends them.

Shopify: ``X-Shopify-Hmac-Sha256`` = base64(HMAC-SHA256(secret, raw body)), ``X-Shopify-Topic``,
``X-Shopify-Shop-Domain``, ``X-Shopify-Webhook-Id`` (reused on a retry). WooCommerce:
``X-WC-Webhook-Signature`` (same scheme), ``-Topic``, ``-Resource``, ``-Event``, ``-Delivery-ID``,
``-Source`` (the shop's URL). Ideasoft's headers are unverified; they mirror the webhook service's
assumption in ``cart_recovery/webhooks/platforms.py``. Ticimax sends none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass

import httpx

from cart_recovery.shops import Platform
from cart_recovery.simulator.data import Cart, Order, SimulatedShop, iso
from cart_recovery.simulator.ideasoft_api import ideasoft_cart, ideasoft_order
from cart_recovery.simulator.shopify_api import rest_checkout
from cart_recovery.simulator.woocommerce_api import wc_cart, wc_order


def sign(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class Delivery:
    """One webhook request, ready to send (or to replay: same delivery id, same body)."""

    shop: SimulatedShop
    topic: str
    body: bytes
    headers: dict[str, str]


def _shopify_order(order: Order) -> dict:
    return {
        "id": order.id,
        "email": order.email,
        "phone": order.phone,
        "customer": {"id": order.customer.id, "email": order.customer.email} if order.customer else None,
        "checkout_id": order.cart.id if order.cart else None,
        "checkout_token": order.cart.token if order.cart else None,
        "cart_token": order.cart.token[::-1] if order.cart else None,
        "total_price": str(order.total),
        "currency": order.currency,
        "discount_codes": [{"code": order.coupon_code, "amount": "0.00", "type": "percentage"}]
        if order.coupon_code
        else [],
        "created_at": iso(order.created_at),
        "updated_at": iso(order.updated_at),
    }


def delivery(
    shop: SimulatedShop, record: Cart | Order, *, created: bool = False, delivery_id: str | None = None
) -> Delivery:
    """The webhook a platform sends for ``record`` (a cart or an order)."""
    delivery_id = delivery_id or str(uuid.uuid4())
    is_cart = isinstance(record, Cart)
    if shop.platform is Platform.SHOPIFY:
        topic = ("checkouts/create" if created else "checkouts/update") if is_cart else "orders/create"
        payload = rest_checkout(record, shop.domain) if is_cart else _shopify_order(record)
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {
            "X-Shopify-Topic": topic,
            "X-Shopify-Shop-Domain": shop.domain,
            "X-Shopify-Webhook-Id": delivery_id,
            "X-Shopify-API-Version": "2024-10",
            "X-Shopify-Hmac-Sha256": sign(shop.webhook_secret, body),
        }
    elif shop.platform is Platform.WOOCOMMERCE:
        resource, event = ("cart", "updated") if is_cart else ("order", "created" if created else "updated")
        topic = f"{resource}.{event}"
        payload = wc_cart(record, shop.domain) if is_cart else wc_order(record)
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": resource,
            "X-WC-Webhook-Event": event,
            "X-WC-Webhook-Delivery-ID": delivery_id,
            "X-WC-Webhook-Source": f"https://{shop.domain}/",
            "X-WC-Webhook-Signature": sign(shop.webhook_secret, body),
        }
    elif shop.platform is Platform.IDEASOFT:
        topic = "abandoned_cart/updated" if is_cart else "order/created"
        payload = ideasoft_cart(record) if is_cart else ideasoft_order(record)
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {
            "X-Ideasoft-Topic": topic,
            "X-Ideasoft-Shop-Domain": shop.domain,
            "X-Ideasoft-Webhook-Id": delivery_id,
            "X-Ideasoft-Hmac-Sha256": sign(shop.webhook_secret, body),
        }
    else:
        raise ValueError(f"{shop.platform} sends no webhooks; poll it instead")
    headers["Content-Type"] = "application/json"
    headers["User-Agent"] = f"cart-recovery-simulator ({shop.platform})"
    return Delivery(shop=shop, topic=topic, body=body, headers=headers)


def send(
    url: str, webhook: Delivery, *, client: httpx.Client | None = None, timeout: float = 5.0
) -> httpx.Response:
    """POST one delivery to ``url`` (e.g. ``http://127.0.0.1:8081/webhooks/shopify``)."""
    if client is not None:
        return client.post(url, content=webhook.body, headers=webhook.headers, timeout=timeout)
    with httpx.Client(timeout=timeout) as own:
        return own.post(url, content=webhook.body, headers=webhook.headers)
