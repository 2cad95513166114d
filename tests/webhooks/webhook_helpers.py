"""Helpers for the webhook tests: realistic bodies in the platforms' own field names
(docs/raw-layer.md), signing computed independently of the package, and reading rows back."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid

import psycopg2.extensions

WHATSAPP_APP_SECRET = "meta-app-secret-for-tests"
WHATSAPP_VERIFY_TOKEN = "verify-me-please"


def shopify_checkout(
    *,
    checkout_id: int = 35_012_345_678,
    customer_id: int = 7_001,
    email: str = "ayse.yilmaz@example.com",
    phone: str = "+905551234567",
    first_name: str = "Ayşe",
    last_name: str = "Yılmaz",
) -> dict:
    return {
        "id": checkout_id,
        "token": uuid.uuid4().hex,
        "cart_token": uuid.uuid4().hex,
        "email": email,
        "phone": phone,
        "customer_locale": "tr",
        "customer": {
            "id": customer_id,
            "email": email,
            "phone": phone,
            "first_name": first_name,
            "last_name": last_name,
            "email_marketing_consent": {"state": "subscribed"},
            "sms_marketing_consent": {"state": "subscribed"},
            "default_address": {"address1": "Bağdat Cd. 12", "city": "İstanbul", "country_code": "TR"},
        },
        "billing_address": {"first_name": first_name, "last_name": last_name, "address1": "Bağdat Cd. 12"},
        "line_items": [
            {
                "product_id": 901,
                "variant_id": 9011,
                "title": "Linen Shirt",
                "variant_title": "M",
                "quantity": 1,
                "price": "899.90",
            }
        ],
        "total_price": "899.90",
        "currency": "TRY",
        "abandoned_checkout_url": f"https://shop.example/checkouts/{checkout_id}/recover?key=abc",
        "created_at": "2026-11-20T10:00:00+03:00",
        "updated_at": "2026-11-20T10:05:00+03:00",
        "completed_at": None,
    }


def woocommerce_cart(*, cart_id: int = 501, email: str = "john.smith@example.com") -> dict:
    return {
        "id": cart_id,
        "cart_key": uuid.uuid4().hex,
        "customer_id": 0,
        "email": email,
        "phone": "+447700900123",
        "billing": {"first_name": "John", "last_name": "Smith", "email": email, "phone": "+447700900123"},
        "consent": {"email": True, "whatsapp": False},
        "line_items": [{"product_id": 77, "name": "Wool Scarf", "quantity": 2, "price": "25.00"}],
        "total": "50.00",
        "currency": "GBP",
        "cart_url": "https://bosphorus.example.com/cart/?k=1",
        "status": "abandoned",
        "date_created_gmt": "2026-11-20T08:00:00",
        "date_modified_gmt": "2026-11-20T08:10:00",
    }


def ideasoft_cart(*, cart_id: int = 3001) -> dict:
    return {
        "id": cart_id,
        "member": {
            "id": 44,
            "firstname": "Mehmet",
            "surname": "Kaya",
            "email": "mehmet@example.com",
            "phoneNumber": "05321234567",
            "allowedToCampaigns": True,
        },
        "items": [{"product": {"id": 5, "name": "Deri Çanta"}, "quantity": 1, "price": 1450.0}],
        "amount": 1450.0,
        "currency": "TRY",
        "createdAt": "2026-11-20T09:00:00+03:00",
        "updatedAt": "2026-11-20T09:30:00+03:00",
        "isOrdered": False,
    }


def whatsapp_batch(
    *, messages: list[tuple[str, str, str]] = (), statuses: list[tuple[str, str, str]] = ()
) -> dict:
    """messages: (wamid, from, text); statuses: (wamid, status, recipient)."""
    value: dict = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "908501234567", "phone_number_id": "1234567890"},
    }
    if messages:
        value["contacts"] = [{"profile": {"name": "Ayşe"}, "wa_id": m[1]} for m in messages]
        value["messages"] = [
            {"from": m[1], "id": m[0], "timestamp": "1763632800", "type": "text", "text": {"body": m[2]}}
            for m in messages
        ]
    if statuses:
        value["statuses"] = [
            {"id": s[0], "status": s[1], "timestamp": "1763632801", "recipient_id": s[2]} for s in statuses
        ]
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA_ID", "changes": [{"field": "messages", "value": value}]}],
    }


def dumps(document: dict) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()


# -- signing and sending, computed here independently of cart_recovery.webhooks.signatures ------


def b64_hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def hex_hmac(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def shop_headers(
    platform: str, *, domain: str, secret: str, body: bytes, topic: str, delivery_id: str
) -> dict[str, str]:
    signature = b64_hmac(secret, body)
    if platform == "shopify":
        return {
            "X-Shopify-Shop-Domain": domain,
            "X-Shopify-Hmac-Sha256": signature,
            "X-Shopify-Topic": topic,
            "X-Shopify-Webhook-Id": delivery_id,
            "X-Shopify-API-Version": "2024-10",
        }
    if platform == "woocommerce":
        resource, _, event = topic.partition(".")
        return {
            "X-WC-Webhook-Source": f"https://{domain}/",
            "X-WC-Webhook-Signature": signature,
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": resource,
            "X-WC-Webhook-Event": event,
            "X-WC-Webhook-Delivery-ID": delivery_id,
            "X-WC-Webhook-ID": "12",
        }
    if platform == "ideasoft":
        return {
            "X-Ideasoft-Shop-Domain": domain,
            "X-Ideasoft-Hmac-Sha256": signature,
            "X-Ideasoft-Topic": topic,
            "X-Ideasoft-Webhook-Id": delivery_id,
        }
    raise ValueError(platform)


def fetch(conn: psycopg2.extensions.connection, query: str, *params) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def signed_shopify_checkout(
    shops, delivery_id: str, *, topic: str = "checkouts/update", checkout_id: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """A Shopify checkout webhook of the test shop: the raw body and every header, signed."""
    body = dumps(shopify_checkout() if checkout_id is None else shopify_checkout(checkout_id=checkout_id))
    headers = shop_headers(
        "shopify",
        domain=shops.shopify.domain,
        secret=shops.shopify.secret,
        body=body,
        topic=topic,
        delivery_id=delivery_id,
    )
    return body, {**headers, "Content-Type": "application/json"}
