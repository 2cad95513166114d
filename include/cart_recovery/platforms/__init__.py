"""Incremental polling clients, one module per shop platform; ``client_for`` picks the right one."""

from __future__ import annotations

from cart_recovery.platforms.base import (
    ENTITIES,
    PlatformAuthError,
    PlatformClient,
    PlatformError,
    PlatformUnavailable,
    PolledRecord,
    RetryPolicy,
    Window,
)
from cart_recovery.shops import Platform, Shop

__all__ = [
    "ENTITIES",
    "PlatformAuthError",
    "PlatformClient",
    "PlatformError",
    "PlatformUnavailable",
    "PolledRecord",
    "RetryPolicy",
    "Window",
    "client_for",
]


def client_for(shop: Shop, **kwargs) -> PlatformClient:
    """The polling client for ``shop``'s platform, using the shop's Airflow connection."""
    if shop.platform is Platform.SHOPIFY:
        from cart_recovery.platforms.shopify import ShopifyClient as client_class
    elif shop.platform is Platform.WOOCOMMERCE:
        from cart_recovery.platforms.woocommerce import WooCommerceClient as client_class
    elif shop.platform is Platform.TICIMAX:
        from cart_recovery.platforms.ticimax import TicimaxClient as client_class
    else:
        from cart_recovery.platforms.ideasoft import IdeasoftClient as client_class
    return client_class(shop, **kwargs)
