"""``make up``: a local installation's processes, run until Ctrl-C.

Starts the Airflow api-server (UI and REST API), scheduler, dag-processor and triggerer, and the
webhook service, as child processes sharing one environment, each in its own process group with
its output in ``<airflow home>/logs/stack/<name>.log``. It watches them, prints what the pipeline
has done every minute, and on Ctrl-C (or SIGTERM) stops them in an order that lets running work
end cleanly: the scheduler's group first (it and the tasks it runs, which still report to the
api-server), then the triggerer, dag-processor and webhook service, and the api-server last.

With no shops file, ``demo_shops`` serves the simulator's four shops (one per platform) in real
time and points the pipeline at them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 30
_STATUS_EVERY_S = 60
# Stop order: work first (the scheduler and its tasks), the api-server, which tasks report to, last.
_STOP_WAVES = (("scheduler",), ("triggerer", "dag-processor", "webhooks"), ("api-server",))


@dataclass(frozen=True)
class Component:
    name: str
    command: list[str]


def airflow_components(port: int) -> list[Component]:
    return [
        Component("api-server", ["airflow", "api-server", "--host", "127.0.0.1", "--port", str(port)]),
        Component("scheduler", ["airflow", "scheduler"]),
        Component("dag-processor", ["airflow", "dag-processor"]),
        Component("triggerer", ["airflow", "triggerer"]),
    ]


def webhook_component(port: int) -> Component:
    cli = str(Path(sys.executable).parent / "cart-recovery")
    return Component("webhooks", [cli, "webhooks", "--host", "127.0.0.1", "--port", str(port)])


@dataclass
class LocalStack:
    env: Mapping[str, str]
    components: list[Component]
    log_dir: Path
    status: object = None  # a callable returning a one-line summary, or None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for component in self.components:
            with open(self.log_path(component.name), "ab") as output:
                # Each child gets its own process group: the terminal's Ctrl-C reaches only this
                # supervisor, which then stops the children in order.
                self.processes[component.name] = subprocess.Popen(
                    component.command,
                    env=dict(self.env),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=_stop_with_parent,
                )
            log.info("started %s (pid %s)", component.name, self.processes[component.name].pid)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def failed(self) -> str | None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = _tail(self.log_path(name))
                return (
                    f"{name} exited with code {process.returncode}; the end of {self.log_path(name)}:\n{tail}"
                )
        return None

    def stop(self) -> None:
        for wave in (*_STOP_WAVES, tuple(self.processes)):
            group = [(n, p) for n, p in self.processes.items() if n in wave and p.poll() is None]
            for name, process in group:
                log.info("stopping %s", name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + _STOP_TIMEOUT_S
            for name, process in group:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %s s; killing it", name, _STOP_TIMEOUT_S)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            # Leftovers of a group (a task whose parent already exited) go with it.
            for _name, process in group:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)

    def run_until_interrupted(self) -> int:
        stop_requested = False

        def request_stop(signum: int, _frame: object) -> None:
            nonlocal stop_requested
            stop_requested = True

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # Ctrl-C, kill, terminal closed
            signal.signal(signum, request_stop)
        self.start()
        code = 0
        next_status = time.monotonic() + _STATUS_EVERY_S
        try:
            while not stop_requested:
                failure = self.failed()
                if failure:
                    print(f"cart-recovery up: {failure}\nStopping the rest.", file=sys.stderr, flush=True)
                    code = 1
                    break
                if self.status is not None and time.monotonic() >= next_status:
                    next_status = time.monotonic() + _STATUS_EVERY_S
                    with contextlib.suppress(Exception):  # a status line must never stop the stack
                        print(time.strftime("%H:%M:%S"), self.status(), flush=True)
                time.sleep(0.5)
        finally:
            print("Stopping: scheduler and running tasks, then the other components ...", flush=True)
            self.stop()
            print("Stopped.", flush=True)
        return code


def _stop_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_STATUS_SQL = """
select
    (select count(*) from raw.polled_records) as polled,
    (select count(*) from raw.webhook_events where shop_id <> '') as webhooks,
    (select count(*) from ops.transform_runs) as builds,
    (select max(finished_at) from ops.transform_runs) as last_build,
    (select (plan_summary ->> 'plan_rows')::int from ops.transform_runs
        order by finished_at desc limit 1) as plan_rows
"""


def pipeline_status(database_url: str) -> str:
    """One line for the terminal: what has landed and what the last build planned."""
    import psycopg2

    with psycopg2.connect(database_url, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute(_STATUS_SQL)
        polled, webhooks, builds, last_build, plan_rows = cur.fetchone()
    built = f"last at {last_build:%H:%M:%S}" if last_build else "none yet"
    return (
        f"raw: {polled} polled records, {webhooks} shop webhooks | cart_transform builds: {builds} "
        f"({built}) | marts.recovery_plan: {plan_rows if plan_rows is not None else 'not built yet'} rows"
    )


@contextlib.contextmanager
def demo_shops(
    state: Path, webhook_url: str | None, *, carts_per_shop: int = 40, every_s: float = 20.0
) -> Iterator[dict[str, str]]:
    """The simulator's four shops, live, for a ``make up`` without a shops file.

    Yields the environment that points the pipeline at them: the shops file it wrote (in
    ``state``, the Airflow home's ``demo/`` folder) and the ``AIRFLOW_CONN_*`` connections of
    each shop. ``every_s`` is the mean time between two changes by the live shoppers (0: none).
    """
    from cart_recovery.shops import SHOPS_FILE_ENV
    from cart_recovery.simulator import run_simulator
    from cart_recovery.simulator.live import LiveActivity, pinned_reference_time

    reference = pinned_reference_time(state / "reference_time")
    with run_simulator(seed=1, carts_per_shop=carts_per_shop, reference_time=reference) as simulator:
        shops_file = state / "shops.yaml"
        shops_file.write_text(
            "# DEMO SHOPS served by the shop simulator inside `make up` (rewritten at every start).\n"
            "# For real shops, write config/shops.yaml instead (README: Adding a shop).\n"
            + simulator.shops_yaml()
        )
        live = LiveActivity(simulator, webhook_url, every_s=every_s)
        if every_s > 0:
            live.start()
        try:
            yield {
                SHOPS_FILE_ENV: str(shops_file),
                "CART_RECOVERY_DEMO_SHOPS": "1",
                **simulator.connection_env(),
            }
        finally:
            live.stop()
