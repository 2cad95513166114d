"""Helpers for the dbt tests: raw rows in the platforms' own payload shapes, and a dbt runner.

The payloads follow docs/raw-layer.md (the shapes the simulator's fakes produce), so these tests
exercise the same parsing the production data goes through. Rows are written to ``raw`` the way
the two ingest paths write them: webhook deliveries and polled record versions, with the normal
form of their phone numbers in ``ops.phone_numbers`` (``cart_recovery.phones``, in the same
transaction, as ingest does). ``run_dbt`` first copies the shops file into ``ops.shops``, as
``cart_transform`` does before each build.

The shops are the environment's shops file (``CART_RECOVERY_SHOPS_FILE``), else
``config/shops.example.yaml``, the shops the stories are written for.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg2
import pytest
from psycopg2.extras import Json, execute_values

from cart_recovery import phones, settings
from cart_recovery.shops import SHOPS_FILE_ENV, Shop, load_shops, sync_shops_table

DBT_PROJECT = Path(__file__).resolve().parents[2] / "dbt_project"
EXAMPLE_SHOPS = Path(__file__).resolve().parents[2] / "config" / "shops.example.yaml"
HOLDOUT_PCT = 10  # dbt_project.yml vars.holdout_pct
ISTANBUL = ZoneInfo("Europe/Istanbul")


def at(text: str) -> datetime:
    """A UTC moment from 'YYYY-MM-DD HH:MM'."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_gmt(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat()


def local(moment: datetime, tz: ZoneInfo = ISTANBUL) -> str:
    return moment.astimezone(tz).replace(tzinfo=None).isoformat()


# --- the model's keys, replicated so a test can choose holdout / non-holdout customers -------------


def customer_key(shop_id: str, *, customer_id: str | None = None, email: str | None = None) -> str:
    kind, value = ("id", customer_id) if customer_id is not None else ("email", email)
    return hashlib.md5(f"{shop_id}|{kind}|{value}".encode()).hexdigest()


def cart_key(shop_id: str, platform: str, source_cart_id: str) -> str:
    return hashlib.md5(f"{shop_id}|{platform}|{source_cart_id}".encode()).hexdigest()


def is_holdout(key: str) -> bool:
    return int(hashlib.md5(f"holdout|{key}".encode()).hexdigest()[:8], 16) % 10000 < HOLDOUT_PCT * 100


def pick_customer_id(shop_id: str, start: int, *, holdout: bool) -> int:
    """The first customer id from ``start`` on whose holdout assignment is as asked."""
    candidate = start
    while is_holdout(customer_key(shop_id, customer_id=str(candidate))) != holdout:
        candidate += 1
    return candidate


# --- raw rows --------------------------------------------------------------------------------------


@dataclass
class RawBatch:
    """Rows for raw.webhook_events and raw.polled_records, written in one go."""

    webhooks: list[tuple] = field(default_factory=list)
    polled: list[tuple] = field(default_factory=list)

    def webhook(self, platform: str, shop_id: str, topic: str, payload: dict, received_at: datetime) -> None:
        delivery = hashlib.sha1(json.dumps([platform, shop_id, topic, payload], sort_keys=True).encode())
        self.webhooks.append((platform, shop_id, topic, delivery.hexdigest(), received_at, Json(payload)))

    def poll(
        self,
        platform: str,
        shop_id: str,
        entity: str,
        record_id: object,
        updated_at: datetime,
        payload: dict,
        fetched_at: datetime | None = None,
    ) -> None:
        self.polled.append(
            (
                platform,
                shop_id,
                entity,
                str(record_id),
                updated_at,
                fetched_at or updated_at + timedelta(minutes=5),
                Json(polled_shape(platform, entity, payload)),
            )
        )

    def write(self, conn: psycopg2.extensions.connection) -> None:
        countries = {shop.id: shop.country for shop in configured_shops()}
        payloads: dict[str, list] = {}
        for row in self.webhooks:
            payloads.setdefault(row[1], []).append(row[5].adapted)
        for row in self.polled:
            payloads.setdefault(row[1], []).append(row[6].adapted)
        with conn.cursor() as cur:
            for shop_id, documents in payloads.items():
                if shop_id in countries:  # a shop outside the shops file has no country to read in
                    phones.record_payload_phones(cur, shop_id, countries[shop_id], documents)
            if self.webhooks:
                execute_values(
                    cur,
                    "insert into raw.webhook_events "
                    "(platform, shop_id, topic, delivery_id, received_at, payload) values %s",
                    self.webhooks,
                )
            if self.polled:
                execute_values(
                    cur,
                    "insert into raw.polled_records (platform, shop_id, entity, record_id, "
                    "record_updated_at, fetched_at, payload) values %s",
                    self.polled,
                )
        conn.commit()


def polled_shape(platform: str, entity: str, payload: dict) -> dict:
    """A payload as the polling path lands it, not as a webhook delivers it.

    Shopify is polled through the Admin GraphQL API, which has no checkout token or cart token;
    ``cart_recovery.platforms.shopify.rest_checkout``/``rest_order`` land those keys as null (and
    an order without its checkout id). A fixture that kept them would hide a key built on them.
    """
    if platform != "shopify":
        return payload
    if entity == "cart":
        return {**payload, "token": None, "cart_token": None}
    if entity == "order":
        return {**payload, "checkout_id": None, "checkout_token": None, "cart_token": None}
    return payload


# --- payloads in each platform's shape ---------------------------------------------------------------


def shopify_customer(
    customer_id: int,
    first_name: str,
    email: str | None,
    phone: str | None,
    email_consent: bool,
    sms_consent: bool,
) -> dict:
    return {
        "id": customer_id,
        "email": email,
        "phone": phone,
        "first_name": first_name,
        "last_name": "Yılmaz",
        "email_marketing_consent": {"state": "subscribed" if email_consent else "not_subscribed"},
        "sms_marketing_consent": {"state": "subscribed" if sms_consent else "unsubscribed"},
    }


def shopify_checkout(
    checkout_id: int,
    customer: dict | None,
    total: str,
    created: datetime,
    updated: datetime,
    completed: datetime | None = None,
    locale: str = "tr-TR",
) -> dict:
    return {
        "id": checkout_id,
        "token": f"c{checkout_id}token",
        "cart_token": f"c{checkout_id}cart",
        "email": customer["email"] if customer else None,
        "phone": customer["phone"] if customer else None,
        "customer_locale": locale,
        "customer": customer,
        "line_items": [
            {
                "product_id": 9001,
                "variant_id": 9101,
                "title": "Linen Shirt",
                "variant_title": "M",
                "quantity": 1,
                "price": total,
            }
        ],
        "total_price": total,
        "currency": "TRY",
        "abandoned_checkout_url": f"https://anatolia-linen.myshopify.com/checkouts/c{checkout_id}/recover",
        "created_at": iso(created),
        "updated_at": iso(updated),
        "completed_at": iso(completed) if completed else None,
    }


def shopify_order(
    order_id: int, customer: dict, total: str, created: datetime, coupon: str | None = None
) -> dict:
    return {
        "id": order_id,
        "email": customer["email"],
        "phone": customer["phone"],
        "customer": {"id": customer["id"]},
        "checkout_token": None,
        "cart_token": None,
        "total_price": total,
        "currency": "TRY",
        "discount_codes": [{"code": coupon, "amount": "10.00", "type": "percentage"}] if coupon else [],
        "created_at": iso(created),
        "updated_at": iso(created),
    }


def woo_cart(
    cart_id: int,
    customer_id: int,
    email: str | None,
    phone: str | None,
    total: str,
    created: datetime,
    updated: datetime,
    *,
    email_consent: bool,
    whatsapp_consent: bool,
    status: str = "abandoned",
) -> dict:
    return {
        "id": cart_id,
        "cart_key": f"wc_cart_{cart_id}",
        "customer_id": customer_id,
        "email": email,
        "phone": phone,
        "billing": {"first_name": "Emily", "last_name": "Clarke", "email": email, "phone": phone},
        "consent": {"email": email_consent, "whatsapp": whatsapp_consent},
        "line_items": [{"product_id": 501, "name": "Cotton Throw", "quantity": 2, "price": "12.50"}],
        "total": total,
        "currency": "GBP",
        "cart_url": f"https://bosphorus.example/cart/{cart_id}",
        "status": status,
        "date_created_gmt": iso_gmt(created),
        "date_modified_gmt": iso_gmt(updated),
    }


def woo_order(order_id: int, customer_id: int, email: str, total: str, created: datetime) -> dict:
    return {
        "id": order_id,
        "order_key": f"wc_order_{order_id}",
        "status": "processing",
        "customer_id": customer_id,
        "billing": {"email": email, "phone": None},
        "total": total,
        "currency": "GBP",
        "coupon_lines": [],
        "date_created_gmt": iso_gmt(created),
        "date_modified_gmt": iso_gmt(created),
    }


def ticimax_cart(cart_id: int, member_id: int, total: str, created: datetime, updated: datetime) -> dict:
    return {
        "SepetID": cart_id,
        "UyeID": member_id,
        "SepetTarihi": local(created),
        "GuncellemeTarihi": local(updated),
        "ParaBirimi": "TRY",
        "ToplamTutar": total,
        "Urunler": [{"UrunID": 77, "UrunAdi": "Bakır Cezve", "Adet": 1, "Fiyat": total}],
    }


def ticimax_member(
    member_id: int, email: str, phone: str, created: datetime, *, mail_consent: bool, sms_consent: bool
) -> dict:
    return {
        "UyeID": member_id,
        "Isim": "Ayşe",
        "Soyisim": "Demir",
        "Mail": email,
        "CepTelefonu": phone,
        "MailIzin": mail_consent,
        "SmsIzin": sms_consent,
        "KayitTarihi": local(created),
        "GuncellemeTarihi": local(created),
    }


def ideasoft_cart(
    cart_id: int, member: dict, amount: str, created: datetime, updated: datetime, ordered: bool = False
) -> dict:
    return {
        "id": cart_id,
        "member": member,
        "items": [{"product": {"id": 301, "name": "Kilim Cushion"}, "quantity": 1, "price": amount}],
        "amount": amount,
        "currency": "TRY",
        "createdAt": iso(created),
        "updatedAt": iso(updated),
        "isOrdered": ordered,
    }


def ideasoft_member(member_id: int, email: str, phone: str | None, allowed: bool) -> dict:
    return {
        "id": member_id,
        "firstname": "Mehmet",
        "surname": "Kaya",
        "email": email,
        "phoneNumber": phone,
        "allowedToCampaigns": allowed,
    }


# --- dbt -------------------------------------------------------------------------------------------


def dbt_env(**extra: str) -> dict[str, str]:
    """The test environment, with dbt's target folder private to this process: two test sessions
    (or xdist workers) building at once never write each other's manifest or partial parse."""
    target = Path(tempfile.gettempdir()) / f"cart-recovery-dbt-target-{os.getpid()}"
    return {**os.environ, "DBT_TARGET_PATH": str(target), **extra}


def configured_shops() -> list[Shop]:
    """The environment's shops file, else the example file the stories are written for."""
    configured = os.environ.get(SHOPS_FILE_ENV)
    return load_shops(Path(configured) if configured else EXAMPLE_SHOPS)


def sync_shops(shops: list[Shop] | None = None) -> dict[str, list[str]]:
    """The shops (default: ``configured_shops()``) into ``ops.shops`` of the test warehouse."""
    conn = psycopg2.connect(os.environ[settings.DATABASE_URL_ENV])
    try:
        return sync_shops_table(conn, configured_shops() if shops is None else shops)
    finally:
        conn.close()


def run_dbt(*args: str, as_of: datetime, sync: bool = True) -> float:
    """Run dbt in the project with the test environment; returns the seconds it took. First the
    shops file goes into ``ops.shops``, as ``cart_transform`` does before each build (``sync``)."""
    if sync:
        sync_shops()
    started = time.monotonic()
    result = subprocess.run(
        ["dbt", *args, "--vars", json.dumps({"as_of": iso(as_of)})],
        cwd=DBT_PROJECT,
        env=dbt_env(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"dbt {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}")
    return time.monotonic() - started


def query(conn: psycopg2.extensions.connection, sql: str, params: tuple = ()) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    conn.rollback()
    return rows
