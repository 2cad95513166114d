"""Live pipeline: ``make up`` on a fresh machine, measured as a newcomer meets it.

Starts ``cart-recovery up`` against fresh ``<warehouse>_live`` databases and a fresh Airflow home,
with no shops file (the simulator's four demo shops), the live shoppers off (so that after the
first poll there is nothing new) and ``cart_ingest`` every minute. Nothing is triggered by hand:
the scheduler does the work. Reported:

- ``api_ready_s``, ``first_plan_s``: seconds from the start of ``cart-recovery up`` until the
  api-server answers and until ``marts.recovery_plan`` first holds rows (target: 300 s);
- ``first_transform_s``: the first (full) ``cart_transform`` run, start to end;
- ``nothing_new_poll_shop_s``: task durations of ``poll_shop`` in a scheduled ``cart_ingest`` run
  after the first one, when the shops have nothing new (target: each under 5 s);
- ``nothing_new_transform_s``: the ``cart_transform`` run that such an ingest run triggered
  (target: under 60 s), with its slowest tasks.

``UpProcess`` (a running ``cart-recovery up`` and the ways to look at it) is shared with the
end-to-end test, ``tests/integration/test_make_up.py``.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg2

from cart_recovery.ports import free_port

NAME = "live_pipeline"


def fresh_databases(database, suffix: str):
    """Drop ``<warehouse><suffix>`` and its Airflow database (``up`` creates them); returns them."""
    fresh = database.with_suffix(suffix)
    conn = psycopg2.connect(database.warehouse.set(database="postgres").render_as_string(False))
    conn.autocommit = True  # drop database cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            for name in (fresh.warehouse.database, fresh.airflow.database):
                cur.execute(f'drop database if exists "{name}" with (force)')
    finally:
        conn.close()
    return fresh


def parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


class StackFailed(AssertionError):
    """The stack did not do what was waited for; the message ends with its output."""


@dataclass
class UpProcess:
    """A ``cart-recovery up`` started in its own process group, with ports and home of its own."""

    db_url: str
    airflow_home: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # more arguments of `cart-recovery up`
    port: int = field(default_factory=free_port)
    webhook_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    token: str | None = None
    started_at: float = 0.0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}"

    @property
    def log_path(self) -> Path:
        return self.airflow_home.parent / "up.log"

    def start(self) -> UpProcess:
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        env = os.environ.copy()
        env.pop("AIRFLOW_HOME", None)  # up uses CART_RECOVERY_AIRFLOW_HOME below
        env.update(
            {
                "CART_RECOVERY_DATABASE_URL": self.db_url,
                "CART_RECOVERY_AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                **self.env_overrides,
            }
        )
        command = [
            str(Path(sys.executable).parent / "cart-recovery"),
            "up",
            "--port",
            str(self.port),
            "--webhook-port",
            str(self.webhook_port),
            *self.args,
        ]
        self.started_at = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def output(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def fail(self, message: str):
        raise StackFailed(f"{message}\n--- cart-recovery up output (end) ---\n{self.output()}")

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.fail(f"cart-recovery up exited early with {self.process.returncode}")
            try:
                result = predicate()
                if result:
                    return result
            except (httpx.HTTPError, psycopg2.Error) as exc:
                last_error = exc
            time.sleep(2)
        self.fail(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def login(self, user: str, password: str) -> None:
        self.wait_for(
            lambda: httpx.get(f"{self.base}/api/v2/monitor/health", timeout=5).status_code == 200,
            240,
            "the api-server",
        )
        response = httpx.post(f"{self.base}/auth/token", json={"username": user, "password": password})
        response.raise_for_status()
        self.token = response.json()["access_token"]

    def api(self, path: str) -> dict:
        response = httpx.get(
            f"{self.base}/api/v2/{path}", headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )
        response.raise_for_status()
        return response.json()

    def runs(self, dag_id: str, run_type: str | None = None) -> list[dict]:
        """The DAG's runs, oldest first."""
        runs = self.api(f"dags/{dag_id}/dagRuns?order_by=run_after&limit=100")["dag_runs"]
        return [r for r in runs if run_type is None or r["run_type"] == run_type]

    def succeeded_runs(self, dag_id: str, run_type: str) -> list[dict]:
        """Successful runs of that type, oldest first; a failed one stops the wait with its id."""
        runs = self.runs(dag_id, run_type)
        failed = [r["dag_run_id"] for r in runs if r["state"] == "failed"]
        if failed:
            self.fail(f"{run_type} {dag_id} run failed: {failed[0]}")
        return [r for r in runs if r["state"] == "success"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.api(f"dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=200")["task_instances"]

    def consumed_asset_events(self, dag_id: str, run_id: str) -> list[dict]:
        return self.api(f"dags/{dag_id}/dagRuns/{run_id}/upstreamAssetEvents")["asset_events"]

    def post(self, path: str, body: dict) -> dict:
        response = httpx.post(
            f"{self.base}/api/v2/{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        if response.status_code >= 400:
            self.fail(f"POST {path} answered {response.status_code}: {response.text}")
        return response.json()

    def set_paused(self, dag_id: str, paused: bool) -> None:
        response = httpx.patch(
            f"{self.base}/api/v2/dags/{dag_id}",
            json={"is_paused": paused},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        response.raise_for_status()

    def query(self, sql: str, *params) -> list[tuple]:
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def stop(self, timeout: float = 120) -> int:
        """Ctrl-C, as a user would; the exit code."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.fail("cart-recovery up did not stop on Ctrl-C")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _duration(run: dict) -> float:
    return (parse_time(run["end_date"]) - parse_time(run["start_date"])).total_seconds()


def measure(up: UpProcess, user: str, password: str) -> dict[str, Any]:
    up.login(user, password)
    api_ready_s = up.elapsed()

    def plan_rows() -> int:
        try:
            return up.query("select count(*) from marts.recovery_plan")[0][0]
        except psycopg2.errors.UndefinedTable:
            return 0

    rows = up.wait_for(plan_rows, 900, "the first rows in marts.recovery_plan")
    first_plan_s = up.elapsed()
    first_transform = up.wait_for(
        lambda: up.succeeded_runs("cart_transform", "asset_triggered"), 300, "the first cart_transform run"
    )[0]

    # A cart_ingest run scheduled after the first build finished: the shops have nothing new.
    def quiet_ingest():
        return [
            r
            for r in up.succeeded_runs("cart_ingest", "scheduled")
            if parse_time(r["start_date"]) > parse_time(first_transform["end_date"])
        ]

    ingest = up.wait_for(quiet_ingest, 300, "a cart_ingest run after the first build")[0]
    polls = [
        ti["duration"]
        for ti in up.task_instances("cart_ingest", ingest["dag_run_id"])
        if ti["task_id"] == "poll_shop"
    ]
    loaded = up.query(
        "select count(*) from raw.polled_records where fetched_at >= %s", parse_time(ingest["start_date"])
    )[0][0]

    def transform_after_quiet_ingest():
        return [
            r
            for r in up.succeeded_runs("cart_transform", "asset_triggered")
            if parse_time(r["start_date"]) >= parse_time(ingest["end_date"])
        ]

    transform = up.wait_for(transform_after_quiet_ingest, 600, "the cart_transform run after it")[0]
    tasks = sorted(
        up.task_instances("cart_transform", transform["dag_run_id"]), key=lambda t: -(t["duration"] or 0)
    )
    return {
        "api_ready_s": round(api_ready_s, 1),
        "first_plan_s": round(first_plan_s, 1),
        "first_plan_rows": rows,
        "first_transform_s": round(_duration(first_transform), 1),
        "nothing_new_ingest_run": ingest["dag_run_id"],
        "nothing_new_rows_loaded": loaded,
        "nothing_new_poll_shop_s": [round(d, 2) for d in polls],
        "nothing_new_poll_shop_max_s": round(max(polls), 2),
        "nothing_new_transform_s": round(_duration(transform), 1),
        "nothing_new_transform_tasks": len(tasks),
        "nothing_new_transform_task_s_median": round(statistics.median(t["duration"] or 0 for t in tasks), 2),
        "nothing_new_transform_slowest": {t["task_id"]: round(t["duration"], 2) for t in tasks[:5]},
        "targets": {"first_plan_s": 300, "nothing_new_poll_shop_max_s": 5, "nothing_new_transform_s": 60},
    }


def main(*, quick: bool = False) -> dict[str, Any]:
    import tempfile

    from cart_recovery.bench.results import write_result
    from cart_recovery.database import Database
    from cart_recovery.environment import admin_credentials

    database = fresh_databases(Database.from_env(), "_live")
    with tempfile.TemporaryDirectory(prefix="live_pipeline_") as tmp:
        up = UpProcess(
            db_url=database.url,
            airflow_home=Path(tmp) / "airflow",
            env_overrides={
                "CART_RECOVERY_DEMO_ACTIVITY_S": "0",  # no live shoppers: later polls find nothing new
                "CART_RECOVERY_INGEST_SCHEDULE": "* * * * *",
            },
            args=["--demo"],
        ).start()
        try:
            result = measure(up, *admin_credentials())
            result["stopped_with_code"] = up.stop()
        finally:
            up.kill()
    result["cpus"] = os.cpu_count()
    path = write_result(NAME, result, database.url, quick=quick)
    result["written_to"] = str(path)
    return result
