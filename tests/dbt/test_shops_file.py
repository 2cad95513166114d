"""One definition of a shop: the shops file, which the models read from ``ops.shops``.

A shop's time zone, currency, language and country come from the file (copied into ``ops.shops``
before each build), never from a seed; a cart of a shop the file does not have fails the build
instead of silently becoming UTC and English.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dbt_raw_rows import (
    DBT_PROJECT,
    EXAMPLE_SHOPS,
    RawBatch,
    at,
    cart_key,
    dbt_env,
    iso,
    query,
    run_dbt,
    sync_shops,
    woo_cart,
)
from recovery_story import AS_OF

from cart_recovery.shops import load_shops

pytestmark = pytest.mark.slow

# A Turkish WooCommerce shop that only this module's shops file has.
LEVANT = "levant-woo"
LEVANT_SHOP = """
  - id: levant-woo
    platform: woocommerce
    domain: levant-ceramics.example.com
    api_base_url: https://levant-ceramics.example.com/wp-json/wc/v3
    country: TR
    timezone: Europe/Istanbul
    currency: TRY
    language: tr
    conn_id: shop_levant_woo
"""


@pytest.fixture(scope="module")
def shops_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shops") / "shops.yaml"
    path.write_text(EXAMPLE_SHOPS.read_text() + LEVANT_SHOP)
    return path


@pytest.fixture(scope="module")
def landed(database, shops_file):
    """A cart of the Levant shop, landed as the webhook service lands it (its phone number read
    in the shop's country), with the shops file naming the Levant shop."""
    import psycopg2

    with pytest.MonkeyPatch.context() as env:
        env.setenv("CART_RECOVERY_SHOPS_FILE", str(shops_file))
        raw = RawBatch()
        cart = woo_cart(
            701,
            0,
            "deniz@example.com.tr",
            "0532 999 88 77",
            "420.00",
            at("2026-12-20 09:00"),
            at("2026-12-20 09:00"),
            email_consent=True,
            whatsapp_consent=True,
        )
        raw.webhook("woocommerce", LEVANT, "cart.updated", {**cart, "currency": None}, at("2026-12-20 09:00"))
        conn = psycopg2.connect(database.url)
        raw.write(conn)
        yield conn
        conn.close()


def test_a_cart_of_a_shop_missing_from_the_shops_file_fails_the_build(landed):
    """The Levant shop's cart is stored, but the shops file (the example's) lacks the shop: the
    build fails on the test that names the problem, before anything is planned from it."""
    sync_shops(load_shops(EXAMPLE_SHOPS))
    # buildable, as Cosmos runs a model's task: the tests of these models (not the order and
    # customer shop tests), with the test over the source ops.shops in int_carts_unioned's
    selection = ["--select", "+int_carts_unioned", "--indirect-selection", "buildable"]
    result = subprocess.run(
        ["dbt", "build", *selection, "--vars", f'{{"as_of": "{iso(AS_OF)}"}}'],
        cwd=DBT_PROJECT,
        env=dbt_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0, result.stdout[-3000:]
    assert "Failure in test every_cart_shop_is_in_the_shops_file" in result.stdout, result.stdout[-3000:]
    assert " ERROR=1 " in result.stdout, result.stdout[-3000:]  # that test, and nothing else


def test_time_zone_language_and_currency_come_from_the_shops_file(landed, shops_file, monkeypatch):
    """With the shop in the file: its time zone, language and currency (the cart states none),
    and its phone number read in its country; no seed row needed."""
    monkeypatch.setenv("CART_RECOVERY_SHOPS_FILE", str(shops_file))
    run_dbt("build", "--full-refresh", as_of=AS_OF)  # copies the file into ops.shops first
    assert query(
        landed,
        "select timezone, language, currency, phone, free_shipping_threshold from marts.abandoned_carts "
        "where cart_key = %s",
        (cart_key(LEVANT, "woocommerce", "701"),),
    ) == [("Europe/Istanbul", "tr", "TRY", "+905329998877", None)]
    assert query(landed, "select country from ops.shops where shop_id = %s", (LEVANT,)) == [("TR",)]
