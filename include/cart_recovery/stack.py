"""``make up``: the Airflow components of a local installation, run until Ctrl-C.

Starts the api-server (UI and REST API), scheduler, dag-processor and triggerer as child
processes sharing one environment, watches them, and on Ctrl-C (or SIGTERM) stops them and then
the embedded database if this command started it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
_STOP_TIMEOUT_S = 30


@dataclass
class AirflowStack:
    env: Mapping[str, str]
    port: int = 8080
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def command(self, component: str) -> list[str]:
        if component == "api-server":
            return ["airflow", "api-server", "--host", "127.0.0.1", "--port", str(self.port)]
        return ["airflow", component]

    def start(self) -> None:
        env = dict(self.env)
        env["AIRFLOW__API__BASE_URL"] = f"http://localhost:{self.port}"
        env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://localhost:{self.port}/execution/")
        for component in COMPONENTS:
            # Each child gets its own process group: the terminal's Ctrl-C reaches only this
            # supervisor, which then stops the children in order.
            self.processes[component] = subprocess.Popen(
                self.command(component), env=env, start_new_session=True
            )
            log.info("started %s (pid %s)", component, self.processes[component].pid)

    def failed(self) -> str | None:
        for component, process in self.processes.items():
            if process.poll() is not None:
                return f"{component} exited with code {process.returncode}"
        return None

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for component, process in self.processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %s s; killing it", component, _STOP_TIMEOUT_S)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def run_until_interrupted(self) -> int:
        stop_requested = False

        def request_stop(signum: int, _frame: object) -> None:
            nonlocal stop_requested
            stop_requested = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        self.start()
        code = 0
        try:
            while not stop_requested:
                failure = self.failed()
                if failure:
                    print(f"cart-recovery up: {failure}; stopping the rest.", file=sys.stderr)
                    code = 1
                    break
                time.sleep(0.5)
        finally:
            print("Stopping Airflow ...", file=sys.stderr)
            self.stop()
        return code
