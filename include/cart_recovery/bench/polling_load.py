"""Polling load: ``carts`` abandoned checkouts from the fake Shopify API into ``raw``, the real path.

The simulator serves one Shopify shop with ``carts`` checkouts in a child process (so that its
data and CPU are not counted against the poller); this process polls it with ``ingest_shop`` and
the Shopify client (GraphQL pages of 250, great-expectations validation, batched idempotent
inserts) into ``raw.polled_records`` of the ``<warehouse>_bench`` database.

Reported: carts/s over the whole poll, the resident memory (RSS) of this process before polling
and each time 10k/25k/50k/100k carts had been streamed, and its peak. Memory must stay flat as
the count grows (pages are streamed, never collected into one list). Target (issue 3): at least
5,000 carts/s.

``python -m cart_recovery.bench.polling_load serve --carts N`` is the child: it prints one JSON
line (base URL, shop, connection) once listening and serves until its stdin closes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg2

from cart_recovery.database import Database, migrate

log = logging.getLogger(__name__)

NAME = "polling_load"
SHOP_ID = "anatolia-shopify"
PAGE_SIZE = 250  # Shopify's maximum
TARGET_CARTS_PER_S = 5_000
CHECKPOINTS = (10_000, 25_000, 50_000, 100_000)


def _rss_mib() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- the simulator child ------------------------------------------------------------------------


def serve(carts: int) -> None:
    from cart_recovery.simulator import run_simulator

    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    with run_simulator(seed=1, carts_per_shop=carts, shop_ids=[SHOP_ID]) as sim:
        print(
            json.dumps(
                {
                    "base_url": sim.base_url,
                    "shop": sim.shop(SHOP_ID).model_dump(mode="json"),
                    "env": sim.connection_env(),
                    "carts": len(sim.data(SHOP_ID).carts),
                    "generated_s": round(time.perf_counter() - started, 2),
                    "rss_mib": round(_rss_mib(), 1),
                }
            ),
            flush=True,
        )
        sys.stdin.read()  # until the parent closes the pipe


class _SimulatorProcess:
    def __init__(self, carts: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cart_recovery.bench.polling_load", "serve", "--carts", str(carts)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            raise RuntimeError(f"the simulator child exited ({self.process.returncode}) before listening")
        self.info = json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the measurement ----------------------------------------------------------------------------


def _forget(url: str, shop_id: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for table in ("raw.polled_records", "ops.quarantine", "ops.ingest_watermarks", "ops.validation_runs"):
            cur.execute(f"delete from {table} where shop_id = %s", (shop_id,))
    conn.close()


def run(*, carts: int = 100_000, profile: bool = False) -> dict[str, Any]:
    from cart_recovery.ingest.poll import DEFAULT_BATCH_SIZE, ingest_shop
    from cart_recovery.platforms import client_for
    from cart_recovery.shops import Shop
    from cart_recovery.simulator import DEFAULT_REFERENCE_TIME

    database = Database.from_env().with_suffix("_bench")
    child = None
    try:
        database.ensure_databases()
        migrate.upgrade(database.url)
        log.info("Generating %d carts in the simulator child ...", carts)
        child = _SimulatorProcess(carts)
        os.environ.update(child.info["env"])
        shop = Shop.model_validate(child.info["shop"])
        _forget(database.url, shop.id)

        client = client_for(shop, page_size=PAGE_SIZE)
        checkpoints = sorted({c for c in CHECKPOINTS if c < carts} | {carts})
        samples: list[dict[str, Any]] = []
        fetch = client.fetch
        clock: dict[str, float] = {}

        def counted(entity, window) -> Iterator:
            pending = list(checkpoints)
            for streamed, record in enumerate(fetch(entity, window), start=1):
                yield record
                if pending and streamed >= pending[0]:
                    pending.pop(0)
                    samples.append(
                        {
                            "carts_streamed": streamed,
                            "rss_mib": round(_rss_mib(), 1),
                            "elapsed_s": round(time.perf_counter() - clock["start"], 2),
                        }
                    )

        client.fetch = counted  # type: ignore[method-assign]
        # Warm the lazy imports (great-expectations, pandas) so that they count in the baseline.
        from cart_recovery.ingest.validation import _validation

        _validation("cart")
        baseline = _rss_mib()
        profiler = cProfile.Profile() if profile else None
        log.info("Polling %d carts from %s ...", carts, child.info["base_url"])
        clock["start"] = time.perf_counter()
        if profiler:
            profiler.enable()
        report = ingest_shop(
            shop,
            interval_end=DEFAULT_REFERENCE_TIME,
            conn_url=database.url,
            entities=["cart"],
            client=client,
        )
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - clock["start"]
        peak = _peak_rss_mib()
        with psycopg2.connect(database.url) as conn, conn.cursor() as cur:
            cur.execute(
                "select count(*) from raw.polled_records where shop_id = %s and entity = 'cart'", (shop.id,)
            )
            stored = cur.fetchone()[0]
        conn.close()
        cart = report["cart"]
        rate = cart["loaded"] / elapsed if elapsed else 0.0
        growth = samples[-1]["rss_mib"] - samples[0]["rss_mib"] if len(samples) > 1 else 0.0
        result: dict[str, Any] = {
            "workload": {
                "carts": carts,
                "platform": "shopify (GraphQL abandonedCheckouts, simulator in a child process)",
                "page_size": PAGE_SIZE,
                "load_batch_size": DEFAULT_BATCH_SIZE,
                "path": (
                    "ingest_shop -> ShopifyClient (HttpHook, prefetching thread) -> great-expectations"
                    " -> COPY to staging + insert ... on conflict do nothing"
                ),
            },
            "simulator": {
                "generate_seconds": child.info["generated_s"],
                "rss_mib": child.info["rss_mib"],
            },
            "seconds": round(elapsed, 2),
            "carts_per_second": round(rate, 1),
            "fetched": cart["fetched"],
            "loaded": cart["loaded"],
            "quarantined": cart["quarantined"],
            "rows_stored": stored,
            "http_requests": report["http"]["requests"],
            "memory": {
                "rss_before_poll_mib": round(baseline, 1),
                "samples": samples,
                "rss_growth_first_to_last_sample_mib": round(growth, 1),
                "peak_rss_mib": round(peak, 1),
                "measured_in": "the polling process only (VmRSS; peak from getrusage ru_maxrss)",
            },
            "targets": {"carts_per_second_at_least": TARGET_CARTS_PER_S, "memory": "flat as carts grow"},
            "targets_met": rate >= TARGET_CARTS_PER_S and stored == carts,
            "_database": database.url,
        }
        if profiler:
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
            result["profile_top_cumulative"] = text.getvalue()
        _forget(database.url, shop.id)  # leave the bench database as it was
        return result
    finally:
        if child is not None:
            child.close()


def main(carts: int = 100_000, *, profile: bool = False, quick: bool = False) -> dict[str, Any]:
    from cart_recovery.bench.results import write_result

    result = run(carts=carts, profile=profile)
    url = result.pop("_database")
    profile_text = result.pop("profile_top_cumulative", None)
    path = write_result(NAME, result, url, quick=quick)
    log.info("%s: %s", NAME, os.fspath(path))
    if profile_text:
        print(profile_text, file=sys.stderr)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m cart_recovery.bench.polling_load")
    parser.add_argument("action", choices=["serve", "run"])
    parser.add_argument("--carts", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true", help="cProfile the poll (slower)")
    args = parser.parse_args()
    if args.action == "serve":
        serve(args.carts)
    else:
        logging.basicConfig(level=logging.INFO)
        print(json.dumps(main(args.carts, profile=args.profile), indent=2, default=str))
