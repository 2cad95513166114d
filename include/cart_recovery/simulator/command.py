"""``cart-recovery simulate``: the fake shop APIs and an SMTP sink in the foreground, for demos and
manual tests."""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the server imports FastAPI and uvicorn: only when the command runs
    from cart_recovery.simulator.server import Simulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=1, help="data seed; the same seed gives the same shops")
    parser.add_argument("--port", type=int, default=8090, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--carts", type=int, default=50, help="carts per shop")
    parser.add_argument(
        "--defects",
        type=int,
        default=0,
        help="carts per shop with an invalid field (to see quarantine at work)",
    )
    parser.add_argument("--throttle-every", type=int, default=0, help="answer every Nth request with 429")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds of those 429s")
    parser.add_argument(
        "--webhook-url",
        default=None,
        help="send each shop's carts as signed webhooks to <url>/webhooks/<platform> once "
        "the simulator listens (e.g. http://127.0.0.1:8081), and the fake WhatsApp API's status "
        "callbacks and inbound messages to <url>/webhooks/whatsapp",
    )


def _announce(simulator: Simulator, webhook_url: str | None) -> None:
    from cart_recovery.simulator.webhooks import send

    print(f"Shop simulator listening on {simulator.base_url}  (Ctrl-C stops it)\n")
    for shop in simulator.shops:
        print(f"  {shop.platform:<12} {shop.id:<20} {simulator.url(shop.id)}")
    if simulator.smtp is not None:
        print(f"  {'smtp':<12} {'smtp-sink':<20} smtp://{simulator.smtp.host}:{simulator.smtp.port}")
    print(f"  {'whatsapp':<12} {'whatsapp_default':<20} {simulator.base_url}/whatsapp")
    if webhook_url:
        simulator.whatsapp.set_webhook(f"{webhook_url.rstrip('/')}/webhooks/whatsapp")
    print("\n# shops.yaml (save as config/shops.yaml or point CART_RECOVERY_SHOPS_FILE at it):")
    print(simulator.shops_yaml())
    print("# connections (paste into your shell or .env):")
    for name, value in simulator.connection_env().items():
        print(f"export {name}={shlex.quote(value)}")
    if webhook_url:
        print()
        for shop in simulator.shops:
            if shop.platform == "ticimax":
                continue  # Ticimax has no webhooks
            data = simulator.data(shop.id)
            url = f"{webhook_url.rstrip('/')}/webhooks/{shop.platform}"
            answers = [send(url, delivery).status_code for delivery in _deliveries(shop, data)]
            print(
                f"# webhooks {shop.id} -> {url}: {len(answers)} sent, "
                f"{sum(1 for a in answers if 200 <= a < 300)} answered 2xx"
            )
    print(flush=True)


def _deliveries(shop, data):
    from cart_recovery.simulator.webhooks import delivery

    for cart in data.carts:
        yield delivery(shop, cart, created=True)
    for order in data.orders:
        yield delivery(shop, order, created=True)


def run(args: argparse.Namespace) -> int:
    from cart_recovery.simulator.server import serve_forever
    from cart_recovery.simulator.state import Knobs

    serve_forever(
        seed=args.seed,
        carts_per_shop=args.carts,
        host=args.host,
        port=args.port,
        defects=args.defects,
        knobs=Knobs(throttle_every=args.throttle_every, retry_after=args.retry_after),
        announce=lambda simulator: _announce(simulator, args.webhook_url),
    )
    return 0
