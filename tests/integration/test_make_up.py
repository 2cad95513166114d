"""``make up`` end to end, the way a newcomer runs it: the real components, the scheduler doing the work.

``cart-recovery up --demo`` starts the api-server, scheduler, dag-processor, triggerer and the
webhook service with the simulator's four demo shops (their live shoppers off, so that every
webhook here is the test's own). Nothing here calls ``dag.test()``; apart from the manual and
backfill runs it checks, the test only watches, through the REST API and the warehouse, until

- ``cart_ingest`` ran on its schedule and succeeded,
- ``cart_transform`` ran because of cart_ingest's Asset and succeeded, with no logical date, and
  ``marts.recovery_plan`` holds every demo shop's carts,
- a manual run of ``cart_ingest`` without a logical date and a backfill of two earlier slots
  succeed,
- with ``cart_ingest`` paused, a cart sent by webhook (signed as the platform signs it) reaches
  ``marts.recovery_plan`` through a build that the webhook watcher's Asset event started,
- its stage-1 message goes out from a scheduled ``recovery_stage_1`` run through the simulator's
  fake WhatsApp API, and the fake's status callbacks mark it delivered in ``ops.recovery_outbox``,

then sends Ctrl-C and checks that every process stopped. It uses its own databases
(``<test db>_e2e``), Airflow home and ports, so it never meets the other tests' data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import psutil
import pytest
from database_copies import drop_copies

from cart_recovery.bench.live_pipeline import UpProcess, fresh_databases, parse_time
from cart_recovery.environment import admin_credentials

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_DAGS = {p.stem for p in (ROOT / "dags").glob("*.py")}
DEMO_SHOPS = {"anatolia-shopify", "hudson-woo", "kapadokya-ticimax", "ege-ideasoft"}
WEBHOOK_ASSET = "cart-recovery://warehouse/raw/webhook_events"
RAW_ASSET = "cart-recovery://warehouse/raw"


@pytest.fixture
def stack(database, dbt_manifest, tmp_path) -> Iterator[UpProcess]:
    stack_database = fresh_databases(database, "_e2e")
    up = UpProcess(
        db_url=stack_database.url,
        airflow_home=tmp_path / "airflow",
        # The demo shops, with their live shoppers off: every webhook here is the test's own.
        # Quiet hours off: the stage DAGs must send whatever the hour of the run in Istanbul.
        env_overrides={"CART_RECOVERY_DEMO_ACTIVITY_S": "0", "CART_RECOVERY_QUIET_HOURS": "off"},
        args=["--demo"],
    ).start()
    try:
        yield up
    finally:
        up.kill()
        drop_copies(stack_database, stack_database.warehouse.database, stack_database.airflow.database)


def _webhook_cart(checkout_id: int, now: datetime):
    """A Shopify checkout of the demo shop, abandoned two hours ago, as Shopify's webhook sends it."""
    from cart_recovery.simulator.data import Cart, Customer, LineItem, Product, Variant, default_shops
    from cart_recovery.simulator.webhooks import delivery

    shop = next(s for s in default_shops(1) if s.id == "anatolia-shopify")
    moment = now - timedelta(hours=2)
    variant = Variant(id=41_000_000_001, title="M", price=Decimal("749.90"), inventory_quantity=5)
    product = Product(
        id=8_000_009_001,
        title="Keten Gömlek",
        product_type="apparel",
        variants=[variant],
        size_chart=None,
        created_at=moment,
        updated_at=moment,
    )
    customer = Customer(
        id=7_999_000_001,
        first_name="Ayşe",
        last_name="Yılmaz",
        email="ayse.e2e@example.com",
        phone="+905321234567",
        locale="tr",
        email_consent=True,
        whatsapp_consent=True,
        created_at=moment - timedelta(days=30),
        updated_at=moment - timedelta(days=30),
    )
    cart = Cart(
        id=checkout_id,
        token="e2e0000000000000000000000000token",
        customer=customer,
        email=customer.email,
        phone=customer.phone,
        currency="TRY",
        items=[LineItem(product, variant, 1)],
        created_at=moment,
        updated_at=moment,
    )
    return delivery(shop, cart, created=True)


def test_make_up_runs_the_pipeline_under_the_scheduler(stack: UpProcess):
    user, password = admin_credentials()
    stack.login(user, password)
    assert httpx.get(f"{stack.base}/api/v2/dags", timeout=10).status_code == 401

    def listed_dags():
        dags = {d["dag_id"]: d for d in stack.api("dags")["dags"]}
        return dags if set(dags) >= EXPECTED_DAGS else None

    dags = stack.wait_for(listed_dags, 180, "the DAGs to be listed")
    assert not any(dags[d]["is_paused"] for d in EXPECTED_DAGS), "the local stack runs its DAGs unpaused"

    # 1. cart_ingest on its schedule (nothing here triggers a run).
    ingest = stack.wait_for(
        lambda: stack.succeeded_runs("cart_ingest", "scheduled"), 300, "a scheduled cart_ingest run"
    )[0]
    polled = dict(stack.query("select shop_id, count(*) from raw.polled_records group by 1"))
    assert set(polled) == DEMO_SHOPS, polled

    # 2. cart_transform because of cart_ingest's Asset; then the plan holds every demo shop's carts.
    def transform_after_ingest():
        return [
            run
            for run in stack.succeeded_runs("cart_transform", "asset_triggered")
            if RAW_ASSET
            in {e["uri"] for e in stack.consumed_asset_events("cart_transform", run["dag_run_id"])}
        ]

    transform = stack.wait_for(transform_after_ingest, 420, "cart_transform on cart_ingest's Asset")[0]
    assert transform["logical_date"] is None  # the case that broke: no data interval, no logical date
    planned = dict(stack.query("select shop_id, count(*) from marts.recovery_plan group by 1"))
    assert set(planned) == DEMO_SHOPS, f"plan rows per shop: {planned}"
    ((as_of,),) = stack.query(
        "select as_of from ops.transform_runs where run_id = %s", transform["dag_run_id"]
    )
    assert as_of == parse_time(transform["run_after"])  # the run's time, from run_after

    # 3. A manual run without a logical date, and a backfill of the two slots before the first
    # scheduled one, render and run too (each takes its time from run_time: run_after, the slot).
    manual = stack.post("dags/cart_ingest/dagRuns", {"logical_date": None})
    slot = parse_time(ingest["run_after"])
    stack.post(
        "backfills",
        {
            "dag_id": "cart_ingest",
            "from_date": (slot - timedelta(minutes=10)).isoformat(),
            "to_date": (slot - timedelta(minutes=5)).isoformat(),
            "max_active_runs": 1,
        },
    )

    def manual_and_backfill_done():
        manual_ok = [
            r
            for r in stack.succeeded_runs("cart_ingest", "manual")
            if r["dag_run_id"] == manual["dag_run_id"]
        ]
        backfilled = stack.succeeded_runs("cart_ingest", "backfill")
        return manual_ok and len(backfilled) == 2 and (manual_ok, backfilled)

    _, backfilled = stack.wait_for(manual_and_backfill_done, 300, "the manual and backfill cart_ingest runs")
    assert sorted(parse_time(r["logical_date"]) for r in backfilled) == [
        slot - timedelta(minutes=10),
        slot - timedelta(minutes=5),
    ]

    # 4. A cart that arrives by webhook is planned with no poll at all: cart_ingest is paused, so
    # only the webhook watcher's Asset event can start the build that plans it.
    stack.set_paused("cart_ingest", True)
    sent_at = datetime.now(UTC)
    webhook = _webhook_cart(38_000_000_001, sent_at)
    answer = httpx.post(
        f"{stack.webhook_url}/webhooks/shopify", content=webhook.body, headers=webhook.headers
    )
    assert answer.status_code == 200, answer.text
    ((event_id,),) = stack.query(
        "select event_id from raw.webhook_events where delivery_id = %s",
        webhook.headers["X-Shopify-Webhook-Id"],
    )

    def webhook_cart_planned():
        return stack.query(
            "select count(*) from marts.recovery_plan join marts.abandoned_carts using (cart_key) "
            "where abandoned_carts.shop_id = 'anatolia-shopify' and abandoned_carts.email = %s",
            "ayse.e2e@example.com",
        )[0][0]

    assert stack.wait_for(webhook_cart_planned, 300, "the webhook cart in marts.recovery_plan") == 3
    print(f"webhook cart planned {(datetime.now(UTC) - sent_at).total_seconds():.0f} s after it was sent")

    def watcher_builds():
        """Successful builds queued after the webhook, with the watcher's events they consumed."""
        fired_for = [
            event["extra"]["payload"]["event_id"]
            for run in stack.succeeded_runs("cart_transform", "asset_triggered")
            if parse_time(run["run_after"]) > sent_at
            for event in stack.consumed_asset_events("cart_transform", run["dag_run_id"])
            if event["uri"] == WEBHOOK_ASSET
        ]
        return [fired for fired in fired_for if fired >= event_id]

    assert stack.wait_for(watcher_builds, 300, "the build started by the webhook watcher")

    # 5. The stage DAGs send under the scheduler: the webhook cart's stage 1 (due 90 minutes ago)
    # goes out from a scheduled recovery_stage_1 run through the simulator's fake WhatsApp API,
    # whose signed status callbacks, through the webhook service, mark it delivered and read.
    def webhook_cart_delivered():
        rows = stack.query(
            "select outbox.status, outbox.channel, outbox.provider_message_id, outbox.rendered_text "
            "from ops.recovery_outbox as outbox join marts.abandoned_carts as carts using (cart_key) "
            "where carts.email = %s and outbox.stage = 1",
            "ayse.e2e@example.com",
        )
        return rows and rows[0][0] in ("delivered", "read") and rows[0]

    status, channel, message_id, text = stack.wait_for(
        webhook_cart_delivered, 240, "the webhook cart's stage 1 sent and delivered"
    )
    assert channel == "whatsapp" and message_id.startswith("wamid."), (status, channel, message_id)
    assert "Ayşe" in text and "Keten Gömlek" in text and f"{stack.webhook_url}/r/" in text
    sent_by = stack.succeeded_runs("recovery_stage_1", "scheduled")
    assert sent_by, "a scheduled (continuous) recovery_stage_1 run sent it"
    print(
        f"webhook cart's stage 1 {status} "
        f"{(datetime.now(UTC) - sent_at).total_seconds():.0f} s after the cart was sent"
    )

    # 6. Ctrl-C stops everything it started, the running tasks first.
    children = psutil.Process(stack.process.pid).children(recursive=True)
    assert len(children) >= 5  # api-server, scheduler, dag-processor, triggerer, webhooks (and workers)
    assert stack.stop() == 0, stack.output()
    assert "Stopped." in stack.output()
    time.sleep(1)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"processes left running: {alive}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{stack.base}/api/v2/monitor/health", timeout=2)
