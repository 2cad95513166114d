"""Webhooks and polling land the same carts, once: each platform end to end against its fake.

The simulator sends its own signed webhooks (``simulator/webhooks.py``) for every cart and order
of a shop to the real webhook service, served by uvicorn on loopback; then the same shop is
polled with ``ingest_shop``. The cart (and order) ids in ``raw.webhook_events`` must equal those
in ``raw.polled_records``, and a second delivery of the same webhooks (same delivery ids) and a
second poll of the same interval must store nothing new. Ticimax sends no webhooks: polled only.

When the dbt staging models build, one more test runs ``dbt build --select staging`` on top and
checks that each cart is one row in the platform's staging cart model, whichever path it came by.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest
import uvicorn
from polling_helpers import INTERVAL_END

from cart_recovery.ingest.poll import ingest_shop
from cart_recovery.simulator import Simulator
from cart_recovery.simulator.webhooks import Delivery, delivery, send
from cart_recovery.webhooks.app import create_app
from cart_recovery.webhooks.config import WebhookConfig

DBT_PROJECT = Path(__file__).resolve().parents[2] / "dbt_project"

# shop id -> (webhook topics of its carts, of its orders)
WEBHOOK_SHOPS = {
    "anatolia-shopify": (("checkouts/create", "checkouts/update"), ("orders/create",)),
    "hudson-woo": (("cart.updated",), ("order.created", "order.updated")),
    "ege-ideasoft": (("abandoned_cart/updated",), ("order/created",)),
}
# shop id -> (staging cart model, its cart id column)
STAGING_CARTS = {
    "anatolia-shopify": ("stg_shopify__checkouts", "checkout_id"),
    "hudson-woo": ("stg_woocommerce__carts", "source_cart_id"),
    "ege-ideasoft": ("stg_ideasoft__carts", "source_cart_id"),
    "kapadokya-ticimax": ("stg_ticimax__carts", "source_cart_id"),
}


@pytest.fixture(scope="module")
def database(module_database):
    """A warehouse of this module's own: a test truncates raw and builds the staging models."""
    return module_database


@pytest.fixture
def webhook_service(simulator: Simulator, database, tmp_path, monkeypatch) -> Iterator[str]:
    """The webhook service for the simulator's shops, under uvicorn on a loopback port."""
    shops_file = tmp_path / "shops.yaml"
    shops_file.write_text(simulator.shops_yaml())
    monkeypatch.setenv("CART_RECOVERY_SHOPS_FILE", str(shops_file))
    _forget_webhooks(database.url, [shop.id for shop in simulator.shops])
    app = create_app(WebhookConfig.from_env(database_url=database.url))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the webhook service did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        _forget_webhooks(database.url, [shop.id for shop in simulator.shops])


def _forget_webhooks(url: str, shop_ids: list[str]) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("delete from raw.webhook_events where shop_id = any(%s)", (shop_ids,))
    finally:
        conn.close()


def _deliveries(simulator: Simulator, shop_id: str) -> list[Delivery]:
    shop = simulator.data(shop_id).shop
    data = simulator.data(shop_id)
    return [delivery(shop, cart, created=True) for cart in data.carts] + [
        delivery(shop, order, created=True) for order in data.orders
    ]


def _deliver(base_url: str, shop_id: str, deliveries: list[Delivery]) -> list[dict]:
    platform = deliveries[0].shop.platform
    with httpx.Client(timeout=10) as client:
        answers = [send(f"{base_url}/webhooks/{platform}", d, client=client) for d in deliveries]
    assert [a.status_code for a in answers] == [200] * len(deliveries), [a.text for a in answers]
    return [a.json() for a in answers]


def _sent_ids(deliveries: list[Delivery], topics: tuple[str, ...]) -> list[str]:
    """The platform's own ids of what the simulator sent (WooCommerce and Ideasoft ids are shorter
    than the simulator's internal ones)."""
    return sorted(str(json.loads(d.body)["id"]) for d in deliveries if d.topic in topics)


def _ids(warehouse, query: str, *params) -> list[str]:
    with warehouse.cursor() as cur:
        cur.execute(query, params)
        return sorted(row[0] for row in cur.fetchall())


def _webhook_ids(warehouse, shop_id: str, topics: tuple[str, ...]) -> list[str]:
    return _ids(
        warehouse,
        "select payload ->> 'id' from raw.webhook_events where shop_id = %s and topic = any(%s)",
        shop_id,
        list(topics),
    )


def _polled_ids(warehouse, shop_id: str, entity: str) -> list[str]:
    return _ids(
        warehouse,
        "select record_id from raw.polled_records where shop_id = %s and entity = %s",
        shop_id,
        entity,
    )


def _row_counts(warehouse, shop_id: str) -> tuple[int, int]:
    with warehouse.cursor() as cur:
        cur.execute(
            "select (select count(*) from raw.webhook_events where shop_id = %s), "
            "(select count(*) from raw.polled_records where shop_id = %s)",
            (shop_id, shop_id),
        )
        return cur.fetchone()


def _land_both_ways(simulator, database, webhook_service, shop_id) -> list[Delivery]:
    deliveries = _deliveries(simulator, shop_id)
    answers = _deliver(webhook_service, shop_id, deliveries)
    assert all(a.get("status") != "duplicate" for a in answers)
    report = ingest_shop(simulator.shop(shop_id), interval_end=INTERVAL_END, conn_url=database.url)
    assert report["cart"]["quarantined"] == 0
    return deliveries


@pytest.mark.parametrize("shop_id", list(WEBHOOK_SHOPS))
def test_webhooks_and_polling_land_the_same_carts_once(
    simulator, database, warehouse, webhook_service, shop_id
):
    cart_topics, order_topics = WEBHOOK_SHOPS[shop_id]
    data = simulator.data(shop_id)
    deliveries = _land_both_ways(simulator, database, webhook_service, shop_id)

    expected_carts = _sent_ids(deliveries, cart_topics)
    assert len(set(expected_carts)) == len(data.carts) == 8
    assert _webhook_ids(warehouse, shop_id, cart_topics) == expected_carts
    assert _polled_ids(warehouse, shop_id, "cart") == expected_carts
    # Orders too: the same ids by both paths.
    expected_orders = _sent_ids(deliveries, order_topics)
    assert len(set(expected_orders)) == len(data.orders) > 0
    assert _webhook_ids(warehouse, shop_id, order_topics) == expected_orders
    assert _polled_ids(warehouse, shop_id, "order") == expected_orders
    warehouse.rollback()
    counts = _row_counts(warehouse, shop_id)
    assert counts[0] == len(deliveries)

    # The platform retries every delivery (same delivery ids, same bodies) and the DAG re-runs
    # the same interval: nothing new is stored by either path.
    answers = _deliver(webhook_service, shop_id, deliveries)
    assert {a.get("status") for a in answers} == {"duplicate"}
    again = ingest_shop(simulator.shop(shop_id), interval_end=INTERVAL_END, conn_url=database.url)
    assert all(again[entity]["loaded"] == 0 for entity in ("cart", "order", "customer", "product"))
    warehouse.rollback()
    assert _row_counts(warehouse, shop_id) == counts


def test_ticimax_is_polled_only(simulator, database, warehouse):
    shop_id = "kapadokya-ticimax"
    data = simulator.data(shop_id)
    with pytest.raises(ValueError, match="sends no webhooks"):
        delivery(data.shop, data.carts[0])
    ingest_shop(simulator.shop(shop_id), interval_end=INTERVAL_END, conn_url=database.url)
    again = ingest_shop(simulator.shop(shop_id), interval_end=INTERVAL_END, conn_url=database.url)
    assert again["cart"]["loaded"] == 0
    # SepetID: the simulator's cart id cut to Ticimax's length, as its SOAP fake sends it.
    assert _polled_ids(warehouse, shop_id, "cart") == sorted(str(cart.id % 10_000_000) for cart in data.carts)


@pytest.mark.slow
def test_staging_has_one_row_per_cart(simulator, database, warehouse, webhook_service, tmp_path):
    # Staging is incremental and the module's other tests use the same shop ids: raw alone.
    with warehouse.cursor() as cur:
        cur.execute("truncate raw.webhook_events, raw.polled_records")
    warehouse.commit()
    sent = {}
    for shop_id, (cart_topics, _) in WEBHOOK_SHOPS.items():
        sent[shop_id] = set(
            _sent_ids(_land_both_ways(simulator, database, webhook_service, shop_id), cart_topics)
        )
    sent["kapadokya-ticimax"] = {
        str(cart.id % 10_000_000) for cart in simulator.data("kapadokya-ticimax").carts
    }
    ingest_shop(simulator.shop("kapadokya-ticimax"), interval_end=INTERVAL_END, conn_url=database.url)
    build = subprocess.run(
        # buildable: the staging models and the tests over them alone, not the tests that also
        # read an intermediate model (every_*_shop_is_in_the_shops_file, over stg_ops__shops)
        [
            str(Path(sys.executable).parent / "dbt"),
            "build",
            "--select",
            "staging",
            "--full-refresh",
            "--indirect-selection",
            "buildable",
        ],
        env={**os.environ, "DBT_TARGET_PATH": str(tmp_path / "target")},  # not the project's target/
        cwd=DBT_PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:]
    warehouse.rollback()
    for shop_id, (model, id_column) in STAGING_CARTS.items():
        with warehouse.cursor() as cur:
            cur.execute(
                f"select {id_column}, count(*) from staging.{model} where shop_id = %s group by 1",
                (shop_id,),
            )
            rows = dict(cur.fetchall())
        assert set(rows) == sent[shop_id], model
        assert set(rows.values()) == {1}, model
