from __future__ import annotations

from pathlib import Path

import pytest

from cart_recovery.errors import ConfigurationError
from cart_recovery.shops import Platform, load_shops

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "shops.example.yaml"

SHOP = """
  - id: {id}
    platform: {platform}
    domain: {domain}
    api_base_url: https://{domain}
    country: {country}
    timezone: {timezone}
    currency: TRY
    language: tr
    conn_id: shop_{id}
"""


def _write(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / "shops.yaml"
    path.write_text("shops:\n" + "".join(SHOP.format(**{"country": "TR", **entry}) for entry in entries))
    return path


def test_example_file_loads():
    shops = load_shops(EXAMPLE)
    assert shops and all(isinstance(shop.platform, Platform) for shop in shops)
    assert {shop.id: shop.country for shop in shops}["bosphorus-woo"] == "GB"


def test_a_shop_without_a_country_is_refused_with_what_to_add(tmp_path):
    path = _write(tmp_path, {"id": "a", "platform": "shopify", "domain": "a.com", "timezone": "UTC"})
    path.write_text(path.read_text().replace("    country: TR\n", ""))
    with pytest.raises(ConfigurationError, match=r"shop 'a' has no country: add e.g. `country: TR`"):
        load_shops(path)


@pytest.mark.parametrize(
    ("country", "message"),
    [
        ("gb", r"unknown country 'gb' \(did you mean 'GB'\?\)"),
        ("UK", "unknown country 'UK': use an ISO 3166-1 alpha-2 code"),
        ("Turkey", "unknown country 'Turkey'"),
    ],
)
def test_an_unknown_country_is_refused(tmp_path, country, message):
    entry = {"id": "a", "platform": "shopify", "domain": "a.com", "timezone": "UTC", "country": country}
    with pytest.raises(ConfigurationError, match=message):
        load_shops(_write(tmp_path, entry))


def test_env_var_names_the_file(tmp_path, monkeypatch):
    path = _write(
        tmp_path,
        {"id": "a", "platform": "ideasoft", "domain": "a.myideasoft.com", "timezone": "Europe/Istanbul"},
    )
    monkeypatch.setenv("CART_RECOVERY_SHOPS_FILE", str(path))
    assert [shop.id for shop in load_shops()] == ["a"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "a", "platform": "magento", "domain": "a.com", "timezone": "UTC"}, "platform"),
        ({"id": "a", "platform": "shopify", "domain": "a.com", "timezone": "Mars/Olympus"}, "time zone"),
        ({"id": "Bad Id", "platform": "shopify", "domain": "a.com", "timezone": "UTC"}, "id"),
    ],
)
def test_invalid_entries_say_what_is_wrong(tmp_path, entry, message):
    with pytest.raises(ConfigurationError, match=message):
        load_shops(_write(tmp_path, entry))


def test_duplicate_domains_are_refused(tmp_path):
    path = _write(
        tmp_path,
        {"id": "a", "platform": "shopify", "domain": "same.com", "timezone": "UTC"},
        {"id": "b", "platform": "shopify", "domain": "same.com", "timezone": "UTC"},
    )
    with pytest.raises(ConfigurationError, match="duplicate shop domain"):
        load_shops(path)


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigurationError, match="CART_RECOVERY_SHOPS_FILE"):
        load_shops(tmp_path / "nope.yaml")
