"""``cart_transform`` runs end to end with ``dag.test()`` against the real test PostgreSQL.

Raw rows go in, the DAG copies the shops file into ``ops.shops``, builds the marts through
Cosmos, records the build and publishes the plan; a second run builds incrementally, and a privacy
erasure or a change to the shops file forces the next one to refresh.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest

from cart_recovery import phones

SHOP = "anatolia-shopify"
EXAMPLE_SHOPS = Path(__file__).resolve().parents[2] / "config" / "shops.example.yaml"
RUN_AFTER = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)


def _checkout(checkout_id: int, updated_at: datetime) -> dict:
    stamp = updated_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "id": checkout_id,
        "token": f"tok{checkout_id}",
        "cart_token": f"cart{checkout_id}",
        "email": f"buyer{checkout_id}@example.com",
        "phone": "+905321234567",
        "customer_locale": "tr",
        "customer": {
            "id": 880000 + checkout_id,
            "email": f"buyer{checkout_id}@example.com",
            "phone": "+905321234567",
            "first_name": "Ayşe",
            "last_name": "Yılmaz",
            "email_marketing_consent": {"state": "subscribed"},
            "sms_marketing_consent": {"state": "subscribed"},
        },
        "line_items": [
            {
                "product_id": 1,
                "variant_id": 11,
                "title": "Linen Shirt",
                "variant_title": "M",
                "quantity": 1,
                "price": "899.90",
            }
        ],
        "total_price": "899.90",
        "currency": "TRY",
        "abandoned_checkout_url": f"https://anatolia-linen.myshopify.com/checkouts/tok{checkout_id}/recover",
        "created_at": stamp,
        "updated_at": stamp,
        "completed_at": None,
    }


def _land(conn, checkout_id: int, updated_at: datetime) -> None:
    """A checkout webhook, stored as the webhook service stores it (with its phone numbers)."""
    with conn.cursor() as cur:
        phones.record_payload_phones(cur, SHOP, "TR", [_checkout(checkout_id, updated_at)])
        cur.execute(
            """
            insert into raw.webhook_events (platform, shop_id, topic, delivery_id, received_at, payload)
            values ('shopify', %s, 'checkouts/update', %s, %s, %s)
            """,
            (
                SHOP,
                f"dag-test-{checkout_id}",
                updated_at + timedelta(seconds=5),
                json.dumps(_checkout(checkout_id, updated_at)),
            ),
        )


def _query(database, sql: str, *params):
    with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


@pytest.fixture(scope="module")
def cart_transform(airflow_db, dbt_manifest):
    from airflow.dag_processing.dagbag import DagBag

    from cart_recovery.settings import Paths

    bag = DagBag(dag_folder=str(Paths.from_env().dags / "cart_transform.py"))
    assert bag.import_errors == {}
    return bag.dags["cart_transform"]


@pytest.fixture(scope="module")
def database(module_database):
    """A warehouse of this module's own: its builds drop and rebuild the dbt schemas. The shops
    file is the example's, whose first shop the raw rows belong to."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CART_RECOVERY_SHOPS_FILE", str(EXAMPLE_SHOPS))
        yield module_database


@pytest.fixture
def clean_warehouse(database):
    """Only this test's raw rows, and no dbt state or build history from another test."""
    with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
        cur.execute("drop schema if exists policy, staging, intermediate, marts cascade")
        cur.execute(
            "truncate raw.webhook_events, raw.polled_records, ops.transform_runs, "
            "ops.privacy_requests, ops.shops, ops.shop_changes, ops.phone_numbers cascade"
        )
        _land(conn, 1, RUN_AFTER - timedelta(hours=2))  # abandoned 2 hours before the run
    return database


def _run(dag, run_after: datetime, *, logical_date: datetime | None = None):
    """One run; without a logical date it has the shape of an asset-triggered run (no data interval)."""
    dag_run = dag.test(run_after=run_after, logical_date=logical_date)
    failed = {ti.task_id: ti.state for ti in dag_run.get_task_instances() if ti.state != "success"}
    assert dag_run.state == "success", failed
    return dag_run


def test_renders_every_dbt_node_as_a_task(cart_transform):
    """One task per model and seed of the manifest (its tests run inside it: `dbt build`), in
    one task group per dbt folder so the graph reads layer by layer, plus the DAG's own three."""
    from cart_recovery.settings import Paths

    manifest = json.loads(Paths.from_env().dbt_manifest.read_text())
    expected = {
        f"dbt.{os.path.dirname(node['original_file_path']).replace('/', '.')}."
        f"{node['name']}_{node['resource_type']}_build"
        for node in manifest["nodes"].values()
        if node["resource_type"] in ("model", "seed") and node["package_name"] == "cart_recovery"
    }
    assert "dbt.models.marts.recovery.recovery_plan_model_build" in expected  # the naming, pinned
    assert set(cart_transform.task_ids) == expected | {"sync_shops", "decide_build", "publish_recovery_plan"}
    assert cart_transform.get_task("sync_shops").downstream_task_ids == {"decide_build"}


def test_builds_the_marts_then_incrementally(cart_transform, clean_warehouse):
    database = clean_warehouse
    _run(cart_transform, RUN_AFTER, logical_date=RUN_AFTER)  # a scheduled or backfill run

    rows = _query(database, "select stage, suppressed_reason, due_at from marts.recovery_plan order by stage")
    assert [stage for stage, _, _ in rows] == [1, 2, 3]
    assert _query(database, "select count(*) from marts.abandoned_carts") == [(1,)]
    runs = _query(database, "select full_refresh, reason, plan_summary from ops.transform_runs")
    assert [(full, reason) for full, reason, _ in runs] == [(True, "first build")]
    assert runs[0][2]["carts"] == 1 and runs[0][2]["plan_rows"] == 3
    # the shop as the shops file defines it (task sync_shops), its phone read in its country
    assert _query(database, "select shop_id, country, timezone from ops.shops order by shop_id")[0] == (
        "anatolia-shopify",
        "TR",
        "Europe/Istanbul",
    )
    assert _query(database, "select timezone, currency, phone from marts.abandoned_carts") == [
        ("Europe/Istanbul", "TRY", "+905321234567")
    ]

    # A new cart lands; the next run builds incrementally and picks it up.
    with psycopg2.connect(database.url) as conn:
        _land(conn, 2, RUN_AFTER + timedelta(minutes=10))
    # No logical date and no data interval, as when cart_transform runs on its Asset: the run's
    # time is run_after (this failed to render with `{{ data_interval_end }}`).
    _run(cart_transform, RUN_AFTER + timedelta(hours=2))
    runs = _query(database, "select full_refresh, reason, as_of from ops.transform_runs order by as_of")
    assert runs == [
        (True, "first build", RUN_AFTER),
        (False, "incremental", RUN_AFTER + timedelta(hours=2)),
    ]
    assert _query(database, "select count(*) from marts.abandoned_carts") == [(2,)]


def test_privacy_erasure_and_backfill_force_a_full_refresh(cart_transform, clean_warehouse):
    from cart_recovery.plan import decide_build, record_build

    database = clean_warehouse
    assert decide_build(RUN_AFTER.isoformat()) == {"full_refresh": True, "reason": "first build"}
    record_build("earlier-build", RUN_AFTER.isoformat(), {"full_refresh": True, "reason": "first build"}, {})
    last_as_of = RUN_AFTER
    assert decide_build(last_as_of.isoformat()) == {"full_refresh": False, "reason": "incremental"}

    earlier = (last_as_of - timedelta(days=1)).isoformat()
    assert decide_build(earlier)["full_refresh"] is True
    assert "backfill" in decide_build(earlier)["reason"]

    with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
        cur.execute(
            """
            insert into ops.privacy_requests
                (platform, shop_id, topic, delivery_id, customer_id, payload, status,
                 received_at, processed_at)
            values ('shopify', %s, 'customers/redact', 'dag-test-redact', '880001', '{}', 'completed',
                    now(), now())
            """,
            (SHOP,),
        )
    decision = decide_build(last_as_of.isoformat())
    assert decision == {"full_refresh": True, "reason": "1 privacy erasure(s) since the last build"}
    assert decide_build(last_as_of.isoformat(), requested=True)["reason"] == "requested (param full_refresh)"


def test_a_change_to_the_shops_file_forces_a_full_refresh(clean_warehouse, tmp_path, monkeypatch):
    """A shop's definition changes what the models compute from history (local times, phone
    numbers): the next build after a sync that changed a shop is a full refresh."""
    from cart_recovery.plan import decide_build, record_build
    from cart_recovery.shops import sync_configured_shops

    assert sync_configured_shops()["added"] == [
        "anatolia-shopify",
        "bosphorus-woo",
        "kapadokya-ideasoft",
        "ege-ticimax",
    ]
    record_build("earlier-build", RUN_AFTER.isoformat(), {"full_refresh": True, "reason": "first build"}, {})
    assert sync_configured_shops() == {"added": [], "changed": [], "removed": []}  # idempotent
    assert decide_build(RUN_AFTER.isoformat()) == {"full_refresh": False, "reason": "incremental"}

    edited = tmp_path / "shops.yaml"
    text = EXAMPLE_SHOPS.read_text().replace("timezone: Europe/Istanbul", "timezone: Europe/Berlin", 1)
    edited.write_text(text.split("  - id: kapadokya-ideasoft")[0])  # and two shops removed
    monkeypatch.setenv("CART_RECOVERY_SHOPS_FILE", str(edited))
    assert sync_configured_shops() == {
        "added": [],
        "changed": ["anatolia-shopify"],
        "removed": ["ege-ticimax", "kapadokya-ideasoft"],
    }
    assert decide_build(RUN_AFTER.isoformat()) == {
        "full_refresh": True,
        "reason": "shops file changed since the last build: "
        "anatolia-shopify, ege-ticimax, kapadokya-ideasoft",
    }
    assert _query(clean_warehouse, "select shop_id, timezone from ops.shops order by shop_id") == [
        ("anatolia-shopify", "Europe/Berlin"),
        ("bosphorus-woo", "Europe/London"),
    ]


def test_a_cart_of_a_shop_missing_from_the_shops_file_fails_the_run(cart_transform, clean_warehouse):
    """In the DAG as Cosmos renders it (a task per model, its tests inside with dbt's buildable
    selection): the cart of a shop the file does not have fails the run at int_carts_unioned,
    and nothing downstream is built from it."""
    with psycopg2.connect(clean_warehouse.url) as conn, conn.cursor() as cur:
        cur.execute("update raw.webhook_events set shop_id = 'closed-shop' where shop_id = %s", (SHOP,))
    for task in cart_transform.tasks:
        task.retries = 0  # fail now, not after the production retry delay
    dag_run = cart_transform.test(run_after=RUN_AFTER, logical_date=RUN_AFTER)
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert dag_run.state == "failed"
    assert states["dbt.models.intermediate.carts.int_carts_unioned_model_build"] == "failed"
    assert states["dbt.models.marts.recovery.recovery_plan_model_build"] == "upstream_failed"
    assert states["publish_recovery_plan"] == "upstream_failed"
