"""Every DAG file imports cleanly, quickly, and carries the metadata operators rely on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_FOLDER.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def dagbag(dbt_manifest):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_dag_files_exist():
    assert DAG_FILES, f"no DAG files in {DAGS_FOLDER}"


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_one_dag_per_file_named_after_it(dagbag):
    by_file = {Path(dag.fileloc).stem: dag_id for dag_id, dag in dagbag.dags.items()}
    assert sorted(by_file) == sorted(p.stem for p in DAG_FILES)
    assert all(stem == dag_id for stem, dag_id in by_file.items())


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.stem)
def test_dag_metadata(dagbag, dag_file):
    dag = dagbag.dags[dag_file.stem]
    assert dag.tags, "every DAG needs tags"
    assert dag.doc_md and len(dag.doc_md) > 100, "every DAG needs a doc_md saying what it does"
    assert dag.max_active_runs == 1 or dag.schedule is None
    for task in dag.tasks:
        assert task.owner and task.owner != "airflow", f"{task.task_id} has no owner"
        assert task.retries >= 1, f"{task.task_id} has no retries"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.stem)
def test_dag_file_parses_in_under_a_second(dagbag, dag_file):
    # The dagbag fixture has already imported Airflow and the providers; this times the file.
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=str(dag_file))
    elapsed = time.perf_counter() - started
    assert bag.import_errors == {}
    assert elapsed < 1.0, f"{dag_file.name} took {elapsed:.2f} s to parse"


def test_ingest_tasks_have_a_time_limit(dagbag):
    """A shop that never answers must not hold cart_ingest (max_active_runs=1) for good."""
    dag = dagbag.dags["cart_ingest"]
    limits = {task.task_id: task.execution_timeout for task in dag.tasks}
    assert all(limits.values()), limits
    assert limits["poll_shop"] > limits["publish_raw"]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_waits_deferred_then_sends(dagbag, stage):
    """One DAG per stage (so each can be paused), always one run waiting in a deferrable sensor
    for its stage's rows, then the send task, which has a time limit."""
    from cart_recovery.dispatch.sensor import DuePlanSensor

    dag = dagbag.dags[f"recovery_stage_{stage}"]
    assert type(dag.timetable).__name__ == "ContinuousTimetable" and dag.max_active_runs == 1
    sensor = dag.get_task("wait_for_due")
    assert isinstance(sensor, DuePlanSensor) and sensor.stage == stage
    send = dag.get_task("send_due")
    assert send.upstream_task_ids == {"wait_for_due"}
    assert send.execution_timeout is not None
    assert [inlet.uri for inlet in send.inlets] == ["cart-recovery://warehouse/marts/recovery_plan"]


def test_the_send_task_retries_after_the_configured_delay(dagbag, monkeypatch):
    """A send task whose worker died is retried (twice) after 30 s, or what the operator set."""
    from cart_recovery.dispatch.stage_dag import build_stage_dag
    from cart_recovery.errors import ConfigurationError

    send = dagbag.dags["recovery_stage_1"].get_task("send_due")
    assert (send.retries, send.retry_delay.total_seconds()) == (2, 30)
    monkeypatch.setenv("CART_RECOVERY_SEND_RETRY_DELAY_SECONDS", "5")
    assert build_stage_dag(2).get_task("send_due").retry_delay.total_seconds() == 5
    monkeypatch.setenv("CART_RECOVERY_SEND_RETRY_DELAY_SECONDS", "soon")
    with pytest.raises(ConfigurationError, match="CART_RECOVERY_SEND_RETRY_DELAY_SECONDS"):
        build_stage_dag(3)
