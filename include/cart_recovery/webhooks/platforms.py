"""Which headers each shop platform sends with a webhook, and how its shop is identified.

Shopify and WooCommerce are documented (see shared/DOMAIN.md). Ideasoft's webhook headers are
NOT documented publicly; the names below are our assumption, kept in this one table so that
they are easy to correct once confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from cart_recovery.shops import Platform


@dataclass(frozen=True)
class WebhookHeaders:
    platform: Platform
    shop: str
    signature: str
    topic: str
    delivery_id: str
    shop_is_url: bool = False  # WooCommerce sends the shop's URL, not its domain
    verified: bool = True  # False: header names assumed, not confirmed by the platform's docs


WEBHOOK_HEADERS: dict[Platform, WebhookHeaders] = {
    Platform.SHOPIFY: WebhookHeaders(
        platform=Platform.SHOPIFY,
        shop="X-Shopify-Shop-Domain",
        signature="X-Shopify-Hmac-Sha256",
        topic="X-Shopify-Topic",
        delivery_id="X-Shopify-Webhook-Id",
    ),
    Platform.WOOCOMMERCE: WebhookHeaders(
        platform=Platform.WOOCOMMERCE,
        shop="X-WC-Webhook-Source",
        signature="X-WC-Webhook-Signature",
        topic="X-WC-Webhook-Topic",
        delivery_id="X-WC-Webhook-Delivery-ID",
        shop_is_url=True,
    ),
    Platform.IDEASOFT: WebhookHeaders(  # unverified
        platform=Platform.IDEASOFT,
        shop="X-Ideasoft-Shop-Domain",
        signature="X-Ideasoft-Hmac-Sha256",
        topic="X-Ideasoft-Topic",
        delivery_id="X-Ideasoft-Webhook-Id",
        verified=False,
    ),
}


def normalise_domain(value: str) -> str:
    """``https://Shop.Example.com/`` and ``shop.example.com.`` both become ``shop.example.com``."""
    value = value.strip()
    if "://" in value:
        value = urlsplit(value).hostname or ""
    return value.split("/")[0].rstrip(".").lower()
