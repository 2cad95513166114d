"""``cart-recovery assistant reply``: end to end as a subprocess, on the example shops file, with
no database and with a cart read from marts.abandoned_carts in a real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extras import Json

from cart_recovery import cli
from cart_recovery.assistant.carts import load_cart
from cart_recovery.settings import DATABASE_URL_ENV

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "shops.example.yaml"
CART_RECOVERY = str(Path(sys.executable).parent / "cart-recovery")
# Generous: the first reply of a process trains the classifier, slow on a loaded machine.
TIMEOUT_S = 600


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CART_RECOVERY, "assistant", "reply", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def test_reply_json_without_a_database():
    # A database URL nothing listens on: the command must not need one without --cart.
    env = {
        **os.environ,
        "CART_RECOVERY_SHOPS_FILE": str(EXAMPLE),
        DATABASE_URL_ENV: "postgresql://nobody@127.0.0.1:9/nowhere",
    }
    done = _run("--shop", "anatolia-shopify", "--text", "kargo ne zaman gelir?", "--json", env=env)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["intent"] == "shipping" and document["language"] == "tr"
    assert "₺1.500,00" in document["reply"] and "₺89,90" in document["reply"]
    assert document["actions"] == []


def test_unknown_shop_names_the_known_ones(monkeypatch, capsys):
    monkeypatch.setenv("CART_RECOVERY_SHOPS_FILE", str(EXAMPLE))
    code = cli.main(["assistant", "reply", "--shop", "nope", "--text", "merhaba", "--json"])
    assert code == 2
    err = capsys.readouterr().err
    assert "No shop 'nope'" in err and "anatolia-shopify" in err


LINES = [
    {"product_id": "101", "title": "Seramik Kupa", "variant_title": None, "quantity": 1, "price": 189.90},
    {"product_id": "102", "title": "Keten Gömlek", "variant_title": "M", "quantity": 1, "price": 749.90},
]


@pytest.fixture(scope="module")
def cart_database(module_database):
    with psycopg2.connect(module_database.url) as conn, conn.cursor() as cur:
        cur.execute(
            "create schema if not exists marts; create schema if not exists staging; "
            "create table marts.abandoned_carts (cart_key text primary key, shop_id text, currency text, "
            "cart_value numeric(14, 2), line_items jsonb, cart_url text, language text); "
            "create table staging.stg_shopify__products (shop_id text, product_id text, product_type text)"
        )
        cur.execute(
            "insert into marts.abandoned_carts values (%s, %s, 'TRY', 939.80, %s, %s, 'tr')",
            ("cart-1", "anatolia-shopify", Json(LINES), "https://anatolia-linen.myshopify.com/cart/1"),
        )
        cur.execute(
            "insert into staging.stg_shopify__products values "
            "('anatolia-shopify', '101', 'home'), ('anatolia-shopify', '102', 'apparel')"
        )
    return module_database


def test_load_cart_reads_lines_value_and_product_types(cart_database):
    with psycopg2.connect(cart_database.url) as conn, conn.cursor() as cur:
        cart = load_cart(cur, "anatolia-shopify", "cart-1")
    assert cart.value == Decimal("939.80") and cart.currency == "TRY" and cart.language == "tr"
    assert [(line.title, line.product_type) for line in cart.lines] == [
        ("Seramik Kupa", "home"),
        ("Keten Gömlek", "apparel"),
    ]


def test_missing_cart_is_a_clear_error(cart_database, monkeypatch, capsys):
    monkeypatch.setenv("CART_RECOVERY_SHOPS_FILE", str(EXAMPLE))
    code = cli.main(["assistant", "reply", "--shop", "anatolia-shopify", "--text", "x", "--cart", "nope"])
    assert code == 2
    assert "No abandoned cart 'nope' of shop 'anatolia-shopify'" in capsys.readouterr().err


def test_reply_with_a_cart(cart_database):
    env = {**os.environ, "CART_RECOVERY_SHOPS_FILE": str(EXAMPLE)}
    done = _run(
        "--shop", "anatolia-shopify", "--text", "kargo ucreti ne kadar", "--cart", "cart-1", "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["intent"] == "shipping" and document["actions"] == ["pause_episode"]
    # 1500.00 - 939.80 = 560.20 to free shipping
    assert "₺939,80" in document["reply"] and "₺560,20" in document["reply"]
