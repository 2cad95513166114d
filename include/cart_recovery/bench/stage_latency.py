"""Stage latency: how late a stage-1 message goes out after its due time, under the real triggerer.

Starts ``cart-recovery up --demo`` on fresh databases (live shoppers off, quiet hours off), waits
for the first plan, then sends ``episodes`` Shopify checkouts to the webhook service, signed as
Shopify signs them, each abandoned so that its stage 1 falls due at a moment spread evenly over
``spread_s`` seconds, starting ``lead_s`` after they land (time for the webhook watcher and a
``cart_transform`` build to plan them). Nothing is triggered by hand: ``recovery_stage_1``'s
sensor waits in the triggerer and fires when rows fall due. Reported:

- ``lateness_s``: p50 / p95 / max of ``sent_at - planned_due_at`` over the episodes' messages
  (target: p95 at most 60 s); ``sent`` / ``expected`` (holdout customers are recorded, not sent);
- ``wait_for_due_running_max``: the most ``wait_for_due`` task instances seen *running* for more
  than 5 s (holding a worker slot while waiting, beyond the hand-over to the trigger) at once,
  sampled every second from Airflow's metadata (target: 0; they should be ``deferred``), and
  ``deferred_seen_max`` for contrast.

Lateness includes nothing but the dispatch path when ``lead_s`` leaves the webhook watcher and
the build enough time to plan the carts first; ``plan_ready_s`` says when they were all planned.
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg2

from cart_recovery.bench.live_pipeline import UpProcess, fresh_databases

NAME = "stage_latency"
SHOP = "anatolia-shopify"


def _checkout(n: int, last_activity: datetime):
    """A signed Shopify checkouts/create delivery of the demo shop, last active at ``last_activity``."""
    from cart_recovery.simulator.data import Cart, Customer, LineItem, Product, Variant, default_shops
    from cart_recovery.simulator.webhooks import delivery

    shop = next(s for s in default_shops(1) if s.id == SHOP)
    variant = Variant(id=42_000_000_000 + n, title="M", price=Decimal("749.90"), inventory_quantity=5)
    product = Product(
        id=9_000_000_000 + n,
        title="Keten Gömlek",
        product_type="apparel",
        variants=[variant],
        size_chart=None,
        created_at=last_activity,
        updated_at=last_activity,
    )
    customer = Customer(
        id=6_000_000_000 + n,
        first_name="Deniz",
        last_name="Kaya",
        email=f"latency{n}@example.com",
        phone=f"+90532{n:07d}",
        locale="tr",
        email_consent=True,
        whatsapp_consent=True,
        created_at=last_activity - timedelta(days=30),
        updated_at=last_activity - timedelta(days=30),
    )
    cart = Cart(
        id=39_000_000_000 + n,
        token=f"latency{n:025d}",
        customer=customer,
        email=customer.email,
        phone=customer.phone,
        currency="TRY",
        items=[LineItem(product, variant, 1)],
        created_at=last_activity,
        updated_at=last_activity,
    )
    return delivery(shop, cart, created=True)


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def measure(
    up: UpProcess, airflow_url: str, *, episodes: int, spread_s: float, lead_s: float
) -> dict[str, Any]:
    from cart_recovery.environment import admin_credentials

    up.login(*admin_credentials())
    up.wait_for(lambda: up.query("select count(*) from marts.recovery_plan")[0][0], 600, "the first plan")

    stage_one_delay = timedelta(minutes=30)
    landed = datetime.now(UTC)
    due = [landed + timedelta(seconds=lead_s + spread_s * i / max(episodes - 1, 1)) for i in range(episodes)]
    with httpx.Client(timeout=30) as client:
        for n, due_at in enumerate(due):
            webhook = _checkout(n, due_at - stage_one_delay)
            answer = client.post(
                f"{up.webhook_url}/webhooks/shopify", content=webhook.body, headers=webhook.headers
            )
            answer.raise_for_status()
    print(f"{episodes} checkouts sent in {(datetime.now(UTC) - landed).total_seconds():.1f} s", flush=True)
    plan_ready_s = None

    running_max = deferred_max = 0
    airflow_conn = psycopg2.connect(airflow_url)
    airflow_conn.autocommit = True
    deadline = time.monotonic() + lead_s + spread_s + 600
    done = 0
    try:
        while time.monotonic() < deadline:
            with airflow_conn.cursor() as cur:
                # a sensor is 'running' for the moment it takes to hand over to the trigger; one
                # still running after 5 s holds a worker slot while it waits
                cur.execute(
                    "select state, count(*) from task_instance where dag_id like 'recovery_stage_%%' "
                    "and task_id = 'wait_for_due' and (state = 'deferred' or (state = 'running' "
                    "and start_date < now() - interval '5 seconds')) group by 1"
                )
                states = dict(cur.fetchall())
            running_max = max(running_max, states.get("running", 0))
            if plan_ready_s is None:
                planned = up.query(
                    "select count(*) from marts.recovery_plan as plan join marts.abandoned_carts as carts "
                    "using (cart_key) where plan.stage = 1 and carts.email like 'latency%%@example.com'"
                )[0][0]
                if planned >= episodes:
                    plan_ready_s = round((datetime.now(UTC) - landed).total_seconds(), 1)
            deferred_max = max(deferred_max, states.get("deferred", 0))
            done = up.query(
                "select count(*) from ops.recovery_outbox as outbox "
                "join marts.abandoned_carts as carts using (cart_key) "
                "where outbox.stage = 1 and carts.email like 'latency%%@example.com' "
                "and outbox.status not in ('queued', 'sending')"
            )[0][0]
            if done >= episodes:
                break
            time.sleep(1)
    finally:
        airflow_conn.close()

    rows = up.query(
        """
        select outbox.status, extract(epoch from outbox.sent_at - outbox.planned_due_at)
        from ops.recovery_outbox as outbox
        join marts.abandoned_carts as carts using (cart_key)
        where outbox.stage = 1 and carts.email like 'latency%%@example.com'
        """
    )
    late = [float(seconds) for status, seconds in rows if seconds is not None]
    statuses: dict[str, int] = {}
    for status, _ in rows:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "episodes": episodes,
        "spread_s": spread_s,
        "lead_s": lead_s,
        "plan_ready_s": plan_ready_s,
        "outbox_rows": len(rows),
        "statuses": statuses,
        "sent": len(late),
        "lateness_s": {
            "p50": round(statistics.median(late), 1) if late else None,
            "p95": round(_percentile(late, 95), 1) if late else None,
            "max": round(max(late), 1) if late else None,
            "min": round(min(late), 1) if late else None,
        },
        "target_p95_s": 60,
        "wait_for_due_running_max": running_max,
        "deferred_seen_max": deferred_max,
    }


def main(
    *, episodes: int = 1000, spread_s: float = 600, lead_s: float = 300, quick: bool = False
) -> dict[str, Any]:
    import tempfile

    from cart_recovery.bench.results import write_result
    from cart_recovery.database import Database

    database = fresh_databases(Database.from_env(), "_latency")
    with tempfile.TemporaryDirectory(prefix="stage_latency_") as tmp:
        up = UpProcess(
            db_url=database.url,
            airflow_home=Path(tmp) / "airflow",
            env_overrides={"CART_RECOVERY_DEMO_ACTIVITY_S": "0", "CART_RECOVERY_QUIET_HOURS": "off"},
            args=["--demo"],
        ).start()
        try:
            airflow_url = database.airflow.set(drivername="postgresql").render_as_string(hide_password=False)
            result = measure(up, airflow_url, episodes=episodes, spread_s=spread_s, lead_s=lead_s)
            result["stopped_with_code"] = up.stop()
        finally:
            up.kill()
    result["cpus"] = os.cpu_count()
    path = write_result(NAME, result, database.url, quick=quick)
    result["written_to"] = str(path)
    return result
