"""Exactly once under Airflow's real executors: a worker killed mid-batch, its send task retried.

``tests/dispatch/test_exactly_once.py`` races and kills dispatchers as plain processes; here the
scheduler does it all, once with Airflow's LocalExecutor and once with the CeleryExecutor (the
machine's Redis on 127.0.0.1:6379 as the broker, two ``airflow celery worker`` processes). The
api-server, dag-processor and triggerer run as processes of their own for the module, and each
case starts a scheduler with its executor (``airflow_stack.AirflowStack``); the test only
unpauses ``recovery_stage_1`` and watches, through the metadata database and the REST API.

The plan is the simulator's shops, built by dbt up to a minute ago, so the stage's sensor
(deferred to the triggerer) finds rows due on the real clock and its send task runs at once. The
fake WhatsApp API answers each message seconds after it took it, and the send task claims three
rows at a time, so the batch takes a while. While a message the fake took is still unanswered,
the worker running the send task is killed with SIGKILL together with everything under it (as
when its machine is lost). The scheduler notices the missing heartbeat, Airflow retries the task
with the same trigger event, and the retry sends the rest; the stage's next run, when the
killed try's lease ends, turns the rows it left ``sending`` into ``unknown``.

The fake's log and the SMTP sink are the ground truth: no plan row reached them twice, no person
got the same template twice, every message they took is recorded ``sent`` or, interrupted,
``unknown``, and what was due but unsent at the kill was sent by the retry.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from airflow_stack import AirflowStack, RedisDatabase, redis_answers, say
from dependencies import missing
from dispatch_helpers import (
    accepted_per_plan_row,
    assert_each_sent_once,
    emailed_plan_rows,
    outbox,
    reset,
    simulated_plan,
)

from cart_recovery.simulator import Simulator

pytestmark = pytest.mark.slow

STAGE = 1
DAG_ID = f"recovery_stage_{STAGE}"
DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / f"{DAG_ID}.py"
# Each message is answered this long after the fake took it: the window in which the kill
# interrupts a send whose answer never gets recorded.
RESPONSE_DELAY_S = 3.0
STACK_ENV = {
    # a killed worker's task is noticed in seconds, not the default five minutes
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
    # small chunks: the send task is mid-batch long enough to be killed there
    "CART_RECOVERY_DISPATCH_CHUNK": "3",
    # the killed try's rows turn unknown a minute after their claim, not ten
    "CART_RECOVERY_SENDING_LEASE_MINUTES": "1",
    # the retry starts 5 s after Airflow gave the killed try up, not 30
    "CART_RECOVERY_SEND_RETRY_DELAY_SECONDS": "5",
}
SENT = ("sent", "delivered", "read")


@pytest.fixture(scope="module")
def database(module_database):
    return module_database


@pytest.fixture(scope="module")
def plan(database, airflow_db, dbt_manifest, tmp_path_factory) -> Iterator[Simulator]:
    """The simulator's shops, polled and planned as of a minute ago: stage-1 rows are due now."""
    as_of = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    with simulated_plan(tmp_path_factory.mktemp("plan"), seed=23, carts_per_shop=40, as_of=as_of) as sim:
        yield sim


@pytest.fixture(scope="module")
def airflow(plan, database, fresh_airflow_db, tmp_path_factory) -> Iterator[AirflowStack]:
    """The api-server, dag-processor and triggerer, with the stage DAG parsed; the cases start
    their scheduler (and workers) on it, one executor after the other."""
    with fresh_airflow_db(database):
        stack = AirflowStack(database, tmp_path_factory.mktemp("stack") / "airflow", [DAG_FILE], STACK_ENV)
        try:
            stack.start()
            stack.login()
            stack.wait_for(
                lambda: stack.api("GET", f"dags/{DAG_ID}").status_code == 200, 300, "the DAG parsed"
            )
            yield stack
        finally:
            stack.stop()


@pytest.fixture(params=["LocalExecutor", "CeleryExecutor"])
def stack(request, airflow, plan, database) -> Iterator[AirflowStack]:
    """The stack with a scheduler running ``request.param``, the stage paused with no runs yet,
    an empty outbox and fresh fakes."""
    executor = request.param
    if executor == "CeleryExecutor" and not redis_answers():
        missing("the CeleryExecutor case needs Redis on 127.0.0.1:6379 (apt-get install redis-server)")
    airflow.set_paused(DAG_ID, True)
    airflow.delete_runs(DAG_ID)  # an earlier case's
    reset(database.url, plan)
    redis = RedisDatabase.take() if executor == "CeleryExecutor" else None
    try:
        airflow.start_executor(executor, redis)
        yield airflow
    finally:
        try:
            airflow.stop_executor()
        finally:
            if redis is not None:
                redis.release()


def _claimer(run_id: str, try_number: int) -> str:
    """The send task's claimer, as ``stage_dag.send_due`` builds it."""
    return f"{DAG_ID}/{run_id}/send_due/try-{try_number}"


def test_a_worker_killed_mid_batch_and_its_task_retried_send_nothing_twice(plan, stack, database):
    sim, url = plan, database.url
    started = time.monotonic()

    def progress() -> str:
        tries = [
            f"{ti['run_id'][-25:]}: {ti['state']} try {ti['try_number']}"
            for ti in stack.task_instances(DAG_ID, "send_due")
        ]
        sensors = [ti["state"] for ti in stack.task_instances(DAG_ID, "wait_for_due")]
        statuses = Counter(row["status"] for row in outbox(url, STAGE).values())
        return (
            f"wait_for_due {sensors}; send_due {tries}; outbox {dict(statuses)}; "
            f"fake WhatsApp took {len(sim.whatsapp.messages())}, SMTP sink {len(sim.smtp.messages)}"
        )

    sim.whatsapp.knobs.response_delay = RESPONSE_DELAY_S
    stack.set_paused(DAG_ID, False)

    # 1. the send task mid-batch: rows sent and recorded, a message the fake took a moment ago
    # still unanswered (so the kill lands before its answer), and due rows not claimed yet
    def mid_batch() -> dict | None:
        running = [ti for ti in stack.task_instances(DAG_ID, "send_due") if ti["state"] == "running"]
        if len(running) != 1 or not running[0]["pid"]:
            return None
        statuses = {key: row["status"] for key, row in outbox(url, STAGE).items()}
        fresh = [
            m
            for m in sim.whatsapp.messages()
            if time.time() - m.accepted_at < RESPONSE_DELAY_S / 3
            and statuses.get(m.callback_data) == "sending"
        ]
        values = set(statuses.values())
        return running[0] if fresh and "sent" in values and "queued" in values else None

    victim = stack.wait_for(mid_batch, 420, "the send task mid-batch", progress, every=0.1)
    run_id, killed_try = victim["run_id"], victim["try_number"]
    killed_claimer = _claimer(run_id, killed_try)
    stack.kill_worker_of(victim["pid"])
    at_kill = outbox(url, STAGE)
    taken_at_kill = set(accepted_per_plan_row(sim)) | {key for key, _ in emailed_plan_rows(sim)}
    sim.whatsapp.knobs.response_delay = 0
    left_sending = {key for key, row in at_kill.items() if row["status"] == "sending"}
    queued_at_kill = {key for key, row in at_kill.items() if row["status"] == "queued"}
    sent_before = {key for key, row in at_kill.items() if row["status"] in SENT}
    say(
        f"killed {killed_claimer} after {time.monotonic() - started:.0f} s: {len(sent_before)} sent, "
        f"{len(left_sending)} sending ({len(left_sending & taken_at_kill)} taken by the fake), "
        f"{len(queued_at_kill)} queued"
    )
    interrupted = {
        key for key in left_sending & taken_at_kill if at_kill[key]["claimed_by"] == killed_claimer
    }
    assert interrupted, "the kill interrupted a message the fake had taken"
    # (an earlier try that Airflow itself gave up on, a missed heartbeat on a loaded machine,
    # may have left rows sending too)
    tries_so_far = {_claimer(run_id, n) for n in range(1, killed_try + 1)}
    assert {at_kill[key]["claimed_by"] for key in left_sending} <= tries_so_far
    assert sent_before and queued_at_kill

    # 2. Airflow notices the dead worker and retries the task, which sends the rest
    def retried() -> dict | None:
        [ti] = [ti for ti in stack.task_instances(DAG_ID, "send_due") if ti["run_id"] == run_id]
        assert ti["state"] != "failed", f"the send task failed for good: {progress()}"
        return ti if ti["state"] == "success" and ti["try_number"] > killed_try else None

    done = stack.wait_for(retried, 420, "the killed send task retried, successfully", progress, every=1)
    tries = {t["try_number"]: t["state"] for t in stack.tries(DAG_ID, "send_due", run_id)}
    assert tries[killed_try] in ("failed", "up_for_retry") and tries[done["try_number"]] == "success", tries
    retry_claimer = _claimer(run_id, done["try_number"])
    failed_tries = {_claimer(run_id, n) for n in range(1, done["try_number"])}

    # 3. the stage's next run, when the killed try's lease ends, turns its rows unknown
    def recovered() -> bool:
        return not any(row["status"] == "sending" for row in outbox(url, STAGE).values())

    stack.wait_for(recovered, 300, "the rows left sending turned unknown", progress, every=1)
    stack.set_paused(DAG_ID, True)

    def idle() -> bool:
        busy = ("queued", "running", "scheduled", "up_for_retry", "restarting")
        return not any(ti["state"] in busy for ti in stack.task_instances(DAG_ID, "send_due"))

    stack.wait_for(idle, 300, "no send task left running (the stage paused)", progress, every=1)
    say(f"{stack.executor}: {progress()}")

    # 4. nothing was sent twice, and the outbox agrees with what the fakes took
    stored = assert_each_sent_once(sim, url)
    messages = sim.whatsapp.messages()
    twice = {pair: n for pair, n in Counter((m.wa_id, m.template) for m in messages).items() if n > 1}
    assert not twice, f"a person got the same template twice: {twice}"
    taken = set(accepted_per_plan_row(sim)) | {key for key, _ in emailed_plan_rows(sim)}
    assert {stored[key]["status"] for key in taken} <= {*SENT, "unknown"}
    unknown = {key for key, row in stored.items() if row["status"] == "unknown"}
    assert left_sending <= unknown, "the rows the killed try left sending are unknown"
    for key in unknown:  # each left by a try that did not finish, never sent again
        row = stored[key]
        assert row["claimed_by"] in failed_tries and row["sent_at"] is None, row
        assert "not re-sent" in row["error"], row
    # what the killed try had sent stays as it recorded it
    for key in sent_before:
        assert stored[key]["status"] in SENT and stored[key]["claimed_by"] in tries_so_far, stored[key]
    # what was due and unclaimed at the kill, the retry decided: sent (most), or suppressed,
    # held out or deferred by a guard, as any run would; none left queued and due
    sent_by_retry = {
        key for key, row in stored.items() if row["status"] in SENT and row["claimed_by"] == retry_claimer
    }
    assert sent_by_retry & queued_at_kill, "the retry sent rows the killed try never reached"
    for key in queued_at_kill:
        row = stored[key]
        assert row["status"] != "sending", row
        if row["status"] == "queued":  # deferred by a guard: later than when it was decided
            assert row["reason"] and row["due_at"] > row["updated_at"], row
    assert not [row for row in stored.values() if row["status"] == "failed"]
    say(
        f"{stack.executor}: sent {len([r for r in stored.values() if r['status'] in SENT])} "
        f"(WhatsApp {len(messages)}, email {len(sim.smtp.messages)}), {len(sent_by_retry)} of them by "
        f"try {done['try_number']}; unknown {len(unknown)}; {time.monotonic() - started:.0f} s"
    )
