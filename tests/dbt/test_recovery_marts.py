"""The recovery marts built by a real ``dbt build`` over raw rows from all four platforms.

One story per customer (see ``story``), landed through both ingest paths, then the marts are
checked for what the policy promises: first-time customers get no coupon, the holdout is never
sent anything, a later order completes the cart, copies of one cart land once, and an
incremental build after new data equals a full refresh.
"""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta

import psycopg2
import pytest
from dbt_raw_rows import (
    DBT_PROJECT,
    RawBatch,
    at,
    cart_key,
    customer_key,
    ideasoft_cart,
    ideasoft_member,
    is_holdout,
    iso_gmt,
    pick_customer_id,
    query,
    run_dbt,
    shopify_checkout,
    shopify_customer,
    shopify_order,
    ticimax_cart,
    ticimax_member,
    truncate_raw,
    woo_cart,
    woo_order,
)

pytestmark = pytest.mark.slow

SHOPIFY, WOO, TICIMAX, IDEASOFT = "anatolia-shopify", "bosphorus-woo", "ege-ticimax", "kapadokya-ideasoft"
AS_OF = at("2026-12-28 12:00")
AS_OF_LATER = at("2027-01-05 12:00")


def guest_email(shop_id: str) -> str:
    n = 0
    while is_holdout(customer_key(shop_id, email=f"guest{n}@example.co.uk")):
        n += 1
    return f"guest{n}@example.co.uk"


# customers: the first id from a start whose holdout assignment is as the story needs
FIRST_TIMER = pick_customer_id(SHOPIFY, 1001, holdout=False)
REPEATER = pick_customer_id(SHOPIFY, 2001, holdout=False)
BUYER = pick_customer_id(SHOPIFY, 3001, holdout=False)
PRE_SALE = pick_customer_id(SHOPIFY, 4001, holdout=False)
SWITCHER = pick_customer_id(SHOPIFY, 5001, holdout=False)
HELD_OUT = pick_customer_id(WOO, 6001, holdout=True)
MEMBER = pick_customer_id(TICIMAX, 7001, holdout=False)
GIFTER = pick_customer_id(IDEASOFT, 9001, holdout=False)
GUEST = guest_email(WOO)
GUEST_ACCOUNT = 77


def story() -> RawBatch:
    raw = RawBatch()
    wh, poll = raw.webhook, raw.poll

    # Shopify. A first-time customer; the checkout arrives as a create and an update webhook and,
    # later, once more from polling with the same updated time: it must land once.
    ayse = shopify_customer(FIRST_TIMER, "Ayşe", "  Ayse@Example.COM ", "0532 123 45 67", True, True)
    created, updated = at("2026-12-10 09:00"), at("2026-12-10 09:40")
    wh(
        "shopify",
        SHOPIFY,
        "checkouts/create",
        shopify_checkout(7001, ayse, "850.00", created, created),
        created,
    )
    v2 = shopify_checkout(7001, ayse, "900.00", created, updated)
    wh("shopify", SHOPIFY, "checkouts/update", v2, updated)
    poll("shopify", SHOPIFY, "cart", 7001, updated, v2)

    # A repeat abandoner with email consent only: an order in October, carts on 1 Nov, 10 and 20 Dec.
    can = shopify_customer(REPEATER, "Can", "can@example.com", None, True, False)
    wh(
        "shopify",
        SHOPIFY,
        "orders/create",
        shopify_order(8001, can, "640.00", at("2026-10-05 12:00")),
        at("2026-10-05 12:00"),
    )
    for checkout_id, moment in (
        (7002, "2026-11-01 10:00"),
        (7003, "2026-12-10 10:00"),
        (7004, "2026-12-20 10:00"),
    ):
        poll(
            "shopify",
            SHOPIFY,
            "cart",
            checkout_id,
            at(moment),
            shopify_checkout(checkout_id, can, "400.00", at(moment), at(moment)),
        )

    # Abandoned at 08:00, bought at 10:00 (after stage 1, before stages 2 and 3).
    deniz = shopify_customer(BUYER, "Deniz", "deniz@example.com", "+90 533 000 11 22", True, True)
    wh(
        "shopify",
        SHOPIFY,
        "checkouts/create",
        shopify_checkout(7005, deniz, "300.00", at("2026-12-12 08:00"), at("2026-12-12 08:00")),
        at("2026-12-12 08:00"),
    )
    wh(
        "shopify",
        SHOPIFY,
        "orders/create",
        shopify_order(8002, deniz, "300.00", at("2026-12-12 10:00")),
        at("2026-12-12 10:00"),
    )

    # A returning customer abandons on 22 Nov, inside the quiet week before Black Friday.
    elif_ = shopify_customer(PRE_SALE, "Elif", "elif@example.com", None, True, False)
    poll(
        "shopify",
        SHOPIFY,
        "order",
        8003,
        at("2026-10-01 09:00"),
        shopify_order(8003, elif_, "120.00", at("2026-10-01 09:00")),
    )
    poll(
        "shopify",
        SHOPIFY,
        "cart",
        7006,
        at("2026-11-22 10:00"),
        shopify_checkout(7006, elif_, "500.00", at("2026-11-22 10:00"), at("2026-11-22 10:00")),
    )

    # Starts a second cart two hours after the first: the first one's later stages are superseded.
    emre = shopify_customer(SWITCHER, "Emre", "emre@example.com", None, True, False)
    for checkout_id, moment in ((7007, "2026-12-14 10:00"), (7008, "2026-12-14 12:00")):
        poll(
            "shopify",
            SHOPIFY,
            "cart",
            checkout_id,
            at(moment),
            shopify_checkout(checkout_id, emre, "200.00", at(moment), at(moment), locale="en-GB"),
        )

    # WooCommerce. A held-out customer: polled version, then a newer webhook version of one cart.
    poll(
        "woocommerce",
        WOO,
        "order",
        901,
        at("2026-12-01 10:00"),
        woo_order(901, HELD_OUT, "emily@example.co.uk", "30.00", at("2026-12-01 10:00")),
    )
    poll(
        "woocommerce",
        WOO,
        "cart",
        601,
        at("2026-12-11 09:00"),
        woo_cart(
            601,
            HELD_OUT,
            "emily@example.co.uk",
            "+44 7700 900123",
            "20.00",
            at("2026-12-11 08:50"),
            at("2026-12-11 09:00"),
            email_consent=True,
            whatsapp_consent=True,
        ),
    )
    wh(
        "woocommerce",
        WOO,
        "cart.updated",
        woo_cart(
            601,
            HELD_OUT,
            "emily@example.co.uk",
            "+44 7700 900123",
            "25.00",
            at("2026-12-11 08:50"),
            at("2026-12-11 09:20"),
            email_consent=True,
            whatsapp_consent=True,
        ),
        at("2026-12-11 09:20"),
    )
    # A guest who gave no consent.
    wh(
        "woocommerce",
        WOO,
        "cart.updated",
        woo_cart(
            602,
            0,
            GUEST,
            None,
            "40.00",
            at("2026-12-11 15:00"),
            at("2026-12-11 15:00"),
            email_consent=False,
            whatsapp_consent=False,
        ),
        at("2026-12-11 15:00"),
    )

    # Ticimax (polled only): contacts and consent live on the member; times are shop-local.
    poll(
        "ticimax",
        TICIMAX,
        "customer",
        MEMBER,
        at("2026-06-01 09:00"),
        ticimax_member(
            MEMBER,
            "AYSE.DEMIR@example.com",
            "0532 111 22 33",
            at("2026-06-01 09:00"),
            mail_consent=True,
            sms_consent=True,
        ),
    )
    poll(
        "ticimax",
        TICIMAX,
        "cart",
        801,
        at("2026-12-12 11:05"),
        ticimax_cart(801, MEMBER, "1250.00", at("2026-12-12 11:00"), at("2026-12-12 11:05")),
    )
    # Still being filled in at AS_OF (last activity 10 minutes before): not abandoned yet.
    poll(
        "ticimax",
        TICIMAX,
        "cart",
        802,
        at("2026-12-28 11:50"),
        ticimax_cart(802, MEMBER, "300.00", at("2026-12-28 11:40"), at("2026-12-28 11:50")),
    )

    # Ideasoft. A returning customer on 27 Dec (New Year gift window): the faster sequence.
    mehmet = ideasoft_member(GIFTER, "mehmet@example.com", "+905551112233", True)
    poll(
        "ideasoft",
        IDEASOFT,
        "order",
        1,
        at("2026-11-15 12:00"),
        {
            "id": 1,
            "member": {"id": GIFTER, "email": "mehmet@example.com"},
            "amount": "700.00",
            "currency": "TRY",
            "couponCode": None,
            "createdAt": "2026-11-15T12:00:00Z",
            "updatedAt": "2026-11-15T12:00:00Z",
        },
    )
    wh(
        "ideasoft",
        IDEASOFT,
        "abandoned_cart/updated",
        ideasoft_cart(401, mehmet, "600.00", at("2026-12-27 07:00"), at("2026-12-27 07:00")),
        at("2026-12-27 07:00"),
    )
    # Ordered before it was ever idle: never abandoned.
    poll(
        "ideasoft",
        IDEASOFT,
        "cart",
        402,
        at("2026-12-20 10:10"),
        ideasoft_cart(402, mehmet, "100.00", at("2026-12-20 10:00"), at("2026-12-20 10:10"), ordered=True),
    )
    return raw


def later_story() -> RawBatch:
    """What lands between the two builds of the incremental test (after AS_OF, as ingest would)."""
    raw = RawBatch()
    landed = AS_OF + timedelta(days=1)
    ayse = shopify_customer(FIRST_TIMER, "Ayşe", "ayse@example.com", "+905321234567", True, True)
    raw.poll(
        "shopify",
        SHOPIFY,
        "cart",
        7009,
        at("2027-01-02 18:00"),
        shopify_checkout(7009, ayse, "1100.00", at("2027-01-02 17:30"), at("2027-01-02 18:00")),
        fetched_at=at("2027-01-02 18:05"),
    )
    # a late order: placed on 27 Dec, fetched after the first build; it completes Emre's cart
    emre = shopify_customer(SWITCHER, "Emre", "emre@example.com", None, True, False)
    raw.poll(
        "shopify",
        SHOPIFY,
        "order",
        8004,
        at("2026-12-27 10:00"),
        shopify_order(8004, emre, "200.00", at("2026-12-27 10:00")),
        fetched_at=landed,
    )
    # a newer version of a cart already in the marts: its stages move
    mehmet = ideasoft_member(GIFTER, "mehmet@example.com", "+905551112233", True)
    raw.poll(
        "ideasoft",
        IDEASOFT,
        "cart",
        401,
        at("2026-12-27 08:00"),
        ideasoft_cart(401, mehmet, "750.00", at("2026-12-27 07:00"), at("2026-12-27 08:00")),
        fetched_at=landed,
    )
    raw.webhook(
        "woocommerce",
        WOO,
        "cart.updated",
        woo_cart(
            603,
            0,
            "new.guest@example.co.uk",
            "07700 900456",
            "45.00",
            at("2027-01-03 10:00"),
            at("2027-01-03 10:05"),
            email_consent=True,
            whatsapp_consent=False,
        ),
        at("2027-01-03 10:05"),
    )
    # the guest of cart 602 registers: the email now links to an account, so the old guest
    # cart re-resolves to it (a new identity mapping, not a new cart)
    raw.webhook(
        "woocommerce",
        WOO,
        "customer.created",
        {
            "id": GUEST_ACCOUNT,
            "email": GUEST,
            "first_name": "Emily",
            "last_name": "Clarke",
            "billing": {"email": GUEST, "phone": None},
            "date_created_gmt": iso_gmt(at("2027-01-03 09:00")),
            "date_modified_gmt": iso_gmt(at("2027-01-03 09:00")),
        },
        at("2027-01-03 09:00"),
    )
    return raw


@pytest.fixture(scope="module")
def built(database) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(database.url)
    truncate_raw(conn)
    story().write(conn)
    run_dbt("build", "--full-refresh", as_of=AS_OF)
    yield conn
    conn.close()


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
        (cart_key(SHOPIFY, "shopify", "c7001token"), cart_key(WOO, "woocommerce", "601")),
    )
    by_id = {row[0]: row for row in rows}
    assert len(rows) == 2
    assert by_id["c7001token"][1:4] == ("ayse@example.com", "+905321234567", 900)
    assert by_id["c7001token"][4] == at("2026-12-10 10:10")  # last update 09:40 + 30 minutes
    assert by_id["601"][3] == 25  # the newer webhook version wins over the older poll
    assert (
        query(built, "select count(*) from marts.abandoned_carts group by cart_key having count(*) > 1") == []
    )


def test_first_time_customer_is_reminded_without_coupons(built):
    rows = plan(built, SHOPIFY, "shopify", "c7001token")
    assert [row[0] for row in rows] == [1, 2, 3]
    assert reasons(rows) == [None, None, None]
    assert {(row[1], row[3], row[4], row[7]) for row in rows} == {("whatsapp", 0, False, None)}
    assert rows[1][2] == "cart_reminder_followup_tr"
    flags = query(
        built,
        "select is_first_time, is_near_free_shipping from marts.abandoned_carts where cart_key = %s",
        (cart_key(SHOPIFY, "shopify", "c7001token"),),
    )
    assert flags == [(True, True)]


def test_repeat_abandoner_gets_coupons_once_per_30_days(built):
    offered = plan(built, SHOPIFY, "shopify", "c7003token")
    assert reasons(offered) == [None, None, None]
    assert [(row[1], row[3], row[4]) for row in offered] == [
        ("email", 0, False),
        ("email", 5, False),
        ("email", 10, True),
    ]
    assert offered[1][7] == offered[1][6] + timedelta(hours=48)
    capped = plan(built, SHOPIFY, "shopify", "c7004token")  # ten days after the last offer
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
    rows = plan(built, SHOPIFY, "shopify", "c7005token")
    assert reasons(rows) == [None, "completed", "completed"]
    assert query(
        built,
        "select is_completed, completed_at from marts.abandoned_carts where cart_key = %s",
        (cart_key(SHOPIFY, "shopify", "c7005token"),),
    ) == [(True, at("2026-12-12 10:00"))]


def test_pre_sale_holds_back_coupon_stages(built):
    assert reasons(plan(built, SHOPIFY, "shopify", "c7006token")) == [
        None,
        "pre_sale_no_coupon",
        "pre_sale_no_coupon",
    ]


def test_newer_cart_supersedes_the_remaining_stages(built):
    assert reasons(plan(built, SHOPIFY, "shopify", "c7007token")) == [
        None,
        "superseded_by_newer_cart",
        "superseded_by_newer_cart",
    ]
    assert reasons(plan(built, SHOPIFY, "shopify", "c7008token")) == [None, None, None]


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


MART_TABLES = ("abandoned_carts", "recovery_plan", "customers")


def test_incremental_build_equals_full_refresh(built):
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
        (cart_key(SHOPIFY, "shopify", "c7008token"),),
    ) == [(True,)]
    assert query(
        built,
        "select count(*) from marts.abandoned_carts where cart_key in %s",
        ((cart_key(TICIMAX, "ticimax", "802"), cart_key(SHOPIFY, "shopify", "c7009token")),),
    ) == [(2,)]

    # the guest's old cart now belongs to the account registered with its email
    assert query(
        built,
        "select customer_key, is_guest from marts.abandoned_carts where cart_key = %s",
        (cart_key(WOO, "woocommerce", "602"),),
    ) == [(customer_key(WOO, customer_id=str(GUEST_ACCOUNT)), False)]

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


def test_as_of_from_the_environment_and_a_clear_error_when_malformed(built):
    """The DAG passes as_of as CART_RECOVERY_AS_OF (no var, so dbt's partial parse holds)."""
    env = {key: value for key, value in os.environ.items() if key != "CART_RECOVERY_AS_OF"}

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
