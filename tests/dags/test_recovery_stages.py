"""The stage DAGs with ``dag.test()`` against the simulator: plan rows due become messages.

The simulator's shops are polled by ``cart_ingest`` and planned by a dbt build; then a run of
``recovery_stage_1`` (and of stage 2, which carries coupons) sends the due rows through the
simulator's fake WhatsApp Cloud API and SMTP sink, creating coupons in the fake shops. The
outbox, the fake's log and the sink must agree, message for message, and a second run sends
nothing again.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extras import RealDictCursor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dbt"))

from dbt_raw_rows import run_dbt
from polling_helpers import INTERVAL_END

from cart_recovery.simulator import run_simulator

pytestmark = pytest.mark.slow

DAGS = Path(__file__).resolve().parents[2] / "dags"
AS_OF = INTERVAL_END


@pytest.fixture(scope="module")
def database(module_database):
    """A warehouse of this module's own: the build and the outbox are this module's."""
    return module_database


@pytest.fixture(scope="module")
def pipeline(database, airflow_db, dbt_manifest, tmp_path_factory) -> Iterator:
    from airflow.dag_processing.dagbag import DagBag

    with run_simulator(seed=23, carts_per_shop=40, smtp=True) as sim, pytest.MonkeyPatch.context() as env:
        for name, value in sim.connection_env().items():
            env.setenv(name, value)
        shops_file = tmp_path_factory.mktemp("shops") / "shops.yaml"
        shops_file.write_text(sim.shops_yaml())
        env.setenv("CART_RECOVERY_SHOPS_FILE", str(shops_file))
        env.setenv("CART_RECOVERY_LINK_SECRET", "test-link-secret-0123456789")
        env.setenv("CART_RECOVERY_PUBLIC_URL", "https://hooks.example.test")
        # The simulated history is days old: keep it sendable, and the night out of the way.
        env.setenv("CART_RECOVERY_EXPIRE_AFTER_HOURS", str(24 * 30))
        env.setenv("CART_RECOVERY_DISPATCH_LOOKBACK_DAYS", "30")
        env.setenv("CART_RECOVERY_QUIET_HOURS", "off")
        sim.whatsapp.knobs.pair_interval = 0
        ingest = DagBag(dag_folder=str(DAGS / "cart_ingest.py")).dags["cart_ingest"]
        assert ingest.test(logical_date=AS_OF).state == "success"
        run_dbt("build", "--full-refresh", as_of=AS_OF)
        yield sim


def _stage_dag(stage: int):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / f"recovery_stage_{stage}.py"))
    assert bag.import_errors == {}
    return bag.dags[f"recovery_stage_{stage}"]


def _rows(database, sql: str, *params) -> list[dict]:
    with psycopg2.connect(database.url) as conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(sql, params)
        return [dict(row) for row in cur.fetchall()]


def _summary(run, stage: int) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == f"recovery_stage_{stage}",
                XComModel.run_id == run.run_id,
                XComModel.task_id == "send_due",
                XComModel.key == "return_value",
            )
        )
    return json.loads(value) if isinstance(value, str) else value


def _run(stage: int, as_of=AS_OF):
    run = _stage_dag(stage).test(run_conf={"as_of": as_of.isoformat()})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    return run, states


def test_the_stages_send_the_due_plan_once_and_create_the_coupons(pipeline, database):
    sim = pipeline
    due = _rows(
        database,
        """
        select plan_key, channel, template, suppressed_reason from marts.recovery_plan
        where stage = 1 and due_at <= %s and (suppressed_reason is null or suppressed_reason = 'holdout')
        """,
        AS_OF,
    )
    assert len(due) >= 10, "the simulator's shops have stage-1 rows due"

    run, states = _run(1)
    assert states == {"wait_for_due": "success", "send_due": "success"}
    summary = _summary(run, 1)
    outbox = {
        row["plan_key"]: row for row in _rows(database, "select * from ops.recovery_outbox where stage = 1")
    }
    assert set(outbox) == {row["plan_key"] for row in due}  # every due row, once
    assert summary["enqueued"] == len(due)
    assert sum(summary["counts"].values()) == len(due)
    statuses = Counter(row["status"] for row in outbox.values())
    assert statuses["sending"] == 0 and statuses["unknown"] == 0, statuses
    assert statuses["sent"] >= 5, statuses

    # the fake WhatsApp API accepted exactly the rows the outbox says were sent over WhatsApp
    accepted = sim.whatsapp.messages()
    sent_whatsapp = {
        r["provider_message_id"]: r
        for r in outbox.values()
        if r["status"] == "sent" and r["channel"] == "whatsapp"
    }
    assert {m.id for m in accepted} == set(sent_whatsapp)
    for message in accepted:
        row = sent_whatsapp[message.id]
        assert message.wa_id == row["recipient"].lstrip("+")
        assert message.template == row["template"]
        assert message.callback_data == row["plan_key"]
        assert all(parameter in row["rendered_text"] for parameter in message.parameters)
    # the SMTP sink received exactly the rows sent by email, by Message-ID
    sent_email = {
        r["provider_message_id"] for r in outbox.values() if r["status"] == "sent" and r["channel"] == "email"
    }
    assert {m.message_id for m in sim.smtp.messages} == sent_email
    # every sent row is traceable and personal
    for row in outbox.values():
        if row["status"] == "sent":
            assert row["rendered_text"] and row["sent_at"] and row["guards"]["plan"] == "pass"
            assert row["planned_by"]["template"] is not None
            assert "https://hooks.example.test/r/" in row["rendered_text"]
    held = [row for row in outbox.values() if row["status"] == "holdout"]
    assert all(row["sent_at"] is None and row["provider_message_id"] is None for row in held)

    # a second run finds nothing new to send
    again, _ = _run(1)
    assert len(sim.whatsapp.messages()) == len(accepted)
    assert len(sim.smtp.messages) == len(sent_email)
    assert _summary(again, 1) is None or _summary(again, 1)["enqueued"] == 0

    # then stage 2, in the stages' real order (one test: pytest-randomly must not reverse them)
    _stage_two_creates_the_coupons_it_sends(sim, database)


def _stage_two_creates_the_coupons_it_sends(sim, database):
    # two hours after stage 1: an episode's stages go out at least stage_gap (an hour) apart
    _run(2, AS_OF + timedelta(hours=2))
    sent = _rows(
        database,
        "select * from ops.recovery_outbox where stage = 2 and status = 'sent' and coupon_code is not null",
    )
    assert sent, "stage 2 sent coupons"
    for row in sent:
        assert row["coupon_code"] in row["rendered_text"]
        assert row["coupon_expires_at"] > row["sent_at"]
        book = sim.state.coupon_book(row["shop_id"])
        stored = book.get(row["coupon_code"])
        assert stored is not None, f"coupon {row['coupon_code']} not created in {row['shop_id']}"
