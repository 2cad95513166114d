"""The recovery marts built by a real ``dbt build`` over raw rows from all four platforms.

One story per customer (``recovery_story.py``), landed through both ingest paths, then the marts
are checked for what the policy promises: first-time customers get no coupon, the holdout is
never sent anything, a later order completes the cart, copies of one cart land once. The module
builds in a warehouse of its own, and no test changes what the others read.
"""

from __future__ import annotations

import subprocess
from datetime import timedelta

import pytest
import yaml
from dbt_raw_rows import DBT_PROJECT, at, cart_key, customer_key, dbt_env, query
from recovery_story import HELD_OUT, IDEASOFT, REPEATER, SHOPIFY, TICIMAX, UK_BUYER, UK_PHONE, WOO

pytestmark = pytest.mark.slow


def plan(conn, shop_id: str, platform: str, source_cart_id: str) -> list[tuple]:
    return query(
        conn,
        """
        select stage, channel, template, coupon_pct, free_shipping, suppressed_reason, due_at,
            coupon_expires_at
        from marts.recovery_plan where cart_key = %s order by stage""",
        (cart_key(shop_id, platform, source_cart_id),),
    )


def reasons(rows: list[tuple]) -> list[str | None]:
    return [row[5] for row in rows]


def test_webhook_and_polled_copies_of_a_cart_land_once(built):
    rows = query(
        built,
        """
        select source_cart_id, email, phone, cart_value, abandoned_at from marts.abandoned_carts
        where cart_key in (%s, %s)""",
        (cart_key(SHOPIFY, "shopify", "7001"), cart_key(WOO, "woocommerce", "601")),
    )
    by_id = {row[0]: row for row in rows}
    assert len(rows) == 2
    assert by_id["7001"][1:4] == ("ayse@example.com", "+905321234567", 900)
    assert by_id["7001"][4] == at("2026-12-10 10:10")  # last update 09:40 + 30 minutes
    assert by_id["601"][3] == 25  # the newer webhook version wins over the older poll
    assert (
        query(built, "select count(*) from marts.abandoned_carts group by cart_key having count(*) > 1") == []
    )


def test_a_shopify_checkout_is_keyed_on_its_id_and_keeps_its_token(built):
    """The webhook versions carry the token, the polled one (same time) does not: one cart,
    keyed on the checkout id, with the token kept as an attribute."""
    rows = query(
        built,
        "select cart_key, checkout_token from marts.abandoned_carts "
        "where shop_id = %s and source_cart_id = %s",
        (SHOPIFY, "7001"),
    )
    assert rows == [(cart_key(SHOPIFY, "shopify", "7001"), "c7001token")]
    assert query(built, "select count(*) from marts.recovery_plan where cart_key = %s", (rows[0][0],)) == [
        (3,)
    ]


def test_first_time_customer_is_reminded_without_coupons(built):
    rows = plan(built, SHOPIFY, "shopify", "7001")
    assert [row[0] for row in rows] == [1, 2, 3]
    assert reasons(rows) == [None, None, None]
    assert {(row[1], row[3], row[4], row[7]) for row in rows} == {("whatsapp", 0, False, None)}
    assert rows[1][2] == "cart_reminder_followup_tr"
    flags = query(
        built,
        "select is_first_time, is_near_free_shipping from marts.abandoned_carts where cart_key = %s",
        (cart_key(SHOPIFY, "shopify", "7001"),),
    )
    assert flags == [(True, True)]


def test_repeat_abandoner_gets_coupons_once_per_30_days(built):
    offered = plan(built, SHOPIFY, "shopify", "7003")
    assert reasons(offered) == [None, None, None]
    assert [(row[1], row[3], row[4]) for row in offered] == [
        ("email", 0, False),
        ("email", 5, False),
        ("email", 10, True),
    ]
    assert offered[1][7] == offered[1][6] + timedelta(hours=48)
    capped = plan(built, SHOPIFY, "shopify", "7004")  # ten days after the last offer
    assert reasons(capped) == [None, "coupon_cap", "coupon_cap"]
    assert [row[3] for row in capped] == [0, 0, 0]


def test_holdout_customer_is_never_planned_to_send(built):
    rows = plan(built, WOO, "woocommerce", "601")
    assert reasons(rows) == ["holdout"] * 3
    assert query(
        built,
        "select is_holdout from marts.customers where customer_key = %s",
        (customer_key(WOO, customer_id=str(HELD_OUT)),),
    ) == [(True,)]


def test_cart_completed_by_a_later_order_is_suppressed(built):
    rows = plan(built, SHOPIFY, "shopify", "7005")
    assert reasons(rows) == [None, "completed", "completed"]
    assert query(
        built,
        "select is_completed, completed_at from marts.abandoned_carts where cart_key = %s",
        (cart_key(SHOPIFY, "shopify", "7005"),),
    ) == [(True, at("2026-12-12 10:00"))]


def test_pre_sale_holds_back_coupon_stages(built):
    assert reasons(plan(built, SHOPIFY, "shopify", "7006")) == [
        None,
        "pre_sale_no_coupon",
        "pre_sale_no_coupon",
    ]


def test_newer_cart_supersedes_the_remaining_stages(built):
    assert reasons(plan(built, SHOPIFY, "shopify", "7007")) == [
        None,
        "superseded_by_newer_cart",
        "superseded_by_newer_cart",
    ]
    assert reasons(plan(built, SHOPIFY, "shopify", "7008")) == [None, None, None]


def test_gift_deadline_halves_the_delays(built):
    rows = plan(built, IDEASOFT, "ideasoft", "401")
    assert [row[6] for row in rows] == [
        at("2026-12-27 07:15"),
        at("2026-12-27 09:00"),
        at("2026-12-27 19:00"),
    ]
    assert [(row[1], row[3]) for row in rows] == [("whatsapp", 0), ("whatsapp", 5), ("whatsapp", 10)]


def test_guest_without_consent_is_not_contacted(built):
    assert reasons(plan(built, WOO, "woocommerce", "602")) == ["no_consent"] * 3
    assert query(
        built,
        "select is_guest from marts.abandoned_carts where cart_key = %s",
        (cart_key(WOO, "woocommerce", "602"),),
    ) == [(True,)]


def test_phone_numbers_are_read_in_the_shops_country(built):
    """A UK shop's guest cart says 07700 900456, its account +44 7700 900456: one number
    (+447700900456, not the Turkish +907700900456), so one person: the cart is the account's.
    A Turkish shop's 0532 123 45 67 is +905321234567."""
    rows = query(
        built,
        "select phone, customer_key, is_guest, timezone, language, currency "
        "from marts.abandoned_carts where cart_key = %s",
        (cart_key(WOO, "woocommerce", "604"),),
    )
    assert rows == [
        (UK_PHONE, customer_key(WOO, customer_id=str(UK_BUYER)), False, "Europe/London", "en", "GBP")
    ]
    assert query(
        built,
        "select phone from marts.customers where customer_key = %s",
        (customer_key(WOO, customer_id=str(UK_BUYER)),),
    ) == [(UK_PHONE,)]
    assert [row[1] for row in plan(built, WOO, "woocommerce", "604")] == ["whatsapp"] * 3
    assert query(
        built,
        "select phone from marts.abandoned_carts where cart_key = %s",
        (cart_key(SHOPIFY, "shopify", "7001"),),
    ) == [("+905321234567",)]


def test_a_phone_number_that_does_not_parse_is_no_contact(built):
    """A guest whose only contact is "123": no phone, no contact, never a guess."""
    assert query(
        built,
        "select phone, email from marts.abandoned_carts where cart_key = %s",
        (cart_key(WOO, "woocommerce", "605"),),
    ) == [(None, None)]
    assert reasons(plan(built, WOO, "woocommerce", "605")) == ["no_contact"] * 3


def test_ticimax_cart_takes_contacts_and_local_times_from_the_member(built):
    rows = query(
        built,
        "select email, phone, message_consent, abandoned_at from marts.abandoned_carts where cart_key = %s",
        (cart_key(TICIMAX, "ticimax", "801"),),
    )
    assert rows == [("ayse.demir@example.com", "+905321112233", True, at("2026-12-12 11:35"))]
    assert plan(built, TICIMAX, "ticimax", "801")[0][1] == "whatsapp"


def test_carts_not_abandoned_are_left_out(built):
    keys = (cart_key(IDEASOFT, "ideasoft", "402"), cart_key(TICIMAX, "ticimax", "802"))
    assert query(built, "select cart_key from marts.abandoned_carts where cart_key in %s", (keys,)) == []


def test_customers_count_orders_and_abandonments(built):
    rows = query(
        built,
        "select orders_count, revenue, abandoned_count, is_holdout from marts.customers "
        "where customer_key = %s",
        (customer_key(SHOPIFY, customer_id=str(REPEATER)),),
    )
    assert rows == [(1, 640, 3, False)]


def test_as_of_from_the_environment_and_a_clear_error_when_malformed(built):
    """The DAG passes as_of as CART_RECOVERY_AS_OF (no var, so dbt's partial parse holds)."""
    env = {key: value for key, value in dbt_env().items() if key != "CART_RECOVERY_AS_OF"}

    def compile_abandoned_carts(as_of: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["dbt", "compile", "--select", "abandoned_carts"],
            cwd=DBT_PROJECT,
            env={**env, "CART_RECOVERY_AS_OF": as_of},
            capture_output=True,
            text=True,
        )

    good = compile_abandoned_carts("2026-12-28 12:00:00+00:00")
    assert good.returncode == 0, good.stdout[-3000:]
    assert "'2026-12-28 12:00:00+00:00'::timestamptz" in good.stdout

    bad = compile_abandoned_carts("yesterday")
    assert bad.returncode != 0
    assert "CART_RECOVERY_AS_OF must be an ISO 8601 timestamp with a UTC offset" in bad.stdout
    assert "got 'yesterday'" in bad.stdout


CONTRACT_MARTS = ("abandoned_carts", "recovery_plan", "customers")


def test_the_marts_dispatch_and_the_report_read_have_enforced_contracts(built):
    """Names and types are declared, enforced by dbt at build time, and what was built."""
    models_yml = DBT_PROJECT / "models" / "marts" / "recovery" / "_recovery__models.yml"
    models = yaml.safe_load(models_yml.read_text())
    declared = {model["name"]: model for model in models["models"] if model["name"] in CONTRACT_MARTS}
    assert set(declared) == set(CONTRACT_MARTS)
    built_types = query(
        built,
        """
        select table_name, column_name,
            case
                when data_type = 'numeric' and numeric_precision is not null
                    then format('numeric(%%s,%%s)', numeric_precision, numeric_scale)
                when data_type = 'timestamp with time zone' then 'timestamptz'
                else data_type
            end
        from information_schema.columns
        where table_schema = 'marts' and table_name in %s
        order by table_name, ordinal_position""",
        (CONTRACT_MARTS,),
    )
    for name, model in declared.items():
        assert model["config"]["contract"] == {"enforced": True}, name
        columns = [(column["name"], column["data_type"]) for column in model["columns"]]
        assert columns == [(column, kind) for table, column, kind in built_types if table == name], name
