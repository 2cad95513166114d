"""A cheap HTTP/1.1 load generator for the webhook benchmark.

On a 2-core machine the client competes with the server for CPU, so everything that can be done
before the timed window is: every request (headers and a signed, distinct Shopify
``checkouts/update`` body) is built up front as one ``bytes`` object, and the timed loop only
writes those bytes on a keep-alive connection and reads the answer's status line, headers and
body with asyncio streams (uvloop when installed). Runs in its own process (``multiprocessing``)
so its CPU time can be measured apart from the caller's.

Each request carries a unique ``X-Shopify-Webhook-Id`` that starts with the run id, so the caller
can count exactly the rows this run stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import resource
import time
from dataclasses import dataclass
from typing import Any

TOPIC = "checkouts/update"

_FIRST = ["Ayşe", "Mehmet", "Zeynep", "Emre", "Elif", "John", "Emma", "Oliver", "Fatma", "Can"]
_LAST = ["Yılmaz", "Kaya", "Demir", "Şahin", "Çelik", "Smith", "Brown", "Taylor", "Öztürk", "Aydın"]
_PRODUCTS = [
    ("Linen Shirt", ["S", "M", "L", "XL"], "899.90"),
    ("Wool Scarf", ["One size"], "349.00"),
    ("Leather Bag", ["Brown", "Black"], "1450.00"),
    ("Cotton Dress", ["36", "38", "40", "42"], "1199.50"),
    ("Denim Jacket", ["S", "M", "L"], "1599.00"),
    ("Silk Tie", ["Navy", "Burgundy"], "299.90"),
]
_CITIES = [("İstanbul", "34"), ("Ankara", "06"), ("İzmir", "35"), ("Bursa", "16"), ("Antalya", "07")]


@dataclass(frozen=True)
class LoadConfig:
    host: str
    port: int
    shop_domain: str
    secret: str
    run_id: str  # 8 hex digits: the prefix of every delivery id of this run
    clients: int
    duration_s: float
    warmup_s: float
    max_unique_bodies: int
    seed: int = 20261126


def delivery_id(run_id: str, n: int) -> str:
    """UUID-shaped like Shopify's, unique per request, prefixed by the run id."""
    middle = f"{(n >> 48) & 0xFFFF:04x}-4{(n >> 36) & 0xFFF:03x}-8{(n >> 24) & 0xFFF:03x}"
    return f"{run_id}-{middle}-{n & 0xFFFFFFFFFFFF:012x}"


def checkout(rng: random.Random, n: int, shop_domain: str) -> dict[str, Any]:
    """A Shopify abandoned checkout as the REST webhook sends it (checkouts/create|update)."""
    checkout_id = 35_000_000_000 + n
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    customer_id = 7_000_000_000 + rng.randrange(200_000)
    email = f"{first.lower()}.{last.lower()}{customer_id % 1000}@example.com"
    phone = f"+90555{rng.randrange(10_000_000):07d}"
    city, zip_prefix = rng.choice(_CITIES)
    address = {
        "first_name": first,
        "last_name": last,
        "address1": f"Bağdat Cd. No:{rng.randrange(1, 300)}",
        "address2": f"Daire {rng.randrange(1, 40)}",
        "phone": phone,
        "city": city,
        "zip": f"{zip_prefix}{rng.randrange(1000):03d}",
        "province": city,
        "country": "Turkey",
        "company": None,
        "latitude": None,
        "longitude": None,
        "name": f"{first} {last}",
        "country_code": "TR",
        "province_code": f"TR-{zip_prefix}",
    }
    line_items = []
    subtotal = 0.0
    for index in range(rng.randint(1, 4)):
        title, variants, price = rng.choice(_PRODUCTS)
        quantity = rng.randint(1, 3)
        subtotal += float(price) * quantity
        variant = rng.choice(variants)
        line_items.append(
            {
                "key": hashlib.md5(f"{n}-{index}".encode()).hexdigest(),
                "product_id": 8_000_000_000 + rng.randrange(500),
                "variant_id": 45_000_000_000 + rng.randrange(5000),
                "sku": f"{title[:3].upper()}-{variant[:3].upper()}",
                "title": title,
                "variant_title": variant,
                "vendor": "Anatolia Linen",
                "quantity": quantity,
                "price": price,
                "line_price": f"{float(price) * quantity:.2f}",
                "requires_shipping": True,
                "taxable": True,
                "gift_card": False,
                "grams": rng.randrange(100, 1500),
                "applied_discounts": [],
                "discount_allocations": [],
                "tax_lines": [
                    {"price": f"{float(price) * quantity * 0.2 / 1.2:.2f}", "rate": 0.2, "title": "KDV"}
                ],
            }
        )
    token = hashlib.sha1(f"token-{n}".encode()).hexdigest()[:32]
    minute = rng.randrange(60)
    return {
        "id": checkout_id,
        "token": token,
        "cart_token": hashlib.sha1(f"cart-{n}".encode()).hexdigest()[:32],
        "email": email,
        "gateway": None,
        "buyer_accepts_marketing": rng.random() < 0.7,
        "buyer_accepts_sms": rng.random() < 0.5,
        "sms_marketing_phone": phone,
        "created_at": f"2026-11-20T10:{minute:02d}:00+03:00",
        "updated_at": f"2026-11-20T11:{minute:02d}:{rng.randrange(60):02d}+03:00",
        "landing_site": "/collections/new-season",
        "note": None,
        "note_attributes": [],
        "referring_site": "https://www.instagram.com/",
        "shipping_lines": [],
        "taxes_included": True,
        "total_weight": sum(item["grams"] * item["quantity"] for item in line_items),
        "currency": "TRY",
        "presentment_currency": "TRY",
        "completed_at": None,
        "closed_at": None,
        "user_id": None,
        "location_id": None,
        "source_identifier": None,
        "source_url": None,
        "device_id": None,
        "phone": phone,
        "customer_locale": rng.choice(["tr", "tr-TR", "en"]),
        "line_items": line_items,
        "name": f"#{checkout_id}",
        "source": None,
        "abandoned_checkout_url": f"https://{shop_domain}/checkouts/cn/{token}/recover?key={token[:16]}",
        "discount_codes": [],
        "tax_lines": [],
        "source_name": "web",
        "total_discounts": "0.00",
        "total_line_items_price": f"{subtotal:.2f}",
        "total_price": f"{subtotal:.2f}",
        "total_tax": f"{subtotal * 0.2 / 1.2:.2f}",
        "subtotal_price": f"{subtotal:.2f}",
        "total_duties": None,
        "billing_address": address,
        "shipping_address": address,
        "customer": {
            "id": customer_id,
            "email": email,
            "phone": phone,
            "first_name": first,
            "last_name": last,
            "accepts_marketing": True,
            "created_at": "2025-03-02T09:12:44+03:00",
            "updated_at": "2026-11-20T10:00:00+03:00",
            "orders_count": rng.randrange(5),
            "state": "enabled",
            "verified_email": True,
            "tax_exempt": False,
            "tags": "",
            "currency": "TRY",
            "email_marketing_consent": {
                "state": rng.choice(["subscribed", "not_subscribed"]),
                "opt_in_level": "single_opt_in",
                "consent_updated_at": "2025-03-02T09:12:44+03:00",
            },
            "sms_marketing_consent": {
                "state": rng.choice(["subscribed", "not_subscribed"]),
                "opt_in_level": "single_opt_in",
                "consent_updated_at": "2025-03-02T09:12:44+03:00",
                "consent_collected_from": "SHOPIFY",
            },
            "default_address": {**address, "id": 9_000_000_000 + customer_id % 1_000_000, "default": True},
        },
    }


def build_requests(config: LoadConfig) -> tuple[list[bytes], dict[str, Any]]:
    """Every request of the run, as bytes, signed before the clock starts."""
    rng = random.Random(config.seed)
    secret = config.secret.encode()
    requests: list[bytes] = []
    sizes: list[int] = []
    for n in range(config.max_unique_bodies):
        body = json.dumps(
            checkout(rng, n, config.shop_domain), ensure_ascii=False, separators=(",", ":")
        ).encode()
        signature = base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode()
        head = (
            f"POST /webhooks/shopify HTTP/1.1\r\n"
            f"Host: {config.host}:{config.port}\r\n"
            f"User-Agent: Shopify-Captain-Hook\r\n"
            f"Accept: */*\r\n"
            f"Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Shopify-Shop-Domain: {config.shop_domain}\r\n"
            f"X-Shopify-Hmac-Sha256: {signature}\r\n"
            f"X-Shopify-Topic: {TOPIC}\r\n"
            f"X-Shopify-API-Version: 2024-10\r\n"
            f"X-Shopify-Triggered-At: 2026-11-20T08:{n % 60:02d}:00.000Z\r\n"
            f"X-Shopify-Webhook-Id: {delivery_id(config.run_id, n)}\r\n"
            f"\r\n"
        ).encode()
        requests.append(head + body)
        sizes.append(len(body))
    stats = {
        "prebuilt_requests": len(requests),
        "body_bytes": {"min": min(sizes), "mean": round(sum(sizes) / len(sizes)), "max": max(sizes)},
    }
    return requests, stats


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise RuntimeError("response without Content-Length")
    end = lower.find(b"\r\n", at + 17)
    length = int(lower[at + 17 : end])
    if length:
        await reader.readexactly(length)
    return status


async def _drive(config: LoadConfig, requests: list[bytes], report) -> dict[str, Any]:
    total = len(requests)
    state = {"next": 0, "exhausted": False}
    window: dict[str, float] = {}
    in_window: list[int] = []  # latency in microseconds of each request completed in the window
    statuses: dict[int, int] = {}  # status -> count, every answer of the run (warm-up included)
    window_statuses: dict[int, int] = {}  # status -> count, requests sent and answered in the window
    errors: dict[str, int] = {}
    per_second: list[int] = []

    async def client() -> None:
        reader = writer = None
        while True:
            now = time.perf_counter()
            if "end" in window and now >= window["end"]:
                break
            index = state["next"]
            if index >= total:
                state["exhausted"] = True
                break
            state["next"] = index + 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(config.host, config.port)
                started = time.perf_counter()
                writer.write(requests[index])
                status = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            done = time.perf_counter()
            statuses[status] = statuses.get(status, 0) + 1
            start = window.get("start")
            if start is not None and start <= started and done <= window["end"]:
                in_window.append(int((done - started) * 1e6))
                window_statuses[status] = window_statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    second = int(done - start)
                    while len(per_second) <= second:
                        per_second.append(0)
                    per_second[second] += 1
        if writer is not None:
            writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(config.clients)]
    await asyncio.sleep(config.warmup_s)
    # Start of the timed window: only requests sent from here on are measured.
    report("start")
    window["start"] = time.perf_counter()
    window["end"] = window["start"] + config.duration_s
    rusage_before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(config.duration_s)
    report("end")
    rusage_after = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*tasks)

    cpu_s = (rusage_after.ru_utime - rusage_before.ru_utime) + (
        rusage_after.ru_stime - rusage_before.ru_stime
    )
    in_window.sort()
    return {
        "sent_requests": state["next"],
        "requests_exhausted": state["exhausted"],
        "statuses_all": {str(k): v for k, v in sorted(statuses.items())},
        "statuses_in_window": {str(k): v for k, v in sorted(window_statuses.items())},
        "errors": errors,
        "latencies_us": in_window,
        "per_second_2xx": per_second[: int(config.duration_s)],
        "client_cpu_seconds": round(cpu_s, 2),
    }


def run(config: LoadConfig, conn) -> None:
    """Entry point of the load-generator process: ``conn`` is the caller's end of a Pipe.

    Sends ("ready", stats) after building the requests, waits for ("go",), then sends ("start",)
    and ("end",) at the edges of the timed window, and finally ("result", dict)."""
    try:
        import uvloop
    except ImportError:
        uvloop = None
    requests, stats = build_requests(config)
    conn.send(("ready", stats))
    conn.recv()  # "go"
    main = _drive(config, requests, lambda what: conn.send((what,)))
    result = uvloop.run(main) if uvloop is not None else asyncio.run(main)
    loop_name = "uvloop" if uvloop is not None else "asyncio"
    result["event_loop"] = loop_name
    result.update(stats)
    conn.send(("result", result))
    conn.close()
