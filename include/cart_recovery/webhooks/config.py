"""The webhook service's configuration: shops with their secrets, WhatsApp, limits, database.

Read once at startup. A shop whose connection or ``webhook_secret`` is missing stops the service
with a message saying what to set: a silently unverifiable shop would answer 401 to every
delivery until the platform disables its webhooks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from cart_recovery import connections
from cart_recovery.dispatch.links import LinkSigner
from cart_recovery.errors import ConfigurationError
from cart_recovery.shops import Platform, Shop, load_shops
from cart_recovery.webhooks.platforms import WEBHOOK_HEADERS, normalise_domain

log = logging.getLogger(__name__)

MAX_BYTES_ENV = "CART_RECOVERY_WEBHOOK_MAX_BYTES"
POOL_SIZE_ENV = "CART_RECOVERY_WEBHOOK_DB_POOL_SIZE"
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_POOL_SIZE = 40  # matches the default size of the threadpool that runs the inserts


@dataclass(frozen=True)
class ShopSecret:
    shop: Shop
    secret: str = field(repr=False)


@dataclass(frozen=True)
class WhatsAppSecrets:
    app_secret: str = field(repr=False)
    verify_token: str = field(repr=False)


@dataclass(frozen=True)
class WebhookConfig:
    database_url: str
    shops: dict[tuple[Platform, str], ShopSecret]  # (platform, normalised domain) -> shop
    whatsapp: WhatsAppSecrets | None
    max_body_bytes: int = DEFAULT_MAX_BYTES
    pool_size: int = DEFAULT_POOL_SIZE
    links: LinkSigner | None = None  # None: /r/ and /u/ answer 404

    def find_shop(self, platform: Platform, domain: str) -> ShopSecret | None:
        return self.shops.get((platform, normalise_domain(domain)))

    @classmethod
    def from_env(cls, database_url: str | None = None) -> WebhookConfig:
        if database_url is None:
            from cart_recovery.database import Database

            database_url = Database.from_env().url
        return cls(
            database_url=database_url,
            shops=shop_secrets(load_shops()),
            whatsapp=whatsapp_secrets(),
            max_body_bytes=_positive_int(MAX_BYTES_ENV, DEFAULT_MAX_BYTES),
            pool_size=_positive_int(POOL_SIZE_ENV, DEFAULT_POOL_SIZE),
            links=link_signer(),
        )


def shop_secrets(shops: list[Shop]) -> dict[tuple[Platform, str], ShopSecret]:
    found = {}
    for shop in shops:
        if shop.platform not in WEBHOOK_HEADERS:
            continue  # Ticimax is polled only
        secret = connections.required_extra(shop.conn_id, "webhook_secret")
        found[(shop.platform, normalise_domain(shop.domain))] = ShopSecret(shop, secret)
    return found


def whatsapp_secrets() -> WhatsAppSecrets | None:
    conn_id = connections.WHATSAPP_CONN_ID
    if not os.environ.get(connections.env_var_name(conn_id)):
        log.warning(
            "%s is not set: /webhooks/whatsapp will refuse every request", connections.env_var_name(conn_id)
        )
        return None
    return WhatsAppSecrets(
        app_secret=connections.required_extra(conn_id, "app_secret"),
        verify_token=connections.required_extra(conn_id, "verify_token"),
    )


def link_signer() -> LinkSigner | None:
    """The click and unsubscribe links' signer; without its settings the service still starts
    (webhooks matter more than links) and says once what to set."""
    try:
        return LinkSigner.from_env()
    except ConfigurationError as exc:
        log.warning("Click and unsubscribe links are off (/r/ and /u/ answer 404): %s", exc)
        return None


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, got {raw!r}")
    return value
