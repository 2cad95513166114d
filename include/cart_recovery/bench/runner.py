"""``cart-recovery bench``: run the benchmarks by name and print where their results went."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def _dbt_incremental(quick: bool) -> dict[str, Any]:
    from cart_recovery.bench import dbt_incremental

    return dbt_incremental.main(
        history=50_000 if quick else 1_000_000, new=500 if quick else 10_000, quick=quick
    )


def _webhook_ingest(quick: bool) -> dict[str, Any]:
    from cart_recovery.bench import webhook_ingest

    return webhook_ingest.main(duration_s=10 if quick else 60, quick=quick)


def _polling_load(quick: bool) -> dict[str, Any]:
    from cart_recovery.bench import polling_load

    return polling_load.main(carts=10_000 if quick else 100_000, quick=quick)


def _live_pipeline(quick: bool) -> dict[str, Any]:
    from cart_recovery.bench import live_pipeline

    return live_pipeline.main(quick=quick)


def _stage_latency(quick: bool) -> dict[str, Any]:
    from cart_recovery.bench import stage_latency

    if quick:
        return stage_latency.main(episodes=100, spread_s=120, lead_s=480, quick=True)
    return stage_latency.main()


def _dispatch_throughput(quick: bool) -> dict[str, Any]:
    from cart_recovery.bench import dispatch_throughput

    return dispatch_throughput.main(messages=1_000 if quick else 10_000, quick=quick)


def _assistant_intents(quick: bool) -> dict[str, Any]:
    from cart_recovery.bench import assistant_intents

    return assistant_intents.main(quick=quick)


BENCHMARKS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "dbt_incremental": _dbt_incremental,
    "webhook_ingest": _webhook_ingest,
    "polling_load": _polling_load,
    "live_pipeline": _live_pipeline,
    "stage_latency": _stage_latency,
    "dispatch_throughput": _dispatch_throughput,
    "assistant_intents": _assistant_intents,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "names",
        nargs="*",
        choices=[*BENCHMARKS, []],
        metavar="NAME",
        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small workloads, to check the harness (results go to <name>.quick.json)",
    )


def run(args: argparse.Namespace) -> int:
    for name in args.names or list(BENCHMARKS):
        log.info("benchmark %s%s", name, " (quick)" if args.quick else "")
        result = BENCHMARKS[name](args.quick)
        print(json.dumps({name: result}, indent=2, default=str))
    return 0
