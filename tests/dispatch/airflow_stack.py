"""Airflow's own components, run as processes against a test warehouse: the stack tests' harness.

``AirflowStack`` starts the api-server, dag-processor and triggerer the way ``make up`` starts
them (``cart_recovery.stack.LocalStack``, each in a process group of its own), with an Airflow
home and metadata database of their own and a DAGs folder holding only the DAG files a test
names, so nothing else runs. ``start_executor`` adds a scheduler with Airflow's LocalExecutor,
or with the CeleryExecutor and ``airflow celery worker`` processes beside it; ``stop_executor``
stops them and every task they started, so one stack serves one executor after the other.

Everything it started, task processes included (Airflow puts each task in a process group of its
own), is found again and killed by ``stop``; ``RedisDatabase`` takes a Redis database no one
else uses for the Celery broker and empties it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg2
from psycopg2.extras import RealDictCursor

from cart_recovery.database import Database
from cart_recovery.environment import admin_credentials, project_environment
from cart_recovery.ports import free_port
from cart_recovery.stack import Component, LocalStack, airflow_components

REDIS = ("127.0.0.1", 6379)
# Databases this harness may take, the first free one first. A database is taken with a key set
# only if absent (SET NX), in a database that holds nothing else, so two test sessions on one
# Redis (two checkouts, CI beside a developer) each get their own.
REDIS_DATABASES = range(11, 16)
_REDIS_CLAIM_KEY = "cart-recovery:stack-test"
PORTS_ENV = "CART_RECOVERY_TEST_PORTS"  # the ports a stack may bind (see Ports), else free ones
_STOP_WAIT_S = 5


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class Ports:
    """Ports for the stack's servers: from ``CART_RECOVERY_TEST_PORTS`` (ports and ranges, e.g.
    ``28461,28463-28469``), in order, when set; otherwise free ports the system picks."""

    def __init__(self) -> None:
        raw = os.environ.get(PORTS_ENV, "").strip()
        self._range: Iterator[int] | None = None
        if raw:
            ports = []
            for part in raw.split(","):
                low, _, high = part.strip().partition("-")
                ports += range(int(low), int(high or low) + 1)
            self._range = iter(ports)

    def take(self) -> int:
        if self._range is None:
            return free_port()
        try:
            return next(self._range)
        except StopIteration:
            raise RuntimeError(f"{PORTS_ENV} has too few ports for the stack") from None


def redis_answers() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisDatabase:
    """One Redis database taken for a test's Celery broker; ``release`` empties it."""

    number: int
    url: str

    @classmethod
    def take(cls) -> RedisDatabase:
        import redis

        token = secrets.token_hex(8)
        for number in REDIS_DATABASES:
            client = redis.Redis(host=REDIS[0], port=REDIS[1], db=number)
            try:
                if client.dbsize() == 0 and client.set(_REDIS_CLAIM_KEY, token, nx=True, ex=3600):
                    if client.dbsize() == 1:  # nothing landed between the two calls
                        return cls(number, f"redis://{REDIS[0]}:{REDIS[1]}/{number}")
                    client.delete(_REDIS_CLAIM_KEY)
            finally:
                client.close()
        raise RuntimeError(
            f"no free Redis database among {list(REDIS_DATABASES)} on {REDIS[0]}:{REDIS[1]} "
            "(each holds keys of another run): flush a stale one with `redis-cli -n <db> flushdb`"
        )

    def release(self) -> None:
        import redis

        client = redis.Redis(host=REDIS[0], port=REDIS[1], db=self.number)
        try:
            client.flushdb()
        finally:
            client.close()


@dataclass
class AirflowStack:
    """The api-server, dag-processor and triggerer (``start``), a scheduler with one executor at a
    time (``start_executor``), all stopped by ``stop``."""

    database: Database  # the warehouse and its Airflow metadata database (migrated)
    home: Path
    dag_files: list[Path]
    env_overrides: dict[str, str] = field(default_factory=dict)
    celery_workers: int = 2
    ports: Ports = field(default_factory=Ports)
    executor: str | None = None  # "LocalExecutor" or "CeleryExecutor", while one runs
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)  # components a test killed on purpose
    token: str | None = None

    def __post_init__(self) -> None:
        self.port = self.ports.take()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_dir = self.home / "logs" / "stack"
        self._env = self._environment()
        self._executor_group: list[str] = []

    # -- starting ------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        """What every component runs with: the project's environment for this home and database
        (the test's own ``AIRFLOW__*`` left out), then ``env_overrides``."""
        dags = self.home / "dags"
        dags.mkdir(parents=True, exist_ok=True)
        for dag_file in self.dag_files:
            shutil.copy(dag_file, dags / dag_file.name)
        base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k != "AIRFLOW_HOME"}
        base["CART_RECOVERY_AIRFLOW_HOME"] = str(self.home)
        env = project_environment(self.database, base=base)
        env |= {
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # a test unpauses what it runs
            "AIRFLOW__API__BASE_URL": f"http://localhost:{self.port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{self.port}/execution/",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",  # one port less to share
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports.take()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports.take()),
        }
        return env | self.env_overrides

    def _launch(self, env: dict[str, str], components: list[Component]) -> None:
        group = LocalStack(env=env, components=components, log_dir=self.log_dir)
        group.start()
        self.processes |= group.processes
        say("started " + ", ".join(f"{c.name} ({group.processes[c.name].pid})" for c in components))

    def start(self) -> AirflowStack:
        core = [c for c in airflow_components(self.port) if c.name != "scheduler"]
        self._launch(self._env, core)
        return self

    def start_executor(self, executor: str, redis: RedisDatabase | None = None) -> None:
        """A scheduler with ``executor``; with Celery, its workers, with the Redis database
        ``redis`` (this stack's alone) as the broker."""
        assert self.executor is None, f"{self.executor} still runs"
        env = dict(self._env)
        name = executor.removesuffix("Executor").lower()
        components = [Component(f"scheduler-{name}", ["airflow", "scheduler"])]
        if executor == "CeleryExecutor":
            assert redis is not None, "the CeleryExecutor needs a Redis database"
            backend = self.database.airflow.set(drivername="postgresql").render_as_string(hide_password=False)
            env |= {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": redis.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{backend}",
            }
            airflow = str(Path(sys.executable).parent / "airflow")
            components += [
                Component(
                    f"celery-worker-{n}",
                    [
                        *(airflow, "celery", "worker", "--concurrency", "2"),
                        *("--celery-hostname", f"cart-recovery-test-{n}@%h", "--skip-serve-logs"),
                        *("--without-mingle", "--without-gossip"),
                    ],
                )
                for n in range(1, self.celery_workers + 1)
            ]
        else:
            # Airflow's LocalExecutor itself: the project's preloading one (cart_recovery.executor)
            # only adds imports the stage DAGs do not use, at a start-up cost the test need not pay
            assert executor == "LocalExecutor", executor
            env["AIRFLOW__CORE__EXECUTOR"] = "LocalExecutor"
        self.executor = executor
        self._executor_group = [c.name for c in components]
        self._launch(env, components)

    # -- waiting -------------------------------------------------------------------------------

    def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float,
        what: str,
        progress: Callable[[], str] | None = None,
        every: float = 0.25,
    ) -> Any:
        """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds with
        ``progress()`` and the end of each component's log. A component that exits (other than
        one the test killed) fails the wait at once. Prints ``progress()`` every 15 s."""
        started = time.monotonic()
        next_report = started + 15
        last_error: Exception | None = None
        while True:
            exited = self.exited()
            if exited:
                self.fail(f"while waiting for {what}: {exited}")
            try:
                result = predicate()
                if result:
                    say(f"{self.executor or 'stack'}: {what}: after {time.monotonic() - started:.1f} s")
                    return result
            except (httpx.HTTPError, psycopg2.Error) as exc:
                last_error = exc
            now = time.monotonic()
            if now - started > timeout:
                state = progress() if progress else ""
                self.fail(
                    f"timed out after {timeout:.0f} s waiting for {what} ({state}; last error: {last_error})"
                )
            if progress is not None and now >= next_report:
                next_report = now + 15
                with contextlib.suppress(Exception):
                    say(f"{self.executor or 'stack'}: waiting {now - started:.0f} s for {what}: {progress()}")
            time.sleep(every)

    def exited(self) -> str | None:
        for name, process in self.processes.items():
            if name not in self.killed and process.poll() is not None:
                return f"{name} exited with code {process.returncode}"
        return None

    def fail(self, message: str) -> None:
        raise AssertionError(f"{message}\n{self.log_tails()}")

    def log_tails(self, lines: int = 30) -> str:
        parts = []
        for name in self.processes:
            try:
                text = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = ["(no log)"]
            parts.append(f"--- {name} (last {lines} lines) ---\n" + "\n".join(text))
        return "\n".join(parts)

    # -- the REST API and the metadata database ----------------------------------------------

    def login(self) -> None:
        def healthy() -> bool:
            return httpx.get(f"{self.base}/api/v2/monitor/health", timeout=5).status_code == 200

        self.wait_for(healthy, 300, "the api-server")
        user, password = admin_credentials()
        answer = httpx.post(f"{self.base}/auth/token", json={"username": user, "password": password})
        answer.raise_for_status()
        self.token = answer.json()["access_token"]

    def api(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.base}/api/v2/{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=60,
        )

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.api("PATCH", f"dags/{dag_id}", {"is_paused": paused}).raise_for_status()

    def delete_runs(self, dag_id: str) -> None:
        """Delete the DAG's runs (and their task instances), so a next case starts from none; a
        run not finished (the next run's sensor, waiting) is marked failed first."""
        for run in self.api("GET", f"dags/{dag_id}/dagRuns?limit=100").raise_for_status().json()["dag_runs"]:
            path = f"dags/{dag_id}/dagRuns/{run['dag_run_id']}"
            if run["state"] not in ("success", "failed"):
                self.api("PATCH", path, {"state": "failed"}).raise_for_status()
            self.api("DELETE", path).raise_for_status()

    def metadata(self, sql: str, params: tuple = ()) -> list[dict]:
        """Rows of Airflow's metadata database (the scheduler's own record of runs and tries)."""
        url = self.database.airflow.render_as_string(hide_password=False)
        with (
            contextlib.closing(psycopg2.connect(url, connect_timeout=10)) as conn,
            conn,
            conn.cursor(cursor_factory=RealDictCursor) as cursor,
        ):
            cursor.execute(sql, params)
            return [dict(row) for row in cursor.fetchall()]

    def task_instances(self, dag_id: str, task_id: str) -> list[dict]:
        """The task's instances over the DAG's runs, oldest run first (try_number: the latest try)."""
        return self.metadata(
            "select ti.run_id, ti.state, ti.try_number, ti.pid, ti.hostname, ti.start_date, ti.end_date "
            "from task_instance as ti join dag_run using (dag_id, run_id) "
            "where ti.dag_id = %s and ti.task_id = %s order by dag_run.id",
            (dag_id, task_id),
        )

    def tries(self, dag_id: str, task_id: str, run_id: str) -> list[dict]:
        """Every try of one task instance, the finished ones from Airflow's history table."""
        return self.metadata(
            "select try_number, state, pid, hostname from task_instance_history "
            "where dag_id = %s and task_id = %s and run_id = %s "
            "union all select try_number, state, pid, hostname from task_instance "
            "where dag_id = %s and task_id = %s and run_id = %s order by try_number",
            (dag_id, task_id, run_id) * 2,
        )

    # -- killing a worker ------------------------------------------------------------------------

    def worker_tree(self, task_pid: int) -> tuple[str, list[psutil.Process]]:
        """The worker running the task process ``task_pid``, and every process of it: with the
        LocalExecutor, the executor's worker process (the task's supervisor) and the task; with
        Celery, the ``airflow celery worker`` whose process tree holds the task, all of it."""
        task = psutil.Process(task_pid)
        if self.executor == "CeleryExecutor":
            for name, popen in self.processes.items():
                if not name.startswith("celery-worker-") or name in self.killed:
                    continue
                main = psutil.Process(popen.pid)
                tree = [main, *main.children(recursive=True)]
                if task.pid in {p.pid for p in tree}:
                    return name, tree
            raise AssertionError(f"no Celery worker runs the task process {task_pid}")
        supervisor = task.parent()
        assert supervisor is not None and "LocalExecutor" in " ".join(supervisor.cmdline()), (
            f"the task process {task_pid}'s parent is not a LocalExecutor worker: {supervisor}"
        )
        return f"LocalExecutor worker {supervisor.pid}", [supervisor, *supervisor.children(recursive=True)]

    def kill_worker_of(self, task_pid: int) -> str:
        """SIGKILL the worker running ``task_pid`` with every process under it at once, as when
        its machine is lost (the task has a process group of its own: a group kill misses it)."""
        name, tree = self.worker_tree(task_pid)
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        if name in self.processes:
            self.killed.add(name)
            self.processes[name].wait(timeout=30)
        psutil.wait_procs(tree, timeout=30)
        say(f"{self.executor}: killed {name} and its {len(tree) - 1} processes: {[p.pid for p in tree]}")
        return name

    # -- stopping ------------------------------------------------------------------------------

    def _stop(self, names: list[str]) -> int:
        """SIGTERM to the components' process groups and SIGKILL to whatever of their process
        trees is left after a few seconds (a task has a process group of its own); how many were
        killed so. The test is over: nothing needs a graceful stop."""
        trees: list[psutil.Process] = []
        for name in names:
            with contextlib.suppress(psutil.Error):
                main = psutil.Process(self.processes[name].pid)
                trees += [main, *main.children(recursive=True)]
            if self.processes[name].poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.processes[name].pid, signal.SIGTERM)
        _gone, left = psutil.wait_procs(trees, timeout=_STOP_WAIT_S)
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(left, timeout=30)
        for name in names:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.processes[name].wait(timeout=30)
        return len(left)

    def stop_executor(self) -> None:
        """Stop the scheduler (and Celery workers) and every task they started."""
        if self.executor is None:
            return
        killed = self._stop(self._executor_group)
        say(f"{self.executor}: stopped the scheduler and its workers ({killed} killed after SIGTERM)")
        for name in self._executor_group:
            del self.processes[name]
            self.killed.discard(name)
        self.executor, self._executor_group = None, []

    def ours(self) -> list[psutil.Process]:
        """Every live process started for this stack, found by its Airflow home: also a task
        process whose parents are gone."""
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.pid != os.getpid() and process.environ().get("AIRFLOW_HOME") == str(self.home):
                    found.append(process)
        return found

    def stop(self) -> None:
        """Stop everything, then kill whatever process of this stack's Airflow home is left."""
        self.stop_executor()
        self._stop(list(self.processes))
        left = self.ours()
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(left, timeout=30)
        still = self.ours()
        assert not still, f"processes of the stack still running: {still}"
        say(f"stopped the stack ({len(left)} stray processes killed)")
