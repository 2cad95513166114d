"""Airflow DAG `recovery_stage_1`: sends stage 1 of the recovery sequence.

The three stage DAGs are one wiring (`cart_recovery.dispatch.stage_dag`), each its own DAG so that
a stage can be paused alone; its `doc_md` in the Airflow UI says what it does and how to run it.
"""

from cart_recovery.dispatch.stage_dag import build_stage_dag

dag = build_stage_dag(1)
