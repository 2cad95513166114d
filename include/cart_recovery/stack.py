"""``make up``: a local installation's processes, run until Ctrl-C.

Starts the Airflow api-server (UI and REST API), scheduler, dag-processor and triggerer, and the
webhook service, as child processes sharing one environment, each in its own process group with
its output in ``<airflow home>/logs/stack/<name>.log``. It watches them, prints what the pipeline
has done every minute, and on Ctrl-C (or SIGTERM, SIGHUP) stops them in waves: the scheduler
first (it passes SIGTERM on to the tasks it runs, which are marked as stopped while the
api-server they report to is still up), then the triggerer, dag-processor and webhook service,
and the api-server last. Each child also gets SIGTERM if this supervisor dies.

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
    on_tick: object = None  # a callable run every half second while the stack runs, or None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stop_with_parent = _parent_death_signal()
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
                    preexec_fn=stop_with_parent,
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
        code = 0
        next_status = time.monotonic() + _STATUS_EVERY_S
        try:
            self.start()
            while not stop_requested:
                failure = self.failed()
                if failure:
                    _say(f"cart-recovery up: {failure}\nStopping the rest.", stream=sys.stderr)
                    code = 1
                    break
                if self.on_tick is not None:
                    self.on_tick()
                if self.status is not None and time.monotonic() >= next_status:
                    next_status = time.monotonic() + _STATUS_EVERY_S
                    with contextlib.suppress(Exception):  # a status line must never stop the stack
                        _say(f"{time.strftime('%H:%M:%S')} {self.status()}")
                time.sleep(0.5)
        finally:
            _say("Stopping: the scheduler and its running tasks, then the other components ...")
            self.stop()
            _say("Stopped.")
        return code


def _parent_death_signal():
    """``prctl`` from libc, looked up here in the parent: the child may only call it (loading a
    library between fork and exec can deadlock while other threads run)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def stop_with_parent() -> None:
        # In the child, before exec: SIGTERM when the supervisor dies, even by SIGKILL.
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return stop_with_parent


def _say(text: str, stream=None) -> None:
    """Print, unless the terminal is gone (after SIGHUP a write raises EIO): stopping goes on."""
    with contextlib.suppress(OSError):
        print(text, file=stream or sys.stdout, flush=True)


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
    state: Path, webhook_url: str | None, *, carts_per_shop: int = 40, every_s: float = 45.0
) -> Iterator[dict[str, str]]:
    """The simulator's four shops, live, for a ``make up`` without a shops file.

    Yields the environment that points the pipeline at them: the shops file it wrote (in
    ``state``, the Airflow home's ``demo/`` folder) and the ``AIRFLOW_CONN_*`` connections of
    each shop, of the simulator's fake WhatsApp Cloud API (its status callbacks go to the webhook
    service) and of its SMTP sink, so the stage DAGs send somewhere you can look. The click and
    unsubscribe links point at the webhook service, signed with a secret kept in ``state``.
    ``every_s`` is the mean time between two changes by the live shoppers (0: none).
    """
    import secrets

    from cart_recovery.shops import SHOPS_FILE_ENV
    from cart_recovery.simulator import run_simulator
    from cart_recovery.simulator.live import LiveActivity, pinned_reference_time

    reference = pinned_reference_time(state / "reference_time")
    with run_simulator(
        seed=1, carts_per_shop=carts_per_shop, reference_time=reference, smtp=True
    ) as simulator:
        if webhook_url:
            simulator.whatsapp.set_webhook(f"{webhook_url}/webhooks/whatsapp")
        secret_file = state / "link_secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(32))
            secret_file.chmod(0o600)
        links = {
            "CART_RECOVERY_LINK_SECRET": os.environ.get("CART_RECOVERY_LINK_SECRET")
            or secret_file.read_text().strip(),
            "CART_RECOVERY_PUBLIC_URL": os.environ.get("CART_RECOVERY_PUBLIC_URL") or (webhook_url or ""),
        }
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
                **{name: value for name, value in links.items() if value},
            }
        finally:
            live.stop()


@dataclass
class UnpauseOnce:
    """Unpause the project's DAGs through the REST API, once per Airflow home.

    New DAGs start unpaused in the local stack (``DAGS_ARE_PAUSED_AT_CREATION=False``), but an
    Airflow home from before that keeps its DAGs paused, and an Asset watcher only runs while a DAG
    scheduled on its Asset is unpaused. So the first ``make up`` of a home unpauses them all and
    leaves ``marker`` behind; a DAG you pause later stays paused.
    """

    base_url: str
    credentials: tuple[str, str]
    dag_ids: list[str]
    marker: Path
    _next_try: float = 0.0

    def __call__(self) -> None:
        if self.marker.exists() or time.monotonic() < self._next_try:
            return
        self._next_try = time.monotonic() + 5
        import httpx

        try:
            user, password = self.credentials
            token = httpx.post(
                f"{self.base_url}/auth/token", json={"username": user, "password": password}, timeout=3
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            for dag_id in self.dag_ids:
                if (
                    httpx.get(f"{self.base_url}/api/v2/dags/{dag_id}", headers=headers, timeout=3).status_code
                    != 200
                ):
                    return  # not parsed yet: next time
            for dag_id in self.dag_ids:
                httpx.patch(
                    f"{self.base_url}/api/v2/dags/{dag_id}",
                    json={"is_paused": False},
                    headers=headers,
                    timeout=3,
                ).raise_for_status()
        except (httpx.HTTPError, KeyError, ValueError):
            return  # the api-server is not ready yet
        self.marker.write_text("the project's DAGs were unpaused by `cart-recovery up`\n")
        log.info("unpaused %s", ", ".join(self.dag_ids))
