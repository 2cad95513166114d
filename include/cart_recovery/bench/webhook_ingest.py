"""Webhook ingest: signed Shopify checkouts against the real service, beside PostgreSQL's own commit rate.

Starts ``cart-recovery webhooks`` as a subprocess on a free loopback port, on a dedicated
``<warehouse>_bench`` database, with a temporary shops file holding one Shopify shop (its
``AIRFLOW_CONN_<ID>`` carries the ``webhook_secret``). A load generator in its own process
(:mod:`cart_recovery.bench.loadgen`) keeps ``clients`` keep-alive HTTP/1.1 connections busy for
``duration`` seconds with distinct, pre-signed ``checkouts/update`` deliveries (2-4 KB bodies,
unique ``X-Shopify-Webhook-Id``), after a short warm-up. Reported: events/s (2xx answers sent and
answered inside the window), latency percentiles, status counts, CPU seconds of the client, the
service, PostgreSQL and any other busy process on the machine (the benchmark shares it), and
whether ``raw.webhook_events`` holds exactly one row per 2xx answer of the run.

In the same run, just before the load, one connection INSERTs and COMMITs a similar jsonb row in
a loop for a few seconds: the server's single-row commit rate (measured again after the load for
information; the run's own aftermath, checkpointing and autovacuum, slows that one). ``events/s / that
rate`` says how the service, with many requests in flight (whose commits PostgreSQL can flush
together), compares with the simplest possible one-at-a-time writer.

Targets (issue 3): at least 1,000 events/s and p99 under 100 ms on the 2-core machine.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg2

from cart_recovery import connections, settings
from cart_recovery.bench import loadgen
from cart_recovery.database import Database, migrate
from cart_recovery.errors import CartRecoveryError
from cart_recovery.ports import free_port
from cart_recovery.shops import SHOPS_FILE_ENV

log = logging.getLogger(__name__)

NAME = "webhook_ingest"
SHOP_ID = "bench-shopify"
CONN_ID = "bench_shopify"
BASELINE_SHOP_ID = "bench-commit-baseline"
TARGET_EVENTS_PER_S = 1000
TARGET_P99_MS = 100.0
WARMUP_S = 2.0


def default_workers() -> int:
    """uvicorn worker processes: one per core. Each request spends most of its time waiting for its
    commit (the insert runs in a thread, so one worker already overlaps many), and the CPU left is
    shared with PostgreSQL and the load generator, so more workers than cores only adds contention."""
    return max(1, os.cpu_count() or 1)


# -- helpers ------------------------------------------------------------------------------------


def _percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of microsecond values, in milliseconds."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return round(sorted_values[rank - 1] / 1000, 2)


def _wait_healthy(port: int, process: subprocess.Popen, log_path: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}/healthz"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CartRecoveryError(
                f"webhook service exited ({process.returncode}):\n{log_path.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if json.loads(response.read()).get("database") == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise CartRecoveryError(
        f"webhook service not healthy after {timeout_s} s:\n{log_path.read_text()[-3000:]}"
    )


class _CpuMeter:
    """CPU seconds (user + system) of the service's process tree, PostgreSQL's processes, and the
    whole machine, between start() and stop()."""

    def __init__(self, service_pid: int, postmaster_pid: int | None) -> None:
        import psutil

        self._psutil = psutil
        self._service_pid = service_pid
        self._postmaster_pid = postmaster_pid

    def _postgres(self) -> list:
        if self._postmaster_pid is None:  # a configured server: every local postgres process
            return [p for p in self._psutil.process_iter(["name"]) if p.info["name"] == "postgres"]
        try:
            root = self._psutil.Process(self._postmaster_pid)
            return [root, *root.children(recursive=True)]
        except self._psutil.Error:
            return []

    def _service(self) -> list:
        root = self._psutil.Process(self._service_pid)
        return [root, *root.children(recursive=True)]

    def _others(self) -> list:
        return list(self._psutil.process_iter(["name"]))

    def _sample(self) -> dict[str, Any]:
        def seconds(processes) -> dict[int, float]:
            out = {}
            for process in processes:
                try:
                    times = process.cpu_times()
                    out[process.pid] = times.user + times.system
                except self._psutil.Error:
                    pass
            return out

        machine = self._psutil.cpu_times()
        service = self._service()
        everything = self._others()
        names = {p.pid: p.info["name"] for p in everything}
        return {
            "service": seconds(service),
            "postgres": seconds(self._postgres()),
            "all": seconds(everything),
            "names": names,
            "busy": machine.user
            + machine.system
            + machine.nice
            + getattr(machine, "softirq", 0)
            + getattr(machine, "irq", 0),
            "idle": machine.idle + getattr(machine, "iowait", 0),
            "iowait": getattr(machine, "iowait", 0.0),
            "at": time.perf_counter(),
            "load": os.getloadavg()[0],
        }

    def start(self) -> None:
        self._before = self._sample()

    def stop(self, exclude: set[int]) -> dict[str, Any]:
        """``exclude``: pids accounted for elsewhere (the load generator, this process)."""
        after = self._sample()
        before = self._before
        # Processes that started during the window (new PostgreSQL backends) count from 0.
        used = {pid: v - before["all"].get(pid, 0.0) for pid, v in after["all"].items()}
        service = sum(used.get(pid, 0.0) for pid in after["service"])
        postgres = sum(used.get(pid, 0.0) for pid in after["postgres"])
        others: dict[str, float] = {}
        for pid, v in used.items():
            name = after["names"].get(pid)
            if pid in after["service"] or pid in after["postgres"] or pid in exclude or v < 0.05:
                continue
            others[name] = others.get(name, 0.0) + v
        wall = after["at"] - before["at"]
        busy = after["busy"] - before["busy"]
        idle = after["idle"] - before["idle"]
        return {
            "wall_seconds": round(wall, 2),
            "service_cpu_seconds": round(service, 2),
            # The server's processes: other sessions' work on the same server included.
            "postgres_cpu_seconds": round(postgres, 2),
            "other_processes_cpu_seconds": {
                k: round(v, 2) for k, v in sorted(others.items(), key=lambda kv: -kv[1])[:5]
            },
            "machine_cpu_seconds_available": round(busy + idle, 2),
            "machine_busy_percent": round(100 * busy / (busy + idle), 1) if busy + idle else None,
            "machine_iowait_seconds": round(after["iowait"] - before["iowait"], 2),
            "load_average_1m_at_start": round(before["load"], 2),
        }


def _receive(pipe, process, timeout_s: float):
    """The next message from the load generator; an error (not a hang) when it died."""
    deadline = time.monotonic() + timeout_s
    while not pipe.poll(0.5):
        if not process.is_alive():
            raise CartRecoveryError(f"the load generator exited ({process.exitcode}) without answering")
        if time.monotonic() > deadline:
            raise CartRecoveryError(f"the load generator did not answer within {timeout_s:.0f} s")
    return pipe.recv()


def _postmaster_pid(url: str) -> int | None:
    """The embedded server's postmaster when ``url`` points at it, else None."""
    from cart_recovery.database import embedded_server

    server = embedded_server()
    if f":{server.port}/" not in url:
        return None
    try:
        return int((server.pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# -- the single-row commit baseline ------------------------------------------------------------


def commit_rate(url: str, body: str, seconds: float) -> dict[str, Any]:
    """One connection, one INSERT (the service's own statement shape) and one COMMIT per row."""
    insert = (
        "insert into raw.webhook_events (platform, shop_id, topic, delivery_id, received_at, payload) "
        "values ('shopify', %s, 'checkouts/update', %s, now(), %s) "
        "on conflict on constraint webhook_events_delivery_unique do nothing returning event_id"
    )
    run_id = uuid.uuid4().hex[:8]
    conn = psycopg2.connect(url, application_name="cart-recovery-bench-baseline")
    try:
        with conn.cursor() as cur:
            rows = 0
            started = time.perf_counter()
            deadline = started + seconds
            while time.perf_counter() < deadline:
                cur.execute(insert, (BASELINE_SHOP_ID, f"{run_id}-{rows}", body))
                conn.commit()
                rows += 1
            elapsed = time.perf_counter() - started
            cur.execute("delete from raw.webhook_events where shop_id = %s", (BASELINE_SHOP_ID,))
            conn.commit()
    finally:
        conn.close()
    return {"rows": rows, "seconds": round(elapsed, 2), "commits_per_s": round(rows / elapsed, 1)}


def _server_settings(url: str) -> dict[str, str]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "select name, setting from pg_settings where name in "
            "('fsync', 'synchronous_commit', 'wal_sync_method', 'commit_delay', 'max_connections', "
            "'shared_buffers')"
        )
        return dict(cur.fetchall())


# -- the run -----------------------------------------------------------------------------------


def run(
    *, duration_s: float = 60, clients: int = 50, workers: int | None = None, baseline_s: float = 5
) -> dict[str, Any]:
    """The measurement on ``<warehouse>_bench``; the server must be running (see :func:`main`)."""
    workers = workers or default_workers()
    bench_db = Database.from_env().with_suffix("_bench")
    bench_db.ensure_databases()
    migrate.upgrade(bench_db.url)
    with psycopg2.connect(bench_db.url) as conn, conn.cursor() as cur:
        # A fresh table each run, so its size (and index depth) does not drift between runs.
        cur.execute("truncate raw.webhook_events")
    result = _measure(
        bench_db.url, duration_s=duration_s, clients=clients, workers=workers, baseline_s=baseline_s
    )
    result["_database"] = bench_db.url
    return result


def _measure(url: str, *, duration_s: float, clients: int, workers: int, baseline_s: float) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    secret = uuid.uuid4().hex
    domain = f"bench-{run_id}.myshopify.com"
    port = free_port()
    # Enough distinct requests for 8,000 events/s (about 2 GiB of prebuilt requests for 60 s);
    # a faster service stops early, and the result says so (requests_exhausted).
    max_requests = int((duration_s + WARMUP_S + 2) * 8000)
    config = loadgen.LoadConfig(
        host="127.0.0.1",
        port=port,
        shop_domain=domain,
        secret=secret,
        run_id=run_id,
        clients=clients,
        duration_s=duration_s,
        warmup_s=WARMUP_S,
        max_unique_bodies=max_requests,
    )

    # The baseline row: one of the benchmark's own bodies.
    import random

    sample_body = json.dumps(loadgen.checkout(random.Random(1), 0, domain), ensure_ascii=False)
    log.info("Single-row INSERT + COMMIT rate, one connection, %.0f s ...", baseline_s)
    baseline_before = commit_rate(url, sample_body, baseline_s)
    log.info("  %s commits/s", baseline_before["commits_per_s"])

    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    generator = context.Process(target=loadgen.run, args=(config, child_end), name="webhook-loadgen")
    log.info("Building %d signed requests in the load generator ...", max_requests)
    generator.start()
    try:
        message = _receive(parent_end, generator, 600)
    except BaseException:
        generator.kill()
        raise
    assert message[0] == "ready", message

    tmp = Path(tempfile.mkdtemp(prefix="cart-recovery-bench-"))
    shops_file = tmp / "shops.yaml"
    shops_file.write_text(
        "shops:\n"
        f"  - id: {SHOP_ID}\n    platform: shopify\n    domain: {domain}\n"
        f"    api_base_url: https://{domain}\n    country: TR\n"
        "    timezone: Europe/Istanbul\n    currency: TRY\n"
        f"    language: tr\n    conn_id: {CONN_ID}\n"
    )
    env = {
        **os.environ,
        settings.DATABASE_URL_ENV: url,
        SHOPS_FILE_ENV: str(shops_file),
        connections.env_var_name(CONN_ID): json.dumps(
            {"conn_type": "http", "host": domain, "extra": {"webhook_secret": secret}}
        ),
    }
    env.pop(connections.env_var_name(connections.WHATSAPP_CONN_ID), None)
    executable = shutil.which("cart-recovery", path=str(Path(sys.executable).parent)) or "cart-recovery"
    command = [executable, "webhooks", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    server_log = tmp / "webhooks.log"
    log.info("Starting %s", " ".join(command))
    with open(server_log, "wb") as log_file:
        server = subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_healthy(port, server, server_log)
        cpu = _CpuMeter(server.pid, _postmaster_pid(url))
        log.info("%d clients for %.0f s (after %.0f s warm-up) ...", clients, duration_s, WARMUP_S)
        parent_end.send("go")
        assert _receive(parent_end, generator, 60) == ("start",)
        cpu.start()
        assert _receive(parent_end, generator, duration_s + 60) == ("end",)
        cpu_use = cpu.stop(exclude={generator.pid, os.getpid()})
        kind, load = _receive(parent_end, generator, 120)
        assert kind == "result", kind
        generator.join(30)
    finally:
        if generator.is_alive():
            generator.kill()
        with_errors = server.poll() is not None
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    server_tail = server_log.read_text(errors="replace")[-2000:]
    shutil.rmtree(tmp, ignore_errors=True)
    if with_errors:
        raise CartRecoveryError(f"the webhook service died during the run:\n{server_tail}")

    # Again after the load, for information only: the run's own aftermath (checkpointing its WAL,
    # autovacuum on the table it filled) slows it, so the divisor is the rate measured before.
    log.info("Single-row INSERT + COMMIT rate again, after the load ...")
    baseline_after = commit_rate(url, sample_body, baseline_s)
    log.info("  %s commits/s", baseline_after["commits_per_s"])
    baseline = {
        "connections": 1,
        "statement": "INSERT ... ON CONFLICT DO NOTHING RETURNING + COMMIT, one row (a benchmark body)",
        "commits_per_s": baseline_before["commits_per_s"],
        "before_load": baseline_before,
        "after_load_informational": baseline_after,
    }

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "select count(*), count(distinct delivery_id) from raw.webhook_events "
            "where platform = 'shopify' and shop_id = %s and delivery_id like %s",
            (SHOP_ID, f"{run_id}-%"),
        )
        stored, distinct = cur.fetchone()
        cur.execute("select pg_size_pretty(pg_total_relation_size('raw.webhook_events'))")
        table_size = cur.fetchone()[0]

    latencies = load.pop("latencies_us")
    window_statuses = load["statuses_in_window"]
    ok_in_window = sum(v for k, v in window_statuses.items() if k.startswith("2"))
    ok_all = sum(v for k, v in load["statuses_all"].items() if k.startswith("2"))
    events_per_s = ok_in_window / duration_s
    p99 = _percentile(latencies, 99)
    latency = {
        "p50_ms": _percentile(latencies, 50),
        "p95_ms": _percentile(latencies, 95),
        "p99_ms": p99,
        "max_ms": round(latencies[-1] / 1000, 2) if latencies else None,
        "mean_ms": round(sum(latencies) / len(latencies) / 1000, 2) if latencies else None,
    }
    stored_matches = stored == ok_all and distinct == stored
    ratio = events_per_s / baseline["commits_per_s"] if baseline["commits_per_s"] else None
    client_cpu = load.pop("client_cpu_seconds")
    return {
        "workload": {
            "clients": clients,
            "duration_seconds": duration_s,
            "warmup_seconds": WARMUP_S,
            "topic": loadgen.TOPIC,
            "platform": "shopify",
            "body_bytes": load.pop("body_bytes"),
            "prebuilt_requests": load.pop("prebuilt_requests"),
            "requests_exhausted": load.pop("requests_exhausted"),
            "http": "HTTP/1.1 keep-alive, one connection per client, closed loop",
        },
        "service": {
            "command": "cart-recovery webhooks --workers N",
            "uvicorn_workers": workers,
            "event_loop_client": load.pop("event_loop"),
        },
        "events_per_s": round(events_per_s, 1),
        "latency": latency,
        "status_counts_in_window": window_statuses,
        "status_counts_all": load["statuses_all"],
        "client_errors": load["errors"],
        "per_second_2xx": load["per_second_2xx"],
        "rows": {
            "two_xx_answers": ok_all,
            "stored": stored,
            "stored_distinct_delivery_ids": distinct,
            "stored_equals_2xx": stored_matches,
            "table_size_after": table_size,
        },
        "postgres_single_row_commit": baseline,
        "events_to_single_commit_ratio": round(ratio, 2) if ratio else None,
        "cpu": {**cpu_use, "client_cpu_seconds": client_cpu},
        "postgres_settings": _server_settings(url),
        "targets": {"events_per_s_at_least": TARGET_EVENTS_PER_S, "p99_ms_under": TARGET_P99_MS},
        "targets_met": events_per_s >= TARGET_EVENTS_PER_S and p99 < TARGET_P99_MS and stored_matches,
    }


def main(
    duration_s: float, clients: int = 50, workers: int | None = None, *, quick: bool = False
) -> dict[str, Any]:
    from cart_recovery.bench.results import write_result

    result = run(
        duration_s=duration_s, clients=clients, workers=workers, baseline_s=3 if duration_s < 30 else 5
    )
    url = result.pop("_database")
    path = write_result(NAME, result, url, quick=quick)
    log.info("%s: %s", NAME, os.fspath(path))
    return result
