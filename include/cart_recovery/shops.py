"""The shops file: the one place to add a shop.

``config/shops.yaml`` (or the file named by ``CART_RECOVERY_SHOPS_FILE``) holds a top-level
``shops:`` list. Credentials never live here: ``conn_id`` names the Airflow connection that holds
them (resolved from ``AIRFLOW_CONN_<ID>`` environment variables), with the webhook secret in the
connection's extra as ``webhook_secret``.

The dbt models read the shops from the table ``ops.shops``, which :func:`sync_shops_table` makes
equal to the file (``cart_transform`` runs it before every build, ``cart-recovery shops sync`` on
demand): the file is the one definition, the table its copy in the warehouse.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cart_recovery import phones, settings
from cart_recovery.errors import ConfigurationError
from cart_recovery.shop_policy import ShopPolicy

SHOPS_FILE_ENV = "CART_RECOVERY_SHOPS_FILE"


class Platform(StrEnum):
    SHOPIFY = "shopify"
    WOOCOMMERCE = "woocommerce"
    TICIMAX = "ticimax"
    IDEASOFT = "ideasoft"


class Shop(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Stable id used in every table.")
    platform: Platform
    domain: str = Field(description="The shop's domain as the platform sends it in webhook headers.")
    api_base_url: str
    country: str = Field(
        description="ISO 3166-1 alpha-2 (GB, TR): phone numbers without a country code are read in it."
    )
    timezone: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    language: str = Field(pattern=r"^[a-z]{2}$")
    conn_id: str
    name: str | None = Field(default=None, description="The name customers know, used in messages.")
    policy: ShopPolicy | None = Field(
        default=None, description="What the assistant may tell customers (cart_recovery.shop_policy)."
    )

    @property
    def display_name(self) -> str:
        """``name``, else the id in words (``anatolia-shopify`` -> ``Anatolia Shopify``)."""
        return self.name or self.id.replace("-", " ").replace("_", " ").title()

    @model_validator(mode="before")
    @classmethod
    def _country_given(cls, data):
        if isinstance(data, dict) and not data.get("country"):
            raise ValueError(
                f"shop {data.get('id')!r} has no country: add e.g. `country: TR` (the ISO 3166-1 alpha-2 "
                "code of the country whose phone numbers the shop's customers type without a country code)"
            )
        return data

    @field_validator("country")
    @classmethod
    def _known_country(cls, value: str) -> str:
        if not phones.is_country(value):
            hint = f" (did you mean {value.upper()!r}?)" if phones.is_country(value.upper()) else ""
            raise ValueError(
                f"unknown country {value!r}{hint}: use an ISO 3166-1 alpha-2 code in capitals, e.g. GB or TR"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value


class ShopsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shops: list[Shop]

    @field_validator("shops")
    @classmethod
    def _unique(cls, shops: list[Shop]) -> list[Shop]:
        for attr in ("id", "domain"):
            values = [getattr(s, attr) for s in shops]
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"duplicate shop {attr}: {', '.join(duplicates)}")
        return shops


def shops_file_path() -> Path:
    configured = os.environ.get(SHOPS_FILE_ENV)
    return Path(configured) if configured else settings.Paths.from_env().home / "config" / "shops.yaml"


def load_shops(path: Path | None = None) -> list[Shop]:
    path = path or shops_file_path()
    if not path.exists():
        raise ConfigurationError(
            f"Shops file {path} not found. Copy config/shops.example.yaml there, or set {SHOPS_FILE_ENV}."
        )
    try:
        document = yaml.safe_load(path.read_text()) or {}
        return ShopsFile.model_validate(document).shops
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigurationError(f"{path} is invalid:\n{exc}") from exc


# -- the shops in the warehouse ----------------------------------------------------------------

_UPSERT_SQL = """
insert into ops.shops as shops
    (shop_id, platform, country, timezone, currency, language, display_name, free_shipping_threshold)
values (%(shop_id)s, %(platform)s, %(country)s, %(timezone)s, %(currency)s, %(language)s, %(display_name)s,
    %(free_shipping_threshold)s)
on conflict (shop_id) do update set
    platform = excluded.platform, country = excluded.country, timezone = excluded.timezone,
    currency = excluded.currency, language = excluded.language, display_name = excluded.display_name,
    free_shipping_threshold = excluded.free_shipping_threshold
where (shops.platform, shops.country, shops.timezone, shops.currency, shops.language, shops.display_name,
        shops.free_shipping_threshold)
    is distinct from (excluded.platform, excluded.country, excluded.timezone, excluded.currency,
        excluded.language, excluded.display_name, excluded.free_shipping_threshold)
returning shop_id
"""
_CHANGE_SQL = "insert into ops.shop_changes (shop_id, change, definition) values (%s, %s, %s)"


def _row(shop: Shop) -> dict[str, str | None]:
    free_over = shop.policy.shipping.free_over if shop.policy else None
    return {
        "shop_id": shop.id,
        "platform": shop.platform.value,
        "country": shop.country,
        "timezone": shop.timezone,
        "currency": shop.currency,
        "language": shop.language,
        "display_name": shop.display_name,
        "free_shipping_threshold": None if free_over is None else str(free_over),
    }


def sync_shops_table(conn, shops: list[Shop]) -> dict[str, list[str]]:
    """Make ``ops.shops`` equal to ``shops`` (the shops file), in one transaction of ``conn`` (a
    psycopg2 connection); returns the shop ids ``added``, ``changed`` and ``removed``.

    Each of those is logged in ``ops.shop_changes``, which makes the next ``cart_transform`` build
    a full refresh (the models computed history with the old definition). A shop added, or whose
    country changed, gets the phone numbers of its stored payloads read in its country
    (:func:`cart_recovery.phones.backfill_shop`). A shop removed from the file whose carts are
    still stored fails the next build (dbt test ``every_cart_shop_is_in_the_shops_file``): add it
    back, or erase its data. Idempotent: a second sync of the same file changes nothing.
    """
    import json

    result: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
    with conn, conn.cursor() as cur:
        # One sync at a time (cart_transform runs and the command line may overlap).
        cur.execute("lock table ops.shops in share row exclusive mode")
        cur.execute("select shop_id, country from ops.shops")
        countries = dict(cur.fetchall())
        for shop in shops:
            row = _row(shop)
            cur.execute(_UPSERT_SQL, row)
            if cur.fetchone() is None:
                continue
            change = "changed" if shop.id in countries else "added"
            result[change].append(shop.id)
            cur.execute(_CHANGE_SQL, (shop.id, change, json.dumps(row)))
            if countries.get(shop.id) != shop.country:
                phones.backfill_shop(cur, shop.id, shop.country)
        result["removed"] = sorted(set(countries) - {shop.id for shop in shops})
        for shop_id in result["removed"]:
            cur.execute("delete from ops.shops where shop_id = %s", (shop_id,))
            cur.execute(_CHANGE_SQL, (shop_id, "removed", None))
    return result


def sync_configured_shops(conn_id: str | None = None) -> dict[str, list[str]]:
    """``sync_shops_table`` with the shops file and the warehouse connection (the DAG's task)."""
    import contextlib

    import psycopg2

    from cart_recovery.ingest import warehouse_url

    shops = load_shops()
    with contextlib.closing(psycopg2.connect(warehouse_url(conn_id))) as conn:
        return sync_shops_table(conn, shops)
