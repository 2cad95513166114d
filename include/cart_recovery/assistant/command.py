"""``cart-recovery assistant reply``: what the assistant would answer, printed, nothing sent."""

from __future__ import annotations

import argparse
import json

from cart_recovery.errors import ConfigurationError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="assistant_command", required=True)
    reply = actions.add_parser(
        "reply", help="answer one message for a shop (and a cart) and print it; sends and stores nothing"
    )
    reply.add_argument("--shop", required=True, help="the shop's id in the shops file")
    reply.add_argument("--text", required=True, help="the customer's message")
    reply.add_argument(
        "--cart", help="a cart key of marts.abandoned_carts (needs the database); without it, policy only"
    )
    reply.add_argument(
        "--json", action="store_true", help="print one JSON object (intent, language, reply, actions)"
    )


def run(args: argparse.Namespace) -> int:
    from cart_recovery.assistant.replies import reply
    from cart_recovery.shops import load_shops, shops_file_path

    shops = {shop.id: shop for shop in load_shops()}
    shop = shops.get(args.shop)
    if shop is None:
        raise ConfigurationError(
            f"No shop {args.shop!r} in {shops_file_path()}; "
            f"known shops: {', '.join(sorted(shops)) or 'none'}."
        )
    cart = None
    if args.cart:
        import psycopg2

        from cart_recovery.assistant.carts import load_cart
        from cart_recovery.database import Database

        with psycopg2.connect(Database.from_env().url) as conn, conn.cursor() as cursor:
            cart = load_cart(cursor, shop.id, args.cart)
    result = reply(shop, args.text, cart)
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False))
    else:
        print(f"[{result.intent} · {result.language} · {result.confidence:.2f}] {result.reply}")
        if result.actions:
            print("actions: " + ", ".join(result.actions))
    return 0
