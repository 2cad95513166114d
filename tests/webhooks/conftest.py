"""Fixtures for the webhook service: a fresh set of shops per test, their connections in the
environment, and the app on the test warehouse through fastapi's TestClient.

Every test gets shops with unique ids and domains, so tests never see each other's rows and no
table is truncated.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from fastapi.testclient import TestClient
from webhook_helpers import WHATSAPP_APP_SECRET, WHATSAPP_VERIFY_TOKEN

from cart_recovery.database import Database
from cart_recovery.webhooks.app import create_app
from cart_recovery.webhooks.config import WebhookConfig


@dataclass
class ShopUnderTest:
    id: str
    platform: str
    domain: str
    secret: str


@dataclass
class Shops:
    shopify: ShopUnderTest
    woocommerce: ShopUnderTest
    ideasoft: ShopUnderTest
    path: Path

    @property
    def ids(self) -> list[str]:
        return [self.shopify.id, self.woocommerce.id, self.ideasoft.id]


@pytest.fixture
def shops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Shops:
    suffix = uuid.uuid4().hex[:8]
    made = {}
    entries = []
    for platform, domain in (
        ("shopify", f"anatolia-{suffix}.myshopify.com"),
        ("woocommerce", f"bosphorus-{suffix}.example.com"),
        ("ideasoft", f"kapadokya-{suffix}.myideasoft.com"),
    ):
        shop = ShopUnderTest(
            id=f"wh-{platform}-{suffix}",
            platform=platform,
            domain=domain,
            secret=f"{platform}-secret-{suffix}",
        )
        made[platform] = shop
        conn_id = f"wh_{platform}_{suffix}"
        entries.append(
            f"  - id: {shop.id}\n    platform: {platform}\n    domain: {domain}\n"
            f"    api_base_url: https://{domain}\n    country: TR\n"
            "    timezone: Europe/Istanbul\n    currency: TRY\n"
            f"    language: tr\n    conn_id: {conn_id}\n"
        )
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            json.dumps({"conn_type": "http", "host": domain, "extra": {"webhook_secret": shop.secret}}),
        )
    path = tmp_path / "shops.yaml"
    path.write_text("shops:\n" + "".join(entries))
    monkeypatch.setenv("CART_RECOVERY_SHOPS_FILE", str(path))
    monkeypatch.setenv(
        "AIRFLOW_CONN_WHATSAPP_DEFAULT",
        json.dumps(
            {
                "conn_type": "http",
                "host": "graph.facebook.com",
                "extra": {"app_secret": WHATSAPP_APP_SECRET, "verify_token": WHATSAPP_VERIFY_TOKEN},
            }
        ),
    )
    return Shops(path=path, **made)


@pytest.fixture
def config(shops: Shops, database: Database) -> WebhookConfig:
    return WebhookConfig.from_env(database_url=database.url)


@pytest.fixture
def client(config: WebhookConfig) -> Iterator[TestClient]:
    with TestClient(create_app(config)) as test_client:
        yield test_client


@pytest.fixture
def db(database: Database) -> Iterator[psycopg2.extensions.connection]:
    """An autocommit connection, so each query sees what the app committed."""
    conn = psycopg2.connect(database.url)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()
