"""The local stack's executor: Airflow's LocalExecutor with the tasks' heavy imports loaded once.

On Linux the LocalExecutor forks its worker processes from the scheduler, and every task process
is forked from a worker. A task of this project spends most of its time importing before it does
anything: the Task SDK's runner, Cosmos, dbt (2.3 s alone), great-expectations (about 8 s), pandas.
``PreloadingLocalExecutor`` imports them in the scheduler before the workers are forked (the way
``gunicorn --preload`` does), so every task starts with them in memory, shared copy-on-write.

It changes nothing else: same queues, same workers, same parallelism. Selected by the project's
environment (``AIRFLOW__CORE__EXECUTOR``); set that variable to ``LocalExecutor`` to do without.
"""

from __future__ import annotations

import importlib
import logging
import time

from airflow.executors.local_executor import LocalExecutor

log = logging.getLogger(__name__)


PRELOAD = (
    "airflow.sdk.execution_time.task_runner",
    "airflow.providers.postgres.hooks.postgres",
    "airflow.providers.http.hooks.http",
    "cosmos",
    "cosmos.operators.local",
    "dbt.cli.main",
    "dbt.adapters.postgres",
    "great_expectations",
    "great_expectations.expectations",
    "pandas",
    "cart_recovery.ingest.poll",
    "cart_recovery.plan",
)


def preload(modules: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import ``modules``; one that fails to import is logged and skipped (the task will say why)."""
    started = time.monotonic()
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception as exc:
            log.warning("preload of %s failed (%s); tasks import it themselves", name, exc)
    log.info("preloaded %d modules for the task processes in %.1f s", len(loaded), time.monotonic() - started)
    return loaded


class PreloadingLocalExecutor(LocalExecutor):
    """A LocalExecutor whose forked workers (and their tasks) inherit the project's imports."""

    def start(self) -> None:
        if self.is_mp_using_fork:
            preload()
        super().start()
