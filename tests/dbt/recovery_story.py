"""The customers' story that the recovery-mart tests build from: raw rows of all four platforms.

``story()`` is what has landed by ``AS_OF``; ``later_story()`` is what lands by ``AS_OF_LATER``
(a later order, new carts, a guest who registers), for the incremental-equals-full comparison.
"""

from __future__ import annotations

from datetime import timedelta

from dbt_raw_rows import (
    RawBatch,
    at,
    customer_key,
    ideasoft_cart,
    ideasoft_member,
    is_holdout,
    iso_gmt,
    pick_customer_id,
    shopify_checkout,
    shopify_customer,
    shopify_order,
    ticimax_cart,
    ticimax_member,
    woo_cart,
    woo_order,
)

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
# Lands a checkout by webhook (with its token) before AS_OF, then a newer polled version (no token).
PATH_SWITCHER = pick_customer_id(SHOPIFY, 10001, holdout=False)
# A WooCommerce (UK shop) account with +44 7700 900456, whose guest cart says 07700 900456.
UK_BUYER = pick_customer_id(WOO, 11001, holdout=False)
UK_PHONE = "+447700900456"


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

    # The UK shop: an account with an international number, then a guest cart (no email) with the
    # national spelling of the same number: one person (phone numbers are read in the shop's
    # country, GB), so the cart belongs to the account.
    poll(
        "woocommerce",
        WOO,
        "customer",
        UK_BUYER,
        at("2026-09-01 10:00"),
        {
            "id": UK_BUYER,
            "email": "oliver@example.co.uk",
            "first_name": "Oliver",
            "last_name": "Smith",
            "billing": {"email": "oliver@example.co.uk", "phone": "+44 7700 900456"},
            "date_created_gmt": iso_gmt(at("2026-09-01 10:00")),
            "date_modified_gmt": iso_gmt(at("2026-09-01 10:00")),
        },
    )
    wh(
        "woocommerce",
        WOO,
        "cart.updated",
        woo_cart(
            604,
            0,
            None,
            "07700 900456",
            "35.00",
            at("2026-12-13 18:00"),
            at("2026-12-13 18:00"),
            email_consent=False,
            whatsapp_consent=True,
        ),
        at("2026-12-13 18:00"),
    )
    # A guest whose only contact is no phone number at all: no contact, never a guess.
    wh(
        "woocommerce",
        WOO,
        "cart.updated",
        woo_cart(
            605,
            0,
            None,
            "123",
            "15.00",
            at("2026-12-13 19:00"),
            at("2026-12-13 19:00"),
            email_consent=False,
            whatsapp_consent=True,
        ),
        at("2026-12-13 19:00"),
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
    # A checkout whose webhook carries the token; later_story() lands a newer polled version.
    derya = shopify_customer(PATH_SWITCHER, "Derya", "derya@example.com", "+905337778899", True, True)
    wh(
        "shopify",
        SHOPIFY,
        "checkouts/create",
        shopify_checkout(7010, derya, "1200.00", at("2026-12-26 09:00"), at("2026-12-26 09:00")),
        at("2026-12-26 09:00"),
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
    # The same checkout, changed, polled: no token in a polled checkout (dbt_raw_rows.polled_shape).
    derya = shopify_customer(PATH_SWITCHER, "Derya", "derya@example.com", "+905337778899", True, True)
    raw.poll(
        "shopify",
        SHOPIFY,
        "cart",
        7010,
        at("2026-12-29 09:00"),
        shopify_checkout(7010, derya, "1300.00", at("2026-12-26 09:00"), at("2026-12-29 09:00")),
        fetched_at=landed,
    )
    return raw
