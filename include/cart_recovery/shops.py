"""The shops file: the one place to add a shop.

``config/shops.yaml`` (or the file named by ``CART_RECOVERY_SHOPS_FILE``) holds a top-level
``shops:`` list. Credentials never live here: ``conn_id`` names the Airflow connection that holds
them (resolved from ``AIRFLOW_CONN_<ID>`` environment variables), with the webhook secret in the
connection's extra as ``webhook_secret``.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cart_recovery import settings
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
