"""``make up``'s processes serve the API with the project's DAGs listed, and stop on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from cart_recovery.environment import admin_credentials

pytestmark = pytest.mark.slow

EXPECTED_DAGS = {p.stem for p in (Path(__file__).resolve().parents[2] / "dags").glob("*.py")}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        assert process.poll() is None, f"cart-recovery up exited early with {process.returncode}"
        try:
            result = predicate()
            if result:
                return result
        except httpx.HTTPError as exc:
            last_error = exc
        time.sleep(1)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


def test_up_serves_the_dags_and_stops_on_ctrl_c(airflow_db, dbt_manifest, tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "cart-recovery"), "up", "--port", str(port)],
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    children: list[psutil.Process] = []
    try:
        _wait_for(
            lambda: httpx.get(f"{base}/api/v2/monitor/health", timeout=5).status_code == 200,
            180,
            "the api-server",
            process,
        )
        user, password = admin_credentials()
        token_response = httpx.post(
            f"{base}/auth/token", json={"username": user, "password": password}, timeout=10
        )
        assert token_response.status_code in (200, 201), token_response.text
        token = token_response.json()["access_token"]
        rejected = httpx.get(f"{base}/api/v2/dags", timeout=10)
        assert rejected.status_code == 401

        def listed_dags():
            response = httpx.get(
                f"{base}/api/v2/dags", headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
            response.raise_for_status()
            dag_ids = {dag["dag_id"] for dag in response.json()["dags"]}
            return dag_ids if dag_ids >= EXPECTED_DAGS else None

        assert _wait_for(listed_dags, 180, "the DAGs to be listed", process) >= EXPECTED_DAGS
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 4  # api-server, scheduler, dag-processor, triggerer (and their workers)
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"cart-recovery up did not stop on Ctrl-C:\n{log_path.read_text()[-3000:]}")
    assert code == 0, log_path.read_text()[-3000:]
    time.sleep(1)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"processes left running: {alive}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/api/v2/monitor/health", timeout=2)
