"""Writing benchmark results: one JSON file per benchmark, with the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from cart_recovery import settings


def results_dir() -> Path:
    path = settings.Paths.from_env().home / "bench" / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine(database_url: str | None) -> dict[str, Any]:
    """The machine a benchmark ran on; ``database_url`` None for one that needs no database."""
    server_version = None
    if database_url is not None:
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute("show server_version")
            server_version = cur.fetchone()[0]
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgres": server_version,
    }


def write_result(name: str, result: dict[str, Any], database_url: str | None, *, quick: bool = False) -> Path:
    """Write ``bench/results/<name>.json``; a ``--quick`` run writes ``<name>.quick.json`` instead,
    so it never replaces the reference result."""
    document = {
        "benchmark": name,
        # Wall-clock time of the measurement itself: this is a report, not pipeline logic.
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(database_url),
        **result,
    }
    path = results_dir() / f"{name}{'.quick' if quick else ''}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path
