"""An incremental build after new data equals a full refresh of the same data.

The story of ``recovery_story.py`` is built as of ``AS_OF``; then the later story lands (an
order that completes a cart, new carts, a guest who registers) and an incremental run as of
``AS_OF_LATER`` must give exactly the rows that a full refresh gives.
"""

from __future__ import annotations

import pytest
from dbt_raw_rows import cart_key, customer_key, query, run_dbt
from recovery_story import AS_OF_LATER, GUEST_ACCOUNT, SHOPIFY, TICIMAX, UK_BUYER, UK_PHONE, WOO, later_story

pytestmark = pytest.mark.slow


MART_TABLES = ("abandoned_carts", "recovery_plan", "customers")


def test_incremental_build_equals_full_refresh(built):
    # Checkout 7010 came by webhook (with its token): keyed on its id from the start.
    path_switcher = cart_key(SHOPIFY, "shopify", "7010")
    planned = "select stage from marts.recovery_plan where cart_key = %s order by stage"
    assert query(built, planned, (path_switcher,)) == [(1,), (2,), (3,)]

    later_story().write(built)
    run_dbt("run", as_of=AS_OF_LATER)
    with built.cursor() as cur:
        cur.execute("drop schema if exists incremental_copy cascade; create schema incremental_copy")
        for table in MART_TABLES:
            cur.execute(f"create table incremental_copy.{table} as select * from marts.{table}")
    built.commit()

    # the incremental build saw the new data
    assert query(
        built,
        "select is_completed from marts.abandoned_carts where cart_key = %s",
        (cart_key(SHOPIFY, "shopify", "7008"),),
    ) == [(True,)]
    assert query(
        built,
        "select count(*) from marts.abandoned_carts where cart_key in %s",
        ((cart_key(TICIMAX, "ticimax", "802"), cart_key(SHOPIFY, "shopify", "7009")),),
    ) == [(2,)]

    # the guest's old cart now belongs to the account registered with its email
    assert query(
        built,
        "select customer_key, is_guest from marts.abandoned_carts where cart_key = %s",
        (cart_key(WOO, "woocommerce", "602"),),
    ) == [(customer_key(WOO, customer_id=str(GUEST_ACCOUNT)), False)]

    # a webhook version (with the token) then a newer polled one (without): still one cart
    assert query(
        built,
        "select cart_key, cart_value, checkout_token from marts.abandoned_carts "
        "where shop_id = %s and source_cart_id = '7010'",
        (SHOPIFY,),
    ) == [(cart_key(SHOPIFY, "shopify", "7010"), 1300, "c7010token")]
    assert query(built, planned, (path_switcher,)) == [(1,), (2,), (3,)]

    # a UK guest's 07700 900456, read in the UK shop's country: the number of the account that
    # has +44 7700 900456, so the cart is that account's
    assert query(
        built,
        "select phone, customer_key from marts.abandoned_carts where cart_key = %s",
        (cart_key(WOO, "woocommerce", "603"),),
    ) == [(UK_PHONE, customer_key(WOO, customer_id=str(UK_BUYER)))]

    run_dbt("run", "--full-refresh", as_of=AS_OF_LATER)
    for table in MART_TABLES:
        (rows,) = query(built, f"select count(*) from marts.{table}")
        assert rows[0] > 0
        for left, right in (
            (f"marts.{table}", f"incremental_copy.{table}"),
            (f"incremental_copy.{table}", f"marts.{table}"),
        ):
            difference = query(built, f"select * from {left} except all select * from {right}")
            assert difference == [], f"{left} has rows {right} lacks: {difference[:3]}"
