"""Coupons at send time: each platform's way, against the running fake shops (over loopback) and
the real test warehouse.

Shopify and WooCommerce coupons are created through the fakes' APIs, which validate and store
them as the platforms do; the tests read the stored coupon back from the simulator's state and
redeem it with orders. Ideasoft and Ticimax codes come from ``ops.coupon_pool``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import psycopg2
import pytest

from cart_recovery import cli
from cart_recovery.database import Database
from cart_recovery.dispatch import coupon_pool
from cart_recovery.dispatch.coupons import (
    CouponError,
    ShopifyCoupons,
    WooCommerceCoupons,
    coupon_code,
    issuer_for,
)
from cart_recovery.platforms.base import RetryPolicy
from cart_recovery.shops import Shop
from cart_recovery.simulator import Simulator, run_simulator
from cart_recovery.simulator.coupons import CouponRefused, place_order
from cart_recovery.simulator.data import Cart
from cart_recovery.simulator.live import LiveActivity
from cart_recovery.simulator.shopify_api import API_VERSION

SHOPIFY, WOO, TICIMAX, IDEASOFT = "anatolia-shopify", "hudson-woo", "kapadokya-ticimax", "ege-ideasoft"
NOW = datetime(2025, 11, 24, 12, 0, tzinfo=UTC)
EXPIRY = NOW + timedelta(hours=48)


def run(coroutine):
    return asyncio.run(coroutine)


def plan_key() -> str:
    return uuid.uuid4().hex


def quick_retry() -> RetryPolicy:
    return RetryPolicy(max_attempts=2, base_delay=0.0, max_delay=0.0, sleep=lambda _s: None)


@pytest.fixture(scope="module")
def database(module_database: Database) -> Database:
    """A warehouse of this module's own: the pool tests fill and empty ``ops.coupon_pool``."""
    return module_database


@pytest.fixture(scope="module")
def running(database: Database) -> Iterator[Simulator]:
    with run_simulator(seed=5, carts_per_shop=6) as sim, pytest.MonkeyPatch.context() as patch:
        for name, value in sim.connection_env().items():
            patch.setenv(name, value)
        yield sim


@pytest.fixture
def sim(running: Simulator) -> Iterator[Simulator]:
    """The module's simulator with its failure knobs back at their defaults after each test."""
    yield running
    running.knobs.fail_every = 0
    running.knobs.read_only_keys = False


def shop(sim: Simulator, shop_id: str) -> Shop:
    return sim.shop(shop_id)


def customer(sim: Simulator, shop_id: str, n: int = 0):
    return [c for c in sim.data(shop_id).customers if c.email][n]


def cart_of(sim: Simulator, shop_id: str, email: str, customer_obj=None) -> Cart:
    """An open cart of the shop, handed to the given buyer (a copy: the shop's data stays as it was)."""
    template = sim.data(shop_id).carts[0]
    return Cart(
        id=template.id + 1,
        token=uuid.uuid4().hex,
        customer=customer_obj,
        email=email,
        phone=None,
        currency=template.currency,
        items=template.items,
        created_at=NOW - timedelta(hours=2),
        updated_at=NOW - timedelta(hours=2),
    )


# -- the code ------------------------------------------------------------------------------------


def test_the_code_is_the_plan_rows_own_and_unguessable_without_the_credential():
    code = coupon_code("secret-a", "shop", "plan-1")
    assert code == coupon_code("secret-a", "shop", "plan-1")  # a retry asks for the same code
    assert code.startswith("CR") and len(code) == 14
    assert set(code[2:]) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
    others = {coupon_code("secret-a", "shop", f"plan-{n}") for n in range(2, 2000)}
    assert code not in others and len(others) == 1998
    assert coupon_code("secret-b", "shop", "plan-1") != code
    assert coupon_code("secret-a", "other-shop", "plan-1") != code


def test_terms_are_checked_before_any_call(sim):
    issuer = issuer_for(shop(sim, WOO), retry=quick_retry())
    before = len(sim.state.coupon_book(WOO).all())
    bad = [
        (Decimal("0"), False, EXPIRY, "gives nothing"),
        (Decimal("101"), False, EXPIRY, "between 0 and 100"),
        (Decimal("10.005"), False, EXPIRY, "two decimals"),
        (Decimal("10"), False, NOW - timedelta(minutes=1), "not after now"),
    ]
    for pct, free_shipping, expires, message in bad:
        with pytest.raises(CouponError, match=message):
            run(issuer.create(plan_key(), "a@example.com", pct, free_shipping, expires, now=NOW))
    assert len(sim.state.coupon_book(WOO).all()) == before


# -- Shopify -------------------------------------------------------------------------------------


def test_shopify_percentage_code_bound_to_the_customer(sim):
    buyer = customer(sim, SHOPIFY)
    issuer = issuer_for(shop(sim, SHOPIFY), retry=quick_retry())
    assert isinstance(issuer, ShopifyCoupons)
    key = plan_key()

    coupon = run(issuer.create(key, buyer.email.upper(), Decimal("10"), False, EXPIRY, now=NOW))

    assert coupon.code == issuer.code_for(key)
    assert (coupon.pct, coupon.free_shipping, coupon.expires_at) == (Decimal("10.00"), False, EXPIRY)
    stored = sim.state.coupon_book(SHOPIFY).get(coupon.code)
    assert stored.kind == "percentage" and stored.pct == Decimal("10.00")
    assert stored.usage_limit == 1 and stored.usage_limit_per_customer == 1
    assert stored.starts_at == NOW and stored.ends_at == EXPIRY
    assert stored.customer_ids == (buyer.id,)
    assert stored.request["customerGets"] == {"value": {"percentage": 0.1}, "items": {"all": True}}


def test_shopify_guest_code_is_single_use_for_anyone(sim):
    coupon = run(
        issuer_for(shop(sim, SHOPIFY), retry=quick_retry()).create(
            plan_key(), "guest.nobody@example.com", Decimal("5"), False, EXPIRY, now=NOW
        )
    )
    stored = sim.state.coupon_book(SHOPIFY).get(coupon.code)
    assert stored.customer_ids == () and stored.request["customerSelection"] == {"all": True}
    assert stored.usage_limit == 1


def test_shopify_free_shipping_is_its_own_discount(sim):
    coupon = run(
        issuer_for(shop(sim, SHOPIFY), retry=quick_retry()).create(
            plan_key(), customer(sim, SHOPIFY).email, Decimal("0"), True, EXPIRY, now=NOW
        )
    )
    assert coupon.free_shipping and coupon.pct == Decimal("0.00")
    stored = sim.state.coupon_book(SHOPIFY).get(coupon.code)
    assert stored.kind == "free_shipping" and stored.free_shipping
    assert stored.request["destination"] == {"all": True} and stored.usage_limit == 1


def test_shopify_percentage_with_free_shipping_gives_the_percentage_and_says_so(sim):
    coupon = run(
        issuer_for(shop(sim, SHOPIFY), retry=quick_retry()).create(
            plan_key(), customer(sim, SHOPIFY).email, Decimal("15"), True, EXPIRY, now=NOW
        )
    )
    assert (coupon.pct, coupon.free_shipping) == (Decimal("15.00"), False)  # what the outbox records
    assert sim.state.coupon_book(SHOPIFY).get(coupon.code).kind == "percentage"


def test_shopify_retry_of_a_plan_row_reuses_its_coupon(sim):
    key, email = plan_key(), customer(sim, SHOPIFY).email
    book = sim.state.coupon_book(SHOPIFY)
    first = run(
        issuer_for(shop(sim, SHOPIFY), retry=quick_retry()).create(key, email, 10, False, EXPIRY, now=NOW)
    )
    count = len(book.all())
    # Later, from another worker (a new issuer), with a later "now" and so a later expiry asked for.
    later = NOW + timedelta(minutes=5)
    again = run(
        issuer_for(shop(sim, SHOPIFY), retry=quick_retry()).create(
            key, email, 10, False, later + timedelta(hours=48), now=later
        )
    )
    assert again == first  # the coupon that exists, with its own expiry
    assert len(book.all()) == count
    other = run(
        issuer_for(shop(sim, SHOPIFY), retry=quick_retry()).create(
            plan_key(), email, 10, False, EXPIRY, now=NOW
        )
    )
    assert other.code != first.code and len(book.all()) == count + 1


def test_shopify_refusal_carries_shopifys_message(sim):
    key, email = plan_key(), customer(sim, SHOPIFY).email
    issuer = issuer_for(shop(sim, SHOPIFY), retry=quick_retry())
    run(issuer.create(key, email, Decimal("10"), False, EXPIRY, now=NOW))
    with pytest.raises(CouponError) as refused:  # the same plan row with other terms: not reused
        run(issuer.create(key, email, Decimal("20"), False, EXPIRY, now=NOW))
    assert "Code must be unique. Please try a different code." in str(refused.value)
    assert "other terms" in str(refused.value)
    assert refused.value.platform_response["userErrors"][0]["code"] == "TAKEN"


def test_shopify_without_the_write_discounts_scope(sim):
    sim.knobs.read_only_keys = True
    with pytest.raises(CouponError, match="ACCESS_DENIED") as refused:
        run(
            issuer_for(shop(sim, SHOPIFY), retry=quick_retry()).create(
                plan_key(), "a@example.com", Decimal("10"), False, EXPIRY, now=NOW
            )
        )
    assert "write_discounts" in str(refused.value)


def test_shopify_outage_raises_after_the_retries(sim):
    sim.knobs.fail_every = 1  # every request answers 503
    before = sim.requests(SHOPIFY, "failed")
    with pytest.raises(CouponError, match="503"):
        run(
            issuer_for(shop(sim, SHOPIFY), retry=quick_retry()).create(
                plan_key(), None, Decimal("10"), False, EXPIRY, now=NOW
            )
        )
    assert sim.requests(SHOPIFY, "failed") - before == 2  # both attempts, then the error


def graphql(sim: Simulator, query: str, variables: dict) -> dict:
    data = sim.data(SHOPIFY).shop
    answer = httpx.post(
        f"{sim.url(SHOPIFY)}/admin/api/{API_VERSION}/graphql.json",
        json={"query": query, "variables": variables},
        headers={"X-Shopify-Access-Token": data.api_key},
    )
    assert answer.status_code == 200
    return answer.json()


BASIC = (
    "mutation C($basicCodeDiscount: DiscountCodeBasicInput!) { discountCodeBasicCreate("
    "basicCodeDiscount: $basicCodeDiscount) { codeDiscountNode { id } userErrors { field code message } } }"
)


def basic_input(code: str, **changes) -> dict:
    return {
        "title": "t",
        "code": code,
        "startsAt": "2025-11-24T12:00:00Z",
        "endsAt": "2025-11-26T12:00:00Z",
        "usageLimit": 1,
        "customerSelection": {"all": True},
        "customerGets": {"value": {"percentage": 0.1}, "items": {"all": True}},
        **changes,
    }


def test_fake_shopify_validates_as_shopify_does(sim):
    # A field the 2024-10 input type does not define: a GraphQL variable error, nothing stored.
    body = graphql(sim, BASIC, {"basicCodeDiscount": basic_input("FAKE-1", context={"all": "ALL"})})
    assert body["errors"][0]["extensions"]["code"] == "INVALID_VARIABLE"
    assert body["errors"][0]["extensions"]["problems"][0]["path"] == ["context"]
    # Business rules: userErrors with the argument's field path.
    body = graphql(
        sim,
        BASIC,
        {
            "basicCodeDiscount": basic_input(
                "FAKE-2",
                title="",
                endsAt="2025-11-23T00:00:00Z",
                customerGets={"value": {"percentage": 1.5}, "items": {"all": True}},
                customerSelection={"customers": {"add": ["gid://shopify/Customer/1"]}},
            )
        },
    )
    errors = {e["code"]: e for e in body["data"]["discountCodeBasicCreate"]["userErrors"]}
    assert set(errors) == {"BLANK", "END_DATE_BEFORE_START_DATE", "VALUE_OUTSIDE_RANGE", "INVALID"}
    assert errors["VALUE_OUTSIDE_RANGE"]["field"] == [
        "basicCodeDiscount",
        "customerGets",
        "value",
        "percentage",
    ]
    assert body["data"]["discountCodeBasicCreate"]["codeDiscountNode"] is None
    assert sim.state.coupon_book(SHOPIFY).get("FAKE-2") is None
    # Codes are unique shop-wide and case-insensitively.
    assert not graphql(sim, BASIC, {"basicCodeDiscount": basic_input("fake-3")})["data"][
        "discountCodeBasicCreate"
    ]["userErrors"]
    taken = graphql(sim, BASIC, {"basicCodeDiscount": basic_input("FAKE-3")})
    assert taken["data"]["discountCodeBasicCreate"]["userErrors"] == [
        {
            "field": ["basicCodeDiscount", "code"],
            "message": "Code must be unique. Please try a different code.",
            "code": "TAKEN",
            "extraInfo": None,
        }
    ]


# -- WooCommerce ---------------------------------------------------------------------------------


def test_woocommerce_coupon_restricted_to_the_email(sim):
    issuer = issuer_for(shop(sim, WOO), retry=quick_retry())
    assert isinstance(issuer, WooCommerceCoupons)
    key = plan_key()

    coupon = run(issuer.create(key, "Jane.Doe@Example.com", Decimal("12.5"), True, EXPIRY, now=NOW))

    assert coupon.code == issuer.code_for(key).lower()  # WooCommerce stores codes lower-cased
    assert (coupon.pct, coupon.free_shipping, coupon.expires_at) == (Decimal("12.50"), True, EXPIRY)
    stored = sim.state.coupon_book(WOO).get(coupon.code)
    assert stored.pct == Decimal("12.50") and stored.free_shipping and stored.individual_use
    assert stored.usage_limit == 1 and stored.usage_limit_per_customer == 1
    assert stored.email_restrictions == ("jane.doe@example.com",)
    assert stored.ends_at == EXPIRY
    assert stored.request["discount_type"] == "percent" and stored.request["amount"] == "12.50"
    # The REST resource reads back the same terms.
    data = sim.data(WOO).shop
    listed = httpx.get(
        f"{sim.url(WOO)}/wp-json/wc/v3/coupons",
        params={"code": coupon.code},
        auth=(data.api_key, data.api_secret),
    ).json()
    assert [(c["code"], c["amount"], c["usage_limit"], c["date_expires_gmt"]) for c in listed] == [
        (coupon.code, "12.50", 1, "2025-11-26T12:00:00")
    ]


def test_woocommerce_retry_of_a_plan_row_reuses_its_coupon(sim):
    key = plan_key()
    book = sim.state.coupon_book(WOO)
    first = run(
        issuer_for(shop(sim, WOO), retry=quick_retry()).create(
            key, "x@example.com", 10, False, EXPIRY, now=NOW
        )
    )
    count = len(book.all())
    again = run(
        issuer_for(shop(sim, WOO), retry=quick_retry()).create(
            key, "x@example.com", 10, False, EXPIRY, now=NOW
        )
    )
    assert again == first and len(book.all()) == count


def test_woocommerce_without_an_email_is_not_restricted(sim):
    coupon = run(
        issuer_for(shop(sim, WOO), retry=quick_retry()).create(plan_key(), None, 5, False, EXPIRY, now=NOW)
    )
    assert sim.state.coupon_book(WOO).get(coupon.code).email_restrictions == ()


def test_woocommerce_read_only_key_is_refused_with_its_message(sim):
    sim.knobs.read_only_keys = True
    with pytest.raises(CouponError, match="does not have write permissions"):
        run(
            issuer_for(shop(sim, WOO), retry=quick_retry()).create(
                plan_key(), None, 5, False, EXPIRY, now=NOW
            )
        )


def test_woocommerce_outage_raises_after_the_retries(sim):
    sim.knobs.fail_every = 1
    with pytest.raises(CouponError, match="503"):
        run(
            issuer_for(shop(sim, WOO), retry=quick_retry()).create(
                plan_key(), None, 5, False, EXPIRY, now=NOW
            )
        )


def test_fake_woocommerce_validates_as_woocommerce_does(sim):
    data = sim.data(WOO).shop
    url, auth = f"{sim.url(WOO)}/wp-json/wc/v3/coupons", (data.api_key, data.api_secret)

    def post(body: dict) -> httpx.Response:
        return httpx.post(url, json=body, auth=auth)

    answer = post({"code": "w1", "amount": 10, "discount_type": "percent"})  # amount must be a string
    assert answer.status_code == 400 and answer.json()["code"] == "rest_invalid_param"
    assert "amount" in answer.json()["data"]["params"]
    answer = post({"code": "w1", "amount": "10", "discount_type": "half_off"})
    assert (
        answer.json()["code"] == "rest_invalid_param" and "discount_type" in answer.json()["data"]["params"]
    )
    assert post({"amount": "10"}).json()["code"] == "rest_missing_callback_param"
    answer = post({"code": "w1", "amount": "10", "discount_type": "percent", "email_restrictions": ["nope"]})
    assert answer.json() == {
        "code": "coupon_invalid_email_address",
        "message": "Invalid email address restriction",
        "data": {"status": 400},
    }
    assert (
        post({"code": "w1", "amount": "150", "discount_type": "percent"}).json()["code"]
        == "coupon_invalid_amount"
    )
    created = post({"code": "W1", "amount": "10", "discount_type": "percent"})
    assert created.status_code == 201 and created.json()["code"] == "w1"
    duplicate = post({"code": " w1 ", "amount": "10", "discount_type": "percent"})
    assert duplicate.status_code == 400
    assert duplicate.json()["code"] == "woocommerce_rest_coupon_code_already_exists"
    assert duplicate.json()["data"]["resource_id"] == created.json()["id"]


# -- redemption in the fake shops ----------------------------------------------------------------


def test_woocommerce_coupon_is_redeemed_once_by_its_owner_before_it_expires(sim):
    email = "owner@example.com"
    coupon = run(
        issuer_for(shop(sim, WOO), retry=quick_retry()).create(plan_key(), email, 10, False, EXPIRY, now=NOW)
    )
    book = sim.state.coupon_book(WOO)

    with pytest.raises(CouponRefused) as other:
        place_order(
            book, cart_of(sim, WOO, "someone.else@example.com"), order_id=2, at=NOW, coupon_code=coupon.code
        )
    assert other.value.reason == "not_yours"
    with pytest.raises(CouponRefused) as late:
        place_order(book, cart_of(sim, WOO, email), order_id=3, at=EXPIRY, coupon_code=coupon.code)
    assert late.value.reason == "expired"

    cart = cart_of(sim, WOO, email.upper())
    order = place_order(book, cart, order_id=4, at=NOW + timedelta(hours=1), coupon_code=coupon.code.upper())
    assert order.coupon_code == coupon.code.upper() and cart.completed_at == NOW + timedelta(hours=1)
    assert book.get(coupon.code).usage_count == 1

    second = cart_of(sim, WOO, email)
    with pytest.raises(CouponRefused) as again:
        place_order(book, second, order_id=5, at=NOW + timedelta(hours=2), coupon_code=coupon.code)
    assert again.value.reason == "usage_limit" and second.completed_at is None


def test_shopify_coupon_is_redeemed_only_by_the_bound_customer(sim):
    buyer, someone = customer(sim, SHOPIFY, 0), customer(sim, SHOPIFY, 1)
    coupon = run(
        issuer_for(shop(sim, SHOPIFY), retry=quick_retry()).create(
            plan_key(), buyer.email, 10, False, EXPIRY, now=NOW
        )
    )
    book = sim.state.coupon_book(SHOPIFY)
    for cart in (cart_of(sim, SHOPIFY, someone.email, someone), cart_of(sim, SHOPIFY, buyer.email, None)):
        with pytest.raises(CouponRefused) as refused:  # another customer; the same email as a guest
            place_order(book, cart, order_id=1, at=NOW, coupon_code=coupon.code)
        assert refused.value.reason == "not_yours"
    with pytest.raises(CouponRefused, match="not active yet"):
        place_order(
            book,
            cart_of(sim, SHOPIFY, buyer.email, buyer),
            order_id=2,
            at=NOW - timedelta(seconds=1),
            coupon_code=coupon.code,
        )
    order = place_order(
        book, cart_of(sim, SHOPIFY, buyer.email, buyer), order_id=3, at=NOW, coupon_code=coupon.code
    )
    assert order.coupon_code == coupon.code
    stored = book.get(coupon.code)
    assert stored.usage_count == 1 and stored.used_by == [f"customer:{buyer.id}"]


def test_live_shoppers_use_the_code_they_were_sent(sim):
    """The demo's shoppers complete carts with their recovery code; the order API shows it used."""
    buyer = customer(sim, WOO, 2)
    coupon = run(
        issuer_for(shop(sim, WOO), retry=quick_retry()).create(
            plan_key(), buyer.email, 10, False, EXPIRY, now=NOW
        )
    )
    activity = LiveActivity(sim, webhook_url=None)
    activity._rng.random = lambda: 0.0  # this shopper always uses a code when they have one
    data = sim.data(WOO)
    first, second = cart_of(sim, WOO, buyer.email, buyer), cart_of(sim, WOO, buyer.email, buyer)
    data.carts += [first, second]
    try:
        activity._complete(data, first, NOW + timedelta(hours=3))
        order = data.orders[-1]
        assert order.cart is first and order.coupon_code == coupon.code
        assert sim.state.coupon_book(WOO).get(coupon.code).usage_count == 1
        orders = httpx.get(
            f"{sim.url(WOO)}/wp-json/wc/v3/orders",
            params={"per_page": 100},
            auth=(data.shop.api_key, data.shop.api_secret),
        ).json()
        assert {"code": coupon.code} in [line for o in orders for line in o["coupon_lines"]]
        # Used up: the shopper's next order goes without it.
        activity._complete(data, second, NOW + timedelta(hours=4))
        assert data.orders[-1].cart is second and data.orders[-1].coupon_code is None
        assert activity.counts["coupon_redeemed"] == 1 and activity.counts["order_without_coupon"] == 1
    finally:
        data.orders[:] = [o for o in data.orders if o.cart not in (first, second)]
        data.carts[:] = [c for c in data.carts if c not in (first, second)]


# -- the code pool ---------------------------------------------------------------------------------


@pytest.fixture
def pool(database: Database) -> Iterator[str]:
    """An empty ``ops.coupon_pool``; yields the warehouse URL."""

    def empty() -> None:
        with contextlib.closing(psycopg2.connect(database.url)) as conn, conn, conn.cursor() as cur:
            cur.execute("delete from ops.coupon_pool")

    empty()
    yield database.url
    empty()


def add_codes(url: str, shop_id: str, *rows: tuple[str, str, bool, datetime]) -> None:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        for code, pct, free_shipping, expires_at in rows:
            cur.execute(
                "insert into ops.coupon_pool (shop_id, code, pct, free_shipping, expires_at, loaded_at) "
                "values (%s, %s, %s, %s, %s, %s)",
                (shop_id, code, Decimal(pct), free_shipping, expires_at, NOW - timedelta(days=1)),
            )


def pool_rows(url: str, shop_id: str) -> dict[str, tuple]:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute("select code, plan_key, claimed_at from ops.coupon_pool where shop_id = %s", (shop_id,))
        return {code: (key, claimed) for code, key, claimed in cur.fetchall()}


def test_pool_claims_the_latest_expiring_fitting_code_once_per_plan_row(sim, pool):
    add_codes(
        pool,
        IDEASOFT,
        ("SOON", "10", False, NOW + timedelta(hours=20)),
        ("BEST", "10", False, NOW + timedelta(hours=40)),
        ("TOO-LATE", "10", False, NOW + timedelta(hours=49)),  # outlives the allowed expiry
        ("LAPSING", "10", False, NOW + timedelta(hours=2)),  # of no use to the customer
        ("OTHER-PCT", "15", False, NOW + timedelta(hours=30)),
        ("FREE-SHIP", "10", True, NOW + timedelta(hours=30)),
    )
    issuer = issuer_for(shop(sim, IDEASOFT), pool)
    key = plan_key()

    coupon = run(issuer.create(key, "a@example.com", Decimal("10"), False, EXPIRY, now=NOW))

    assert (coupon.code, coupon.pct, coupon.free_shipping) == ("BEST", Decimal("10.00"), False)
    assert coupon.expires_at == NOW + timedelta(hours=40)  # the code's own expiry, before the cap
    assert run(issuer.create(key, "a@example.com", Decimal("10"), False, EXPIRY, now=NOW)) == coupon
    with pytest.raises(CouponError, match="other terms"):  # the plan row's code, never a second one
        run(issuer.create(key, "a@example.com", Decimal("15"), False, EXPIRY, now=NOW))
    second = run(issuer.create(plan_key(), None, Decimal("10"), False, EXPIRY, now=NOW))
    assert second.code == "SOON"
    with pytest.raises(CouponError, match=r"no free code for 10\.00% off expiring between") as none_left:
        run(issuer.create(plan_key(), None, Decimal("10"), False, EXPIRY, now=NOW))
    assert "cart-recovery coupons load --shop ege-ideasoft" in str(none_left.value)
    rows = pool_rows(pool, IDEASOFT)
    assert rows["BEST"] == (key, NOW) and rows["SOON"][0] is not None
    assert all(rows[c] == (None, None) for c in ("TOO-LATE", "LAPSING", "OTHER-PCT", "FREE-SHIP"))
    fs = run(issuer.create(plan_key(), None, Decimal("10"), True, EXPIRY, now=NOW))
    assert (fs.code, fs.free_shipping) == ("FREE-SHIP", True)


def test_pool_respects_a_sale_that_starts_sooner(sim, pool):
    """The caller caps the expiry before the next sale; a code valid past it is never used."""
    sale = NOW + timedelta(hours=10)
    add_codes(pool, TICIMAX, ("AFTER-SALE", "10", False, sale + timedelta(minutes=1)))
    issuer = issuer_for(shop(sim, TICIMAX), pool)
    with pytest.raises(CouponError, match="no free code"):
        run(issuer.create(plan_key(), None, 10, False, sale, now=NOW))
    add_codes(pool, TICIMAX, ("BEFORE-SALE", "10", False, sale - timedelta(hours=1)))
    assert run(issuer.create(plan_key(), None, 10, False, sale, now=NOW)).code == "BEFORE-SALE"


def test_empty_pool_says_how_to_fill_it(sim, pool):
    add_codes(pool, IDEASOFT, ("IDEASOFT-ONLY", "10", False, NOW + timedelta(hours=30)))
    add_codes(pool, TICIMAX, ("EXPIRED", "10", False, NOW - timedelta(hours=1)))
    with pytest.raises(CouponError) as empty:
        run(issuer_for(shop(sim, TICIMAX), pool).create(plan_key(), None, 10, False, EXPIRY, now=NOW))
    assert str(empty.value) == (
        "coupon pool for shop kapadokya-ticimax is empty: load codes with "
        "`cart-recovery coupons load --shop kapadokya-ticimax FILE.csv`"
    )


def test_concurrent_claimers_get_different_codes(sim, pool):
    add_codes(pool, IDEASOFT, *[(f"C{n:02d}", "10", False, NOW + timedelta(hours=30 + n)) for n in range(8)])
    issuer = issuer_for(shop(sim, IDEASOFT), pool)

    # A claim not yet committed locks its code; another claimer skips it instead of waiting.
    holder = psycopg2.connect(pool)
    try:
        held = coupon_pool.claim(
            holder,
            shop_id=IDEASOFT,
            plan_key="held",
            pct=Decimal("10"),
            free_shipping=False,
            latest_expiry=EXPIRY,
            now=NOW,
        )
        started = time.monotonic()
        other = run(issuer.create(plan_key(), None, 10, False, EXPIRY, now=NOW))
        assert time.monotonic() - started < 5 and other.code != held.code
        holder.commit()
    finally:
        holder.close()

    async def many() -> list:
        return await asyncio.gather(
            *(issuer.create(plan_key(), None, 10, False, EXPIRY, now=NOW) for _ in range(6))
        )

    codes = [c.code for c in run(many())] + [held.code, other.code]
    assert sorted(codes) == [f"C{n:02d}" for n in range(8)]  # every code once, none twice


def test_a_plan_row_racing_itself_ends_with_one_code(sim, pool):
    add_codes(
        pool,
        IDEASOFT,
        ("R1", "10", False, NOW + timedelta(hours=40)),
        ("R2", "10", False, NOW + timedelta(hours=30)),
    )
    key = plan_key()
    first = psycopg2.connect(pool)
    try:
        mine = coupon_pool.claim(
            first,
            shop_id=IDEASOFT,
            plan_key=key,
            pct=Decimal("10"),
            free_shipping=False,
            latest_expiry=EXPIRY,
            now=NOW,
        )
        results: list = []
        second = threading.Thread(
            target=lambda: results.append(
                run(issuer_for(shop(sim, IDEASOFT), pool).create(key, None, 10, False, EXPIRY, now=NOW))
            )
        )
        second.start()
        time.sleep(0.5)  # the second claimer now waits on the first one's plan_key
        assert second.is_alive()
        first.commit()
        second.join(timeout=10)
    finally:
        first.close()
    assert results == [mine]
    claimed = {code: row[0] for code, row in pool_rows(pool, IDEASOFT).items()}
    assert claimed == {"R1": key, "R2": None}


def test_a_claim_in_the_callers_transaction_is_undone_with_it(sim, pool):
    add_codes(pool, IDEASOFT, ("T1", "10", False, NOW + timedelta(hours=30)))
    conn = psycopg2.connect(pool)
    try:
        coupon = run(
            issuer_for(shop(sim, IDEASOFT), conn).create(plan_key(), None, 10, False, EXPIRY, now=NOW)
        )
        assert coupon.code == "T1"
        conn.rollback()  # the dispatcher's transaction failed: the code is free again
    finally:
        conn.close()
    assert pool_rows(pool, IDEASOFT)["T1"] == (None, None)


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def shops_file(sim, tmp_path, monkeypatch):
    path = tmp_path / "shops.yaml"
    path.write_text(sim.shops_yaml())
    monkeypatch.setenv("CART_RECOVERY_SHOPS_FILE", str(path))
    return path


def coupons_command(argv: list[str], url: str) -> tuple[int, list[str]]:
    out: list[str] = []
    args = cli.build_parser().parse_args(["coupons", *argv])
    assert args.handler.__name__ == "_coupons"
    return coupon_pool.run(args, url, now=NOW, out=out.append), out


def test_cli_loads_a_file_and_reports_the_pool(sim, pool, shops_file, tmp_path):
    csv_file = tmp_path / "codes.csv"
    csv_file.write_text(
        "\ufeffcode,pct,free_shipping,expires_at\n"
        "YAZ10-A,10,false,2025-11-26T10:00:00+03:00\n"
        "YAZ10-B,10,no,2025-11-25T23:00:00Z\n"
        "KARGO-A,0,true,2025-11-26T00:00:00+00:00\n"
    )
    code, out = coupons_command(["load", "--shop", IDEASOFT, str(csv_file)], pool)
    assert code == 0 and out == [f"loaded 3 codes into the pool of {IDEASOFT}"]
    code, out = coupons_command(["status"], pool)
    assert code == 0
    assert out[1].split() == [
        IDEASOFT,
        "0.00",
        "yes",
        "1",
        "0",
        "0",
        "2025-11-26",
        "00:00",
        "..",
        "2025-11-26",
        "00:00",
        "UTC",
    ]
    assert out[2].split()[:6] == [IDEASOFT, "10.00", "no", "2", "0", "0"]
    assert out[2].split()[6:8] == ["2025-11-25", "23:00"]
    # The loaded codes are claimable, with their expiry read in UTC.
    coupon = run(issuer_for(shop(sim, IDEASOFT), pool).create(plan_key(), None, 10, False, EXPIRY, now=NOW))
    assert (coupon.code, coupon.expires_at) == ("YAZ10-A", datetime(2025, 11, 26, 7, 0, tzinfo=UTC))


def test_cli_rejects_a_bad_file_whole_with_line_numbers(sim, pool, shops_file, tmp_path):
    add_codes(pool, IDEASOFT, ("ALREADY", "10", False, NOW + timedelta(hours=30)))
    csv_file = tmp_path / "codes.csv"
    csv_file.write_text(
        "code,pct,free_shipping,expires_at\n"
        "GOOD-1,10,false,2025-11-26T10:00:00+03:00\n"
        "BAD PCT,150,false,2025-11-26T10:00:00+03:00\n"
        "NAIVE,10,false,2025-11-26T10:00:00\n"
        "PAST,10,false,2025-11-01T10:00:00Z\n"
        "GOOD-1,10,false,2025-11-26T10:00:00+03:00\n"
        "NOTHING,0,false,2025-11-26T10:00:00Z\n"
        "SHIP,10,maybe,2025-11-26T10:00:00Z\n"
    )
    with pytest.raises(coupon_pool.PoolFileError) as bad:
        coupons_command(["load", "--shop", IDEASOFT, str(csv_file)], pool)
    problems = bad.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "line 3",
        "line 3",
        "line 4",
        "line 5",
        "line 6",
        "line 7",
        "line 8",
    ]
    assert "nothing loaded, 7 problem(s)" in str(bad.value)
    assert "pct '150' must be 0-100" in problems[1] and "no UTC offset" in problems[2]
    assert "repeats line 2" in problems[4]
    assert set(pool_rows(pool, IDEASOFT)) == {"ALREADY"}  # nothing loaded

    clash = tmp_path / "clash.csv"
    clash.write_text(
        "code,pct,free_shipping,expires_at\nNEW-1,10,false,2025-11-26T10:00:00Z\nalready,10,false,2025-11-26T10:00:00Z\n"
    )
    with pytest.raises(coupon_pool.PoolFileError, match="line 3: code already is already in the pool"):
        coupons_command(["load", "--shop", IDEASOFT, str(clash)], pool)
    assert set(pool_rows(pool, IDEASOFT)) == {"ALREADY"}

    header = tmp_path / "header.csv"
    header.write_text("code,percent\nX,10\n")
    with pytest.raises(
        coupon_pool.PoolFileError, match="line 1: the header must be code,pct,free_shipping,expires_at"
    ):
        coupons_command(["load", "--shop", IDEASOFT, str(header)], pool)


def test_cli_refuses_a_shop_with_a_coupon_api(sim, pool, shops_file, tmp_path):
    csv_file = tmp_path / "codes.csv"
    csv_file.write_text("code,pct,free_shipping,expires_at\nA,10,false,2025-11-26T10:00:00Z\n")
    with pytest.raises(Exception, match="created through its API"):
        coupons_command(["load", "--shop", SHOPIFY, str(csv_file)], pool)
    with pytest.raises(Exception, match="no shop 'nope'"):
        coupons_command(["load", "--shop", "nope", str(csv_file)], pool)


def test_the_command_line_end_to_end(sim, pool, shops_file, tmp_path, monkeypatch, capsys):
    """``cart-recovery coupons ...`` as an operator runs it: exit codes and what it prints."""
    monkeypatch.setenv("AIRFLOW_HOME", os.environ["AIRFLOW_HOME"])  # main() sets it; restored after
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat(timespec="seconds")  # the CLI's clock
    bad = tmp_path / "bad.csv"
    bad.write_text(f"code,pct,free_shipping,expires_at\nOK-1,10,false,{tomorrow}\nBAD,ten,false,{tomorrow}\n")
    assert cli.main(["coupons", "load", "--shop", IDEASOFT, str(bad)]) == 2
    assert "line 3: pct 'ten' is not a number" in capsys.readouterr().err
    assert pool_rows(pool, IDEASOFT) == {}

    good = tmp_path / "good.csv"
    good.write_text(f"code,pct,free_shipping,expires_at\nOK-1,10,false,{tomorrow}\n")
    assert cli.main(["coupons", "load", "--shop", IDEASOFT, str(good)]) == 0
    assert f"loaded 1 codes into the pool of {IDEASOFT}" in capsys.readouterr().out
    assert cli.main(["coupons", "status", "--shop", IDEASOFT]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:6] == [IDEASOFT, "10.00", "no", "1", "0", "0"]


def test_concurrent_sends_of_one_shop_each_get_their_coupon(sim):
    issuer = issuer_for(shop(sim, WOO), retry=quick_retry())
    keys = [plan_key() for _ in range(5)]

    async def many() -> list:
        return await asyncio.gather(
            *(
                issuer.create(key, f"buyer{n}@example.com", 10, False, EXPIRY, now=NOW)
                for n, key in enumerate(keys)
            )
        )

    coupons = run(many())
    assert [c.code for c in coupons] == [issuer.code_for(key).lower() for key in keys]
    book = sim.state.coupon_book(WOO)
    assert [book.get(c.code).email_restrictions for c in coupons] == [
        (f"buyer{n}@example.com",) for n in range(5)
    ]
