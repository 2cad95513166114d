"""The recovery story plus the carts the review tests (tests/dispatch/test_review_*.py) need.

Each extra cart is one a real shop sends: the same phone in two shops (one WhatsApp business
number serves every shop), a cart abandoned late in the evening (its first two stages fall due
inside the quiet hours of one night), and a checkout without line items.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dbt"))  # the story's raw-row helpers

from dbt_raw_rows import RawBatch, at, pick_customer_id, shopify_checkout, shopify_customer, woo_cart
from recovery_story import AS_OF, SHOPIFY, WOO, story

# One person, one phone, a cart in the Shopify shop and one in the WooCommerce shop, both idle
# since two hours before AS_OF: both stage-1 rows fall due at AS_OF - 90 minutes.
SHARED_PHONE = "+905320009988"
SHOPPER_SHOPIFY = pick_customer_id(SHOPIFY, 20001, holdout=False)
SHOPPER_WOO = pick_customer_id(WOO, 21001, holdout=False)
SHARED_CHECKOUT, SHARED_WOO_CART = 7101, 611

# Idle from 21:40 in Istanbul (18:40 UTC) on 27 December: stage 1 falls due at 22:10 and stage 2 at
# 01:40, both inside the quiet hours (21:00-09:00), which end at 06:00 UTC on the 28th.
NIGHT_OWL = pick_customer_id(SHOPIFY, 22001, holdout=False)
NIGHT_CHECKOUT = 7102
NIGHT_IDLE = at("2026-12-27 18:40")
QUIET_END = at("2026-12-28 06:00")

# A Shopify checkout without line items (a cart emptied, or a checkout created from a link).
EMPTY_BUYER = pick_customer_id(SHOPIFY, 23001, holdout=False)
EMPTY_CHECKOUT = 7103
EMPTY_PHONE = "+905320007766"


def review_story() -> RawBatch:
    raw = story()
    idle = AS_OF - timedelta(hours=2)

    shopper = shopify_customer(SHOPPER_SHOPIFY, "Selin", "selin@example.com", SHARED_PHONE, True, True)
    raw.webhook(
        "shopify",
        SHOPIFY,
        "checkouts/create",
        shopify_checkout(SHARED_CHECKOUT, shopper, "450.00", idle, idle),
        idle,
    )
    raw.webhook(
        "woocommerce",
        WOO,
        "cart.updated",
        woo_cart(
            SHARED_WOO_CART,
            SHOPPER_WOO,
            "selin.k@example.co.uk",
            SHARED_PHONE,
            "35.00",
            idle,
            idle,
            email_consent=True,
            whatsapp_consent=True,
        ),
        idle,
    )

    owl = shopify_customer(NIGHT_OWL, "Baran", "baran@example.com", "+905320005544", True, True)
    raw.webhook(
        "shopify",
        SHOPIFY,
        "checkouts/create",
        shopify_checkout(NIGHT_CHECKOUT, owl, "700.00", NIGHT_IDLE, NIGHT_IDLE),
        NIGHT_IDLE,
    )

    empty = shopify_customer(EMPTY_BUYER, "Oya", "oya@example.com", EMPTY_PHONE, True, True)
    moment = AS_OF - timedelta(hours=3)
    raw.webhook(
        "shopify",
        SHOPIFY,
        "checkouts/create",
        {**shopify_checkout(EMPTY_CHECKOUT, empty, "0.00", moment, moment), "line_items": []},
        moment,
    )
    return raw
