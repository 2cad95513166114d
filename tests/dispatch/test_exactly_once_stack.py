"""Exactly once under the scheduler: the three stage DAGs run by Airflow's executors, one worker killed.

The whole stack runs as in production (``cart-recovery up``: api-server, scheduler, dag-processor,
triggerer), once with the project's LocalExecutor and once with ``AIRFLOW__CORE__EXECUTOR=
CeleryExecutor``, the machine's Redis on 127.0.0.1:6379 as the broker (a queue of this test's own)
and two ``airflow celery worker`` processes. The plan is the simulator's shops, built by dbt up to
a minute ago, so the stages' sensors (deferred to the triggerer) find rows due on the real clock
and their send tasks run at once. While the fake WhatsApp API holds the answers of a chunk, the
worker running that send task is killed with SIGKILL together with everything under it (as when
its machine is lost); the scheduler sees the task's heartbeat stop and Airflow retries it (on the
other Celery worker) with the same trigger event. Nothing may be sent twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from database_copies import drop_copies
from dispatch_helpers import (
    accepted_per_plan_row,
    assert_each_sent_once,
    emailed_plan_rows,
    execute,
    outbox,
    reset,
    simulated_plan,
    wait_until,
)

from cart_recovery.bench.live_pipeline import UpProcess
from cart_recovery.environment import admin_credentials, project_environment
from cart_recovery.ports import free_port
from cart_recovery.simulator import Simulator

pytestmark = pytest.mark.slow

REDIS = ("127.0.0.1", 6379)
QUEUE_PREFIX = "cart-recovery-once-"
COMPONENT_PID = re.compile(r"started [a-z-]+ \(pid (\d+)\)")
STAGES = (1, 2, 3)


def forget_queue(prefix: str) -> None:
    """Remove this test's Celery queues from the shared Redis: their lists, kombu's bindings and
    the unacknowledged messages of killed workers routed to them (nothing else is touched)."""
    import redis

    client = redis.Redis(host=REDIS[0], port=REDIS[1], db=0)
    for key in client.scan_iter(match=f"*{prefix}*"):
        client.delete(key)
    for tag, raw in client.hgetall("unacked").items():
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if isinstance(routing_key, str) and routing_key.startswith(prefix):
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)


def _redis_answers() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def database(module_database):
    return module_database


@pytest.fixture(scope="module")
def plan(database, airflow_db, dbt_manifest, tmp_path_factory) -> Iterator[tuple[Simulator, datetime]]:
    as_of = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    with simulated_plan(tmp_path_factory.mktemp("plan"), seed=31, carts_per_shop=60, as_of=as_of) as sim:
        yield sim, as_of


class Stack:
    """``cart-recovery up`` with one executor; with Celery, the workers started beside it."""

    def __init__(self, database, home: Path, executor: str) -> None:
        self.database = database
        self.home = home
        self.executor = executor
        self.queue = f"{QUEUE_PREFIX}{secrets.token_hex(4)}"
        broker = f"redis://{REDIS[0]}:{REDIS[1]}/0"
        backend = "db+" + self.database.airflow.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self.overrides = {
            # this test unpauses the stages only: no poll or build changes the plan under it
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            # a killed worker's task is noticed in seconds, not the default five minutes
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            # small chunks: a send task is mid-batch long enough to be killed there
            "CART_RECOVERY_DISPATCH_CHUNK": "3",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
        }
        if executor == "CeleryExecutor":
            self.overrides |= {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": broker,
                "AIRFLOW__CELERY__RESULT_BACKEND": backend,
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
                "AIRFLOW__CELERY__DEFAULT_QUEUE": self.queue,
            }
        else:
            self.overrides["AIRFLOW__CORE__EXECUTOR"] = "cart_recovery.executor.PreloadingLocalExecutor"
        self.up = UpProcess(db_url=database.url, airflow_home=home, env_overrides=self.overrides)
        self.workers: list[subprocess.Popen] = []

    def start(self) -> Stack:
        self.up.start()
        return self

    def worker_env(self) -> dict[str, str]:
        """The environment ``up`` gives its components (computed as ``up`` computes it)."""
        base = {
            **os.environ,
            "CART_RECOVERY_AIRFLOW_HOME": str(self.home),
            "CART_RECOVERY_DATABASE_URL": self.database.url,
            **self.overrides,
        }
        base.pop("AIRFLOW_HOME", None)
        env = project_environment(self.database, base=base)
        env["AIRFLOW__API__BASE_URL"] = f"http://localhost:{self.up.port}"
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://localhost:{self.up.port}/execution/"
        return env

    def start_workers(self, count: int) -> None:
        airflow = str(Path(sys.executable).parent / "airflow")
        env = self.worker_env()
        for n in range(count):
            log = (self.home.parent / f"worker-{n}.log").open("wb")
            self.workers.append(
                subprocess.Popen(
                    [
                        airflow,
                        *("celery", "worker", "--queues", self.queue, "--concurrency", "2"),
                        *("--celery-hostname", f"once{n}@%h", "--skip-serve-logs"),
                        *("--without-mingle", "--without-gossip"),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def worker_of(self, pid: int) -> psutil.Process | None:
        """The worker running the task process ``pid``: a Celery worker whose process tree holds
        it, or the LocalExecutor's worker process above it."""
        if self.executor == "CeleryExecutor":
            for worker in self.workers:
                try:
                    main = psutil.Process(worker.pid)
                    if pid in {main.pid, *(child.pid for child in main.children(recursive=True))}:
                        return main
                except psutil.NoSuchProcess:
                    continue
            return None
        try:
            return next(
                (p for p in psutil.Process(pid).parents() if "LocalExecutor" in " ".join(p.cmdline())), None
            )
        except psutil.NoSuchProcess:
            return None

    def kill_tree(self, worker: psutil.Process) -> None:
        """SIGKILL the worker and every process under it at once, as when its machine is lost
        (the task runs in a process group of its own: killing the worker's group would miss it)."""
        processes = [worker, *worker.children(recursive=True)]
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        for popen in self.workers:
            if popen.pid == worker.pid:
                popen.wait()
        psutil.wait_procs(processes, timeout=10)

    def logs(self) -> str:
        parts = []
        for n in range(len(self.workers)):
            text = (self.home.parent / f"worker-{n}.log").read_text(errors="replace")
            parts.append(f"--- worker {n} (end) ---\n{text[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Workers first, then ``up`` as a user stops it (Ctrl-C); whatever of its components
        still runs is killed, so none writes into the next stack's database of the same name."""
        for worker in self.workers:
            if worker.poll() is None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.kill_tree(psutil.Process(worker.pid))
        components = [int(pid) for pid in COMPONENT_PID.findall(self.up.output(chars=200_000))]
        with contextlib.suppress(AssertionError):  # StackFailed: it did not stop in time, killed
            self.up.stop(timeout=90)
        for pid in components:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                process = psutil.Process(pid)
                if process.environ().get("AIRFLOW_HOME") == str(self.home):  # ours, not a reused pid
                    self.kill_tree(process)
        if self.executor == "CeleryExecutor":
            forget_queue(self.queue)


@pytest.fixture(scope="module", params=["LocalExecutor", "CeleryExecutor"])
def stack(request, plan, database, tmp_path_factory) -> Iterator[Stack]:
    if request.param == "CeleryExecutor" and not _redis_answers():
        pytest.fail("the CeleryExecutor case needs Redis on 127.0.0.1:6379")
    reset(database.url, plan[0])
    started = Stack(database, tmp_path_factory.mktemp(request.param) / "airflow", request.param).start()
    try:
        yield started
    finally:
        started.stop()
        drop_copies(database, database.airflow.database)
        # bootstrap's note that this Airflow database is migrated: the next stack makes a new one
        execute(
            database.url,
            "delete from ops.airflow_metadata where database_name = %s",
            (database.airflow.database,),
        )


def _send_tasks(stack: Stack) -> dict[int, list[dict]]:
    """Each stage's send_due task instances, over its runs."""
    found: dict[int, list[dict]] = {}
    for stage in STAGES:
        dag_id = f"recovery_stage_{stage}"
        found[stage] = [
            ti
            for run in stack.up.runs(dag_id)
            for ti in stack.up.task_instances(dag_id, run["dag_run_id"])
            if ti["task_id"] == "send_due"
        ]
    return found


def test_the_stages_send_each_row_once_when_a_worker_is_killed_mid_batch(plan, stack, database):
    sim, as_of = plan
    url, up = database.url, stack.up
    user, password = admin_credentials()
    up.login(user, password)
    if stack.executor == "CeleryExecutor":
        stack.start_workers(2)
    wanted = {f"recovery_stage_{stage}" for stage in STAGES}
    up.wait_for(
        lambda: wanted <= {d["dag_id"] for d in up.api("dags?limit=100")["dags"]}, 300, "the stage DAGs"
    )

    # each chunk's answers come seconds after Meta took it: time to find the task and kill its worker
    sim.whatsapp.knobs.response_delay = 5.0
    for stage in STAGES:
        up.set_paused(f"recovery_stage_{stage}", False)

    # a send task on a worker, mid-batch: a row it claimed is with the provider, unanswered
    def stages_mid_send() -> set[str]:
        stored = outbox(url)
        return {
            f"recovery_stage_{stored[key]['stage']}"
            for key in accepted_per_plan_row(sim)
            if stored.get(key, {}).get("status") == "sending"
        }

    try:
        wait_until(lambda: bool(stages_mid_send()), timeout=600, what="a send task mid-batch on a worker")
    except AssertionError:
        up.fail("no send task got mid-batch\n" + stack.logs())
    mid_send = stages_mid_send()
    running = [
        ti
        for tis in _send_tasks(stack).values()
        for ti in tis
        if ti["state"] == "running" and ti["pid"] and ti["dag_id"] in mid_send
    ]
    victim = next((w for ti in running if (w := stack.worker_of(ti["pid"])) is not None), None)
    assert victim is not None, f"the worker running {mid_send}: {running}"
    killed = {ti["dag_id"] for ti in running if stack.worker_of(ti["pid"]) == victim}
    stack.kill_tree(victim)  # the worker and its tasks (each in a process group of its own)
    left_sending = {key for key, row in outbox(url).items() if row["status"] == "sending"}
    sim.whatsapp.knobs.response_delay = 0

    # every stage's first send task ends successfully, the killed ones at their second try
    def all_sent() -> dict[int, dict] | None:
        done = {}
        for stage, tis in _send_tasks(stack).items():
            ok = [ti for ti in tis if ti["state"] == "success"]
            if not ok:
                return None
            done[stage] = ok[0]
        return done

    done = up.wait_for(all_sent, 600, "every stage's send task to succeed")
    retried = {f"recovery_stage_{stage}" for stage, ti in done.items() if ti["try_number"] >= 2}
    assert killed <= retried, (killed, retried)

    stored = assert_each_sent_once(sim, url)
    still_sending = {key for key, row in stored.items() if row["status"] == "sending"}
    assert still_sending <= left_sending  # left by the killed try, never sent again
    assert all(stored[key]["claimed_by"].endswith("/try-1") for key in still_sending)
    taken = set(accepted_per_plan_row(sim)) | {key for key, _ in emailed_plan_rows(sim)}
    assert still_sending & taken, "the killed try left a row the provider had taken, unrecorded"
    sent = [row for row in stored.values() if row["status"] == "sent"]
    assert {row["claimed_by"].rsplit("/", 1)[1] for row in sent} >= {"try-1", "try-2"}
    assert not [row for row in stored.values() if row["status"] == "queued" and row["due_at"] <= as_of], (
        "a due row left behind"
    )
    # the stages were sending at the same time, on the two workers
    spans = {}
    for stage in STAGES:
        moments = [row["sent_at"] for row in sent if row["stage"] == stage]
        spans[stage] = (min(moments), max(moments))
    assert any(
        spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1] for a in STAGES for b in STAGES if a < b
    ), spans
    for n in range(len(stack.workers)):  # Celery: both workers ran send tasks
        log = (stack.home.parent / f"worker-{n}.log").read_text(errors="replace")
        assert "task_id=send_due" in log, f"worker {n} ran no send task"
    print(
        f"{stack.executor}: sent {len(sent)} "
        f"(WhatsApp {len(sim.whatsapp.messages())}, email {len(sim.smtp.messages)}); "
        f"killed {sorted(killed)} with {len(left_sending)} rows sending, {len(still_sending)} left so"
    )
