"""Dispatch throughput: ``messages`` due stage-1 plan rows through the fake WhatsApp Cloud API.

Setup, the real path: ``messages`` abandoned Shopify checkouts (the polled REST shape of
docs/raw-layer.md, one customer each, SMS/WhatsApp consent, no orders, none in the holdout) land in
``raw.polled_records`` of a fresh ``<warehouse>_bench_dispatch`` database and a ``dbt build
--full-refresh`` plans them, so that ``marts.recovery_plan`` holds exactly ``messages`` stage-1
rows due on WhatsApp, which the send-time guards let through (quiet hours off, a long expiry).

For each limit (80, then 1,000 messages per second) the fake WhatsApp API (the simulator's router,
in a uvicorn server of its own process: pair rate off, status callbacks off) is started with that
``messages_per_second``, the outbox is emptied, and ``dispatch_due(1, as_of)`` runs once with the
``whatsapp_default`` connection pointing at it (the client's limiter at the same rate). Reported:

- ``dispatch_due`` end to end (leases, enqueue, every claim, send and record) and the sending
  phase alone (first to last message the fake accepted), each as messages/s and as a share of the
  limit (target: the sending phase at least 95%);
- duplicates (target 0): a plan_key (``biz_opaque_callback_data``) or a recipient + template twice
  in the fake's log, and the outbox's sent rows against the fake's log, message id for message id;
- the 130429 (throughput) refusals the fake answered, the peak count in any one-second window;
- where the time went: claims (the guards' query and the verdicts), records, enqueue, and the
  pauses in the fake's log between chunks; CPU seconds of this process (the dispatcher and its
  client), of the fake, of PostgreSQL and of anything else busy on the machine (load average).

Diagnostics say which side limits (none of them is a target):

- ``dispatcher_unlimited``: the fake and the client at 100,000/s, i.e. as fast as they go;
- ``dispatcher_with_provider_latency``: a smaller batch with every answer 0.2 s late (Meta is an
  internet round trip away, the loopback fake is not), at each limit;
- ``client_alone``: the WhatsApp client without the database, 64 (the dispatcher's bound), 16 and
  4 sends in flight: its CPU per send;
- ``runs_with_chunks_of_200``: the top limit again with claims of 200 rows, the fixed size before
  chunks were sized to one second of sends (``DispatchSettings.chunk_rows``);
- ``fake_alone``: a lean raw-socket HTTP/1.1 client in its own process sends template messages as
  fast as the fake answers: the fake's own ceiling.

``python -m cart_recovery.bench.dispatch_throughput serve --rate R`` is the fake's process: it
prints one JSON line (base URL, connection) once listening and serves until its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import itertools
import json
import logging
import multiprocessing
import os
import pstats
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import yaml

from cart_recovery import settings
from cart_recovery.connections import WHATSAPP_CONN_ID, env_var_name
from cart_recovery.database import Database, migrate
from cart_recovery.errors import CartRecoveryError
from cart_recovery.shops import Shop, sync_shops_table

log = logging.getLogger(__name__)

NAME = "dispatch_throughput"
SHOP_ID = "anatolia-shopify"
LIMITS = (80, 1000)
UNLIMITED = 100_000  # "no limit" for the diagnostics: far above what one machine can send
PROVIDER_LATENCY_S = 0.2  # a diagnostic run with each answer this late, as over the internet
SMALL_CHUNK = 200  # a diagnostic run with claims of this many rows (the default: one second of sends)
TARGET_SHARE = 0.95
STAGE = 1
# The moment of the run: the carts went quiet 1 to 3 hours before it, so stage 1 (30 minutes
# after the last activity) is due for every one of them. Midday in Istanbul, but quiet hours are
# off anyway: this measures throughput, not the night.
AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
ACTIVITY_WINDOW = (timedelta(hours=3), timedelta(hours=1))  # earliest, latest before AS_OF
CUSTOMER_ID_BASE = 7_000_000

_LAND = """
with candidates as (
    select ids.id, %(customer_base)s + ids.id as customer_id
    from generate_series(1, %(scan)s) as ids (id)
),

chosen as (
    -- the dbt project's customer key and holdout (macros hash_key, is_holdout): none held out
    select id, customer_id, row_number() over (order by id) as n
    from candidates
    where (('x' || left(md5('holdout|' || md5(%(shop_id)s || '|id|' || customer_id)), 8))
        ::bit(32)::bigint %% 10000) >= %(holdout_basis_points)s
    order by id
    limit %(count)s
),

carts as (
    select chosen.*,
        %(latest)s::timestamptz - (chosen.n::double precision / %(count)s) * %(span)s::interval
            as updated_at
    from chosen
)

insert into raw.polled_records
    (platform, shop_id, entity, record_id, record_updated_at, fetched_at, payload)
select
    'shopify', %(shop_id)s, 'cart', (9000000 + carts.id)::text, carts.updated_at,
    carts.updated_at + interval '5 minutes',
    -- the polled shape: GraphQL has no checkout or cart token (polled_shape in the dbt tests)
    jsonb_build_object(
        'id', 9000000 + carts.id,
        'token', null,
        'cart_token', null,
        'email', 'shopper' || carts.customer_id || '@example.com',
        'phone', '+90532' || lpad(carts.id::text, 7, '0'),
        'customer_locale', case when carts.id %% 4 = 0 then 'en-US' else 'tr-TR' end,
        'customer', jsonb_build_object(
            'id', carts.customer_id,
            'email', 'shopper' || carts.customer_id || '@example.com',
            'phone', '+90532' || lpad(carts.id::text, 7, '0'),
            'first_name', (array['Ayşe', 'Mehmet', 'Zeynep', 'Emre', 'Elif', 'John'])[1 + carts.id %% 6],
            'last_name', (array['Yılmaz', 'Kaya', 'Demir', 'Şahin', 'Çelik', 'Smith'])[1 + carts.id %% 6],
            'email_marketing_consent', jsonb_build_object('state', 'subscribed'),
            'sms_marketing_consent', jsonb_build_object('state', 'subscribed')
        ),
        'line_items', jsonb_build_array(jsonb_build_object(
            'product_id', 900 + carts.id %% 50,
            'variant_id', 9000 + carts.id %% 200,
            'title', (array['Linen Shirt', 'Wool Scarf', 'Leather Bag', 'Cotton Dress'])[1 + carts.id %% 4],
            'variant_title', 'M',
            'quantity', 1 + carts.id %% 3,
            'price', (100 + carts.id %% 900)::text || '.00'
        )),
        'total_price', ((100 + carts.id %% 900) * (1 + carts.id %% 3))::text || '.00',
        'currency', 'TRY',
        'abandoned_checkout_url',
            'https://anatolia-linen.myshopify.com/checkouts/' || md5(carts.id::text) || '/recover',
        'created_at', to_char(carts.updated_at - interval '20 minutes', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'updated_at', to_char(carts.updated_at, 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'completed_at', null
    )
from carts
"""

_SENDABLE = """
select count(*) filter (where channel = 'whatsapp' and suppressed_reason is null), count(*)
from marts.recovery_plan
where stage = %(stage)s and due_at <= %(now)s
"""


def _holdout_pct() -> float:
    project = yaml.safe_load((settings.Paths.from_env().home / "dbt_project" / "dbt_project.yml").read_text())
    return float(project["vars"]["holdout_pct"])


def _dispatch_settings(chunk_size: int | None = None):
    from cart_recovery.dispatch.config import DispatchSettings

    # The carts are hours old at AS_OF and the night is out of the way: every row is sendable.
    settings = DispatchSettings(
        quiet_hours=None, expire_after=timedelta(days=30), lookback=timedelta(days=30)
    )
    return settings if chunk_size is None else replace(settings, chunk_size=chunk_size)


# -- the fake WhatsApp API's process --------------------------------------------------------------


def serve(rate: float, response_delay: float = 0.0) -> None:
    """The fake WhatsApp Cloud API at ``rate`` messages/s, pair rate and status callbacks off;
    each accepted send answered after ``response_delay`` seconds (a provider's latency)."""
    import uvicorn
    from fastapi import FastAPI

    from cart_recovery.simulator import whatsapp_api
    from cart_recovery.simulator.server import _bind

    class CountingState(whatsapp_api.WhatsAppState):
        """The fake's state, counting the 130429 (throughput) refusals it answers."""

        throughput_refusals = 0

        def _take_throughput(self, phone_number_id: str) -> bool:
            taken = super()._take_throughput(phone_number_id)
            if not taken:
                self.throughput_refusals += 1
            return taken

    logging.basicConfig(level=logging.WARNING)
    state = CountingState(
        knobs=whatsapp_api.WhatsAppKnobs(
            messages_per_second=rate,
            pair_interval=0,
            status_callbacks="off",
            response_delay=response_delay,
        )
    )
    app = FastAPI()
    app.include_router(whatsapp_api.router(state), prefix="/whatsapp")

    @app.get("/_bench")
    def counts() -> dict[str, Any]:
        return {"throughput_refusals": state.throughput_refusals, "accepted": len(state.messages())}

    sock = _bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fake WhatsApp API did not start")
        time.sleep(0.01)
    base_url = f"http://127.0.0.1:{port}"
    print(
        json.dumps(
            {
                "base_url": base_url,
                "port": port,
                "connection": state.connection(f"{base_url}/whatsapp"),
                "phone_number_id": state.phone_number_id,
                "access_token": state.access_token,
                "api_version": state.api_version,
            }
        ),
        flush=True,
    )
    sys.stdin.read()  # until the parent closes the pipe
    server.should_exit = True
    thread.join(timeout=10)


class _FakeProcess:
    """The fake in a child process, so that its CPU is neither this process's nor its GIL's."""

    def __init__(self, rate: float, response_delay: float = 0.0) -> None:
        module = "cart_recovery.bench.dispatch_throughput"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                "serve",
                "--rate",
                str(rate),
                "--response-delay",
                str(response_delay),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            raise CartRecoveryError(
                f"the fake WhatsApp API exited ({self.process.returncode}) before listening"
            )
        self.info = json.loads(line)
        self.pid = self.process.pid

    def get(self, path: str) -> Any:
        import httpx

        response = httpx.get(f"{self.info['base_url']}{path}", timeout=120)
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- setup: raw carts and a dbt build --------------------------------------------------------------


def _shop() -> Shop:
    """The shop the carts belong to, as the shops file would declare it."""
    return Shop(
        id=SHOP_ID,
        platform="shopify",
        domain="anatolia-linen.myshopify.com",
        api_base_url="https://anatolia-linen.myshopify.com",
        country="TR",
        timezone="Europe/Istanbul",
        currency="TRY",
        language="tr",
        conn_id="anatolia_shopify",
        name="Anatolia Linen",
    )


def _fresh_database() -> Database:
    from cart_recovery.bench.live_pipeline import fresh_databases

    database = fresh_databases(Database.from_env(), "_bench_dispatch")
    database.ensure_databases()
    migrate.upgrade(database.url)
    return database


def _plan(database: Database, messages: int) -> dict[str, Any]:
    """Land the carts and build the plan; fails clearly unless exactly ``messages`` rows are due."""
    from cart_recovery.bench.dbt_incremental import _dbt
    from cart_recovery.environment import project_environment

    earliest, latest = ACTIVITY_WINDOW
    holdout = _holdout_pct()
    started = time.perf_counter()
    with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
        cur.execute(
            _LAND,
            {
                "customer_base": CUSTOMER_ID_BASE,
                "scan": int(messages / (1 - holdout / 100) * 1.2) + 100,
                "holdout_basis_points": int(holdout * 100),
                "count": messages,
                "shop_id": SHOP_ID,
                "latest": AS_OF - latest,
                "span": earliest - latest,
            },
        )
        landed = cur.rowcount
        cur.execute("analyze raw.polled_records")
    conn.close()
    # the shop into ops.shops, as cart_transform copies it; a new shop's stored phone numbers are
    # read in its country then (ingest would have stored them as the carts landed)
    conn = psycopg2.connect(database.url)
    try:
        sync_shops_table(conn, [_shop()])
    finally:
        conn.close()
    land_s = time.perf_counter() - started

    env = project_environment(database, airflow_profile="bench")
    env["DBT_TARGET_PATH"] = str(settings.Paths.from_env().data / "bench-dbt-target-dispatch")
    seed_s = _dbt(env, "seed", "--full-refresh")
    timings: dict[str, Any] = {}
    log.info("dbt build --full-refresh over %d carts ...", landed)
    build_s = _dbt(env, "build", "--full-refresh", as_of=AS_OF, timings=timings)
    with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
        cur.execute(_SENDABLE, {"stage": STAGE, "now": AS_OF})
        sendable, due = cur.fetchone()
    conn.close()
    if sendable != messages or due != messages:
        raise CartRecoveryError(
            f"the build planned {sendable} sendable WhatsApp stage-{STAGE} rows ({due} due) for "
            f"{messages} carts: the synthetic carts no longer match the model (keys, holdout, policy)"
        )
    return {
        "carts_landed": landed,
        "land_seconds": round(land_s, 2),
        "dbt_seed_seconds": round(seed_s, 2),
        "dbt_build_seconds": round(build_s, 2),
        "dbt_build": timings,
        "due_sendable_stage_1_rows": sendable,
    }


# -- where the dispatcher's time goes --------------------------------------------------------------


@contextmanager
def _timed_outbox() -> Iterator[dict[str, list[float]]]:
    """Time ``outbox.claim``, ``record`` and ``enqueue_due`` as the dispatcher calls them."""
    from cart_recovery.dispatch import outbox

    spans: dict[str, list[float]] = {"claim": [], "record": [], "enqueue": []}
    originals = {"claim": outbox.claim, "record": outbox.record, "enqueue": outbox.enqueue_due}

    def timed(name: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spans[name].append(time.perf_counter() - started)

        return wrapper

    outbox.claim = timed("claim", originals["claim"])
    outbox.record = timed("record", originals["record"])
    outbox.enqueue_due = timed("enqueue", originals["enqueue"])
    try:
        yield spans
    finally:
        outbox.claim, outbox.record, outbox.enqueue_due = (
            originals["claim"],
            originals["record"],
            originals["enqueue"],
        )


def _span_stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"calls": 0}
    return {
        "calls": len(values),
        "total_s": round(sum(values), 3),
        "mean_ms": round(1000 * sum(values) / len(values), 1),
        "max_ms": round(1000 * max(values), 1),
    }


def _sending(accepted: list[dict[str, Any]], limit: float) -> dict[str, Any]:
    """Rate of the sending phase from the fake's log: first to last accepted message."""
    times = sorted(message["accepted_at"] for message in accepted)
    if len(times) < 2:
        return {"messages": len(times)}
    span = times[-1] - times[0]
    rate = (len(times) - 1) / span if span > 0 else float("inf")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    pause = max(0.05, 3 / limit)  # much longer than the limit's spacing
    pauses = [gap for gap in gaps if gap > pause]
    # the most messages accepted in any one second (two pointers over the sorted times)
    peak, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= 1.0:
            start += 1
        peak = max(peak, end - start + 1)
    return {
        "messages": len(times),
        "seconds": round(span, 3),
        "messages_per_second": round(rate, 1),
        "share_of_limit": round(rate / limit, 4),
        "peak_in_any_1s_window": peak,
        "pauses": {
            "longer_than_s": round(pause, 3),
            "count": len(pauses),
            "total_s": round(sum(pauses), 3),
            "longest_s": round(max(pauses), 3) if pauses else 0.0,
        },
    }


def _duplicates(accepted: list[dict[str, Any]], outbox_rows: list[tuple]) -> dict[str, Any]:
    by_plan = Counter(message["callback_data"] for message in accepted)
    by_person = Counter((message["wa_id"], message["template"]) for message in accepted)
    sent = {row[1]: row for row in outbox_rows if row[2] == "sent"}
    logged = {message["id"] for message in accepted}
    return {
        "same_plan_key_twice": sum(n - 1 for n in by_plan.values() if n > 1),
        "same_recipient_and_template_twice": sum(n - 1 for n in by_person.values() if n > 1),
        "accepted_without_a_sent_outbox_row": len(logged - set(sent)),
        "sent_outbox_rows_not_in_the_fake_log": len(set(sent) - logged),
        "accepted_with_another_plan_key_than_its_row": sum(
            1 for m in accepted if m["id"] in sent and sent[m["id"]][0] != m["callback_data"]
        ),
    }


def _total(duplicates: dict[str, int]) -> int:
    return sum(duplicates.values())


class _CpuMeter:
    """CPU seconds of the fake, of PostgreSQL and of the machine between ``start`` and ``stop``.

    The webhook benchmark's meter, with PostgreSQL counted through its postmaster: the backends
    of ``dispatch_due`` exit when it closes its connections, before the meter stops, and a
    process's CPU lives on only in its parent's reaped-children times.
    """

    def __init__(self, fake_pid: int, url: str) -> None:
        import psutil

        from cart_recovery.bench.webhook_ingest import _CpuMeter as MachineMeter
        from cart_recovery.bench.webhook_ingest import _postmaster_pid

        self._psutil = psutil
        self._postmaster = _postmaster_pid(url)
        self._machine = MachineMeter(fake_pid, self._postmaster)
        self._before = 0.0

    def _postgres(self) -> float:
        """The postmaster's own, its live children's and its reaped children's CPU seconds."""
        if self._postmaster is None:
            return 0.0
        try:
            root = self._psutil.Process(self._postmaster)
            times = root.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            for child in root.children():
                try:
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
                except self._psutil.Error:
                    pass  # exited just now: counted in the reaped times next time
            return total
        except self._psutil.Error:
            return 0.0

    def start(self) -> None:
        self._machine.start()
        self._before = self._postgres()

    def stop(self, exclude: set[int]) -> dict[str, Any]:
        time.sleep(0.5)  # the backends of closed connections exit and are reaped (else: lost)
        postgres = self._postgres() - self._before
        used = self._machine.stop(exclude)
        used["postgres_cpu_seconds"] = round(postgres, 2) if self._postmaster is not None else None
        return used


def _cpu_meter(fake_pid: int, url: str) -> _CpuMeter:
    return _CpuMeter(fake_pid, url)


def _moment_when_due(url: str, messages: int) -> datetime:
    """The moment by which the first ``messages`` stage-1 rows fell due (a smaller batch)."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "select due_at from marts.recovery_plan where stage = %s order by due_at offset %s limit 1",
            (STAGE, messages - 1),
        )
        row = cur.fetchone()
    conn.close()
    if row is None:
        raise CartRecoveryError(f"the plan has fewer than {messages} stage-{STAGE} rows")
    return row[0]


def _dispatch_at(
    url: str,
    limit: float,
    *,
    now: datetime = AS_OF,
    profile: bool = False,
    response_delay: float = 0.0,
    client_class: type | None = None,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Empty the outbox, start the fake at ``limit``, run ``dispatch_due`` as of ``now`` once
    (every row due by then); what happened. ``client_class``: a WhatsAppClient variant."""
    from cart_recovery.dispatch.dispatcher import Channels, dispatch_due, in_flight
    from cart_recovery.dispatch.whatsapp import WhatsAppClient

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("truncate ops.recovery_outbox, ops.consent_revocations, ops.conversations")
        cur.execute(_SENDABLE, {"stage": STAGE, "now": now})
        messages = cur.fetchone()[0]
    conn.close()
    fake = _FakeProcess(limit, response_delay)
    try:
        os.environ[env_var_name(WHATSAPP_CONN_ID)] = json.dumps(fake.info["connection"])
        # the real path: the client from the connection, at the connection's limit
        client = (client_class or WhatsAppClient).from_connection()
        shop = _shop()
        dispatch_settings = _dispatch_settings(chunk_size)
        cpu = _cpu_meter(fake.pid, url)
        profiler = cProfile.Profile() if profile else None
        log.info("dispatch_due: %d messages at %s/s ...", messages, limit)
        with _timed_outbox() as spans:
            cpu.start()
            own_cpu = time.process_time()
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            summary = dispatch_due(
                STAGE,
                now,
                database_url=url,
                claimer=f"bench/{NAME}/{limit}",
                settings=dispatch_settings,
                channels=Channels(whatsapp=client),
                shops={SHOP_ID: shop},
            )
            if profiler:
                profiler.disable()
            elapsed = time.perf_counter() - started
            own_cpu = time.process_time() - own_cpu
            machine = cpu.stop(exclude={os.getpid()})
        accepted = fake.get("/whatsapp/_log")["messages"]
        counts = fake.get("/_bench")
    finally:
        fake.close()
        os.environ.pop(env_var_name(WHATSAPP_CONN_ID), None)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "select plan_key, provider_message_id, status from ops.recovery_outbox where stage = %s",
            (STAGE,),
        )
        outbox_rows = cur.fetchall()
    conn.close()
    statuses = Counter(row[2] for row in outbox_rows)
    duplicates = _duplicates(accepted, outbox_rows)
    sending = _sending(accepted, limit)
    end_to_end = len(accepted) / elapsed if elapsed else 0.0
    result: dict[str, Any] = {
        "limit_messages_per_second": limit,
        "fake_response_delay_s": response_delay,
        "client": (client_class or WhatsAppClient).__name__,
        "now": now.isoformat(),
        "due_rows": messages,
        "accepted_by_fake": len(accepted),
        "dispatch_due": {
            "seconds": round(elapsed, 2),
            "messages_per_second": round(end_to_end, 1),
            "share_of_limit": round(end_to_end / limit, 4),
        },
        "sending_phase": sending,
        "duplicates": duplicates,
        "duplicates_total": _total(duplicates),
        "throughput_refusals_130429": counts["throughput_refusals"],
        "outbox_statuses": dict(sorted(statuses.items())),
        "summary": summary.as_dict()["counts"],
        "dispatcher": {
            "chunk_rows": dispatch_settings.chunk_rows(limit),
            "sends_in_flight": in_flight(Channels(whatsapp=client)),
            "enqueue": _span_stats(spans["enqueue"]),
            "claim": _span_stats(spans["claim"]),
            "record": _span_stats(spans["record"]),
        },
        "cpu": {
            "dispatcher_process_cpu_seconds": round(own_cpu, 2),
            "fake_cpu_seconds": machine["service_cpu_seconds"],
            "postgres_cpu_seconds": machine["postgres_cpu_seconds"],
            "other_processes_cpu_seconds": machine["other_processes_cpu_seconds"],
            "machine_busy_percent": machine["machine_busy_percent"],
            "load_average_1m_at_start": machine["load_average_1m_at_start"],
            "per_message_ms": {
                "dispatcher": round(1000 * own_cpu / max(1, len(accepted)), 3),
                "fake": round(1000 * machine["service_cpu_seconds"] / max(1, len(accepted)), 3),
                "postgres": round(1000 * (machine["postgres_cpu_seconds"] or 0) / max(1, len(accepted)), 3),
            },
        },
    }
    if profiler:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
        result["_profile"] = text.getvalue()
    return result


# -- the fake alone: a lean client, no limit -------------------------------------------------------


def _requests(info: dict[str, Any], count: int) -> list[bytes]:
    """Template sends in Meta's wire format, as the dispatcher's client posts them, prebuilt."""
    path = f"/whatsapp/{info['api_version']}/{info['phone_number_id']}/messages"
    requests = []
    for n in range(count):
        body = json.dumps(
            {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": f"+90533{n:07d}",
                "type": "template",
                "template": {
                    "name": "cart_reminder_gentle_tr",
                    "language": {"code": "tr"},
                    "components": [
                        {
                            "type": "body",
                            "parameters": [
                                {"type": "text", "text": text}
                                for text in ("Ayşe", "Linen Shirt", "899,90 TL", f"https://h.example/r/{n}")
                            ],
                        }
                    ],
                },
                "biz_opaque_callback_data": f"capacity-{n}",
            },
            ensure_ascii=False,
        ).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{info['port']}\r\n"
            f"Authorization: Bearer {info['access_token']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        requests.append(head + body)
    return requests


async def _blast(port: int, requests: list[bytes], connections: int) -> dict[str, Any]:
    statuses: Counter = Counter()
    position = iter(range(len(requests)))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for n in position:
                writer.write(requests[n])
                head = await reader.readuntil(b"\r\n\r\n")
                statuses[head[9:12].decode()] += 1
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return {"seconds": time.perf_counter() - started, "statuses": dict(statuses)}


def _load_process(info: dict[str, Any], count: int, connections: int, pipe) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    requests = _requests(info, count)
    cpu = time.process_time()
    outcome = asyncio.run(_blast(info["port"], requests, connections))
    outcome["client_cpu_seconds"] = time.process_time() - cpu
    pipe.send(outcome)


def _fake_capacity(url: str, count: int, connections: int = 32) -> dict[str, Any]:
    """The fake's own ceiling: as many template sends as it answers, no limit, lean client."""
    fake = _FakeProcess(UNLIMITED)
    try:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        warm = context.Process(target=_load_process, args=(fake.info, 500, 8, child_end))
        warm.start()
        parent_end.recv()
        warm.join()
        cpu = _cpu_meter(fake.pid, url)
        loader = context.Process(target=_load_process, args=(fake.info, count, connections, child_end))
        loader.start()
        cpu.start()
        outcome = parent_end.recv()
        machine = cpu.stop(exclude={os.getpid(), loader.pid})
        loader.join(30)
        counts = fake.get("/_bench")
    finally:
        fake.close()
    accepted = outcome["statuses"].get("200", 0)
    fake_cpu = machine["service_cpu_seconds"]
    return {
        "requests": count,
        "connections": connections,
        "client": "raw-socket HTTP/1.1 keep-alive, prebuilt requests, own process (uvloop)",
        "statuses": outcome["statuses"],
        "accepted_by_fake": counts["accepted"] - 500,
        "seconds": round(outcome["seconds"], 2),
        "accepted_per_second": round(accepted / outcome["seconds"], 1),
        "fake_cpu_seconds": fake_cpu,
        "fake_cpu_ms_per_message": round(1000 * fake_cpu / max(1, accepted), 3),
        "fake_one_core_ceiling_per_second": round(accepted / fake_cpu, 1) if fake_cpu else None,
        "client_cpu_seconds": round(outcome["client_cpu_seconds"], 2),
        "machine_busy_percent": machine["machine_busy_percent"],
        "load_average_1m_at_start": machine["load_average_1m_at_start"],
    }


def _client_alone(url: str, count: int, concurrency: int, client_class: type | None = None) -> dict[str, Any]:
    """The dispatcher's WhatsApp client alone (no database, no rendering): ``count`` template
    sends, ``concurrency`` at a time, to the fake with no limit; its CPU per send."""
    from cart_recovery.dispatch.whatsapp import WhatsAppClient

    fake = _FakeProcess(UNLIMITED)
    try:
        os.environ[env_var_name(WHATSAPP_CONN_ID)] = json.dumps(fake.info["connection"])
        client = (client_class or WhatsAppClient).from_connection()

        async def send_all() -> Counter:
            semaphore = asyncio.Semaphore(concurrency)

            async def one(n: int):
                async with semaphore:
                    parameters = ["Ayşe", "Linen Shirt", "899,90 TL", f"https://h.example/r/{n}"]
                    return await client.send_template(
                        f"+90534{n:07d}", "cart_reminder_gentle_tr", "tr", parameters, f"client-{n}"
                    )

            try:
                results = await asyncio.gather(*(one(n) for n in range(count)))
            finally:
                await client.aclose()
            return Counter(result.outcome.value for result in results)

        cpu = _cpu_meter(fake.pid, url)
        cpu.start()
        own_cpu = time.process_time()
        started = time.perf_counter()
        outcomes = asyncio.run(send_all())
        elapsed = time.perf_counter() - started
        own_cpu = time.process_time() - own_cpu
        machine = cpu.stop(exclude={os.getpid()})
    finally:
        fake.close()
        os.environ.pop(env_var_name(WHATSAPP_CONN_ID), None)
    return {
        "client": (client_class or WhatsAppClient).__name__,
        "sends": count,
        "concurrency": concurrency,
        "outcomes": dict(outcomes),
        "seconds": round(elapsed, 2),
        "sends_per_second": round(count / elapsed, 1),
        "client_cpu_ms_per_send": round(1000 * own_cpu / count, 3),
        "fake_cpu_ms_per_send": round(1000 * machine["service_cpu_seconds"] / count, 3),
        "machine_busy_percent": machine["machine_busy_percent"],
        "load_average_1m_at_start": machine["load_average_1m_at_start"],
    }


# -- the benchmark ---------------------------------------------------------------------------------


def run(*, messages: int = 10_000, limits: tuple[float, ...] = LIMITS, profile_limit: float | None = None):
    os.environ.setdefault("CART_RECOVERY_LINK_SECRET", "bench-link-secret-0123456789abcdef")
    os.environ.setdefault("CART_RECOVERY_PUBLIC_URL", "https://hooks.example.test")
    database = _fresh_database()
    log.info("Landing %d carts and building the plan ...", messages)
    setup = _plan(database, messages)
    runs = {}
    profiles = {}
    for limit in limits:
        outcome = _dispatch_at(database.url, limit, profile=profile_limit == limit)
        if "_profile" in outcome:
            profiles[str(limit)] = outcome.pop("_profile")
        runs[str(int(limit))] = outcome
    log.info("Diagnostics: no limit, a provider's latency, the client alone and the fake alone ...")
    unlimited = _dispatch_at(database.url, UNLIMITED, profile=profile_limit == UNLIMITED)
    if "_profile" in unlimited:
        profiles["unlimited"] = unlimited.pop("_profile")
    from cart_recovery.dispatch.dispatcher import CONCURRENCY

    subset = _moment_when_due(database.url, max(500, messages // 5))  # a smaller batch
    latency = [
        _dispatch_at(database.url, limit, now=subset, response_delay=PROVIDER_LATENCY_S) for limit in limits
    ]
    sends = max(1_000, messages // 2)
    clients = [_client_alone(database.url, sends, c) for c in (CONCURRENCY, 16, 4)]
    top = max(limits)
    small_chunks = {
        f"{int(top)} with chunks of {SMALL_CHUNK}": _dispatch_at(database.url, top, chunk_size=SMALL_CHUNK)
    }
    capacity = _fake_capacity(database.url, count=max(2_000, messages))
    met = {
        limit: (
            outcome["sending_phase"].get("share_of_limit", 0) >= TARGET_SHARE
            and outcome["duplicates_total"] == 0
            and outcome["accepted_by_fake"] == messages
        )
        for limit, outcome in runs.items()
    }
    return {
        "workload": {
            "messages": messages,
            "stage": STAGE,
            "as_of": AS_OF.isoformat(),
            "platform": "shopify (polled REST checkout shape), one customer per cart, WhatsApp consent",
            "path": (
                "raw.polled_records -> dbt build -> marts.recovery_plan -> dispatch_due (enqueue, "
                "claim with guards, render, WhatsAppClient) -> fake WhatsApp Cloud API (own process)"
            ),
            "fake": "simulator whatsapp_api router under uvicorn; pair_interval 0; status callbacks off",
            "settings": "DispatchSettings(quiet_hours=None, expire_after=30 days, lookback=30 days)",
        },
        "setup": setup,
        "runs": runs,
        "diagnostics": {
            "dispatcher_unlimited": unlimited,
            "dispatcher_with_provider_latency": latency,
            "client_alone": clients,
            "runs_with_chunks_of_200": small_chunks,
            "fake_alone": capacity,
        },
        "targets": {
            "sending_phase_share_of_limit_at_least": TARGET_SHARE,
            "duplicates": 0,
            "every_due_row_accepted": True,
        },
        "targets_met_by_limit": met,
        "targets_met": all(met.values()),
        "_database": database.url,
        "_profiles": profiles,
    }


def main(
    messages: int = 10_000, *, quick: bool = False, profile_limit: float | None = None
) -> dict[str, Any]:
    from cart_recovery.bench.results import write_result

    result = run(messages=messages, profile_limit=profile_limit)
    url = result.pop("_database")
    profiles = result.pop("_profiles")
    path = write_result(NAME, result, url, quick=quick)
    log.info("%s: %s", NAME, os.fspath(path))
    for limit, text in profiles.items():
        print(f"--- profile at {limit}/s ---\n{text}", file=sys.stderr)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m cart_recovery.bench.dispatch_throughput")
    parser.add_argument("action", choices=["serve", "run"])
    parser.add_argument("--rate", type=float, default=80.0, help="serve: the fake's messages per second")
    parser.add_argument("--response-delay", type=float, default=0.0, help="serve: seconds per answer")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", type=float, default=None, help="cProfile the run at this limit")
    args = parser.parse_args()
    if args.action == "serve":
        serve(args.rate, args.response_delay)
    else:
        logging.basicConfig(level=logging.INFO)
        result = main(args.messages, quick=args.quick, profile_limit=args.profile)
        print(json.dumps(result, indent=2, default=str))
