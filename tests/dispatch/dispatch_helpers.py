"""Helpers of the dispatcher-level tests: a real plan of the simulator's shops, a dispatcher in a
process of its own (to race it or kill it), the fake WhatsApp API's log read per plan row, and
Meta's status callbacks posted through the webhook service.

The plan is built as production builds it: the simulator's shops are polled by ``cart_ingest``
(``dag.test()``) and planned by a full dbt build. Every test then starts from an empty outbox
and fresh fakes (``reset``), so a module builds once and its tests do not see each other's sends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dbt"))

from dbt_raw_rows import run_dbt
from polling_helpers import INTERVAL_END
from warehouse_rows import execute, rows

from cart_recovery.dispatch.config import DispatchSettings
from cart_recovery.simulator import Simulator, run_simulator
from cart_recovery.simulator.whatsapp_api import load_templates

DAGS = Path(__file__).resolve().parents[2] / "dags"
AS_OF = INTERVAL_END
# The simulated history is days old: keep it sendable, and the night out of the way. The same
# values go to the environment, for dispatchers started in processes of their own.
SETTINGS = DispatchSettings(expire_after=timedelta(days=30), lookback=timedelta(days=30), quiet_hours=None)
SETTINGS_ENV = {
    "CART_RECOVERY_EXPIRE_AFTER_HOURS": str(24 * 30),
    "CART_RECOVERY_DISPATCH_LOOKBACK_DAYS": "30",
    "CART_RECOVERY_QUIET_HOURS": "off",
}
LINK_SECRET = "test-link-secret-0123456789"
PUBLIC_URL = "https://hooks.example.test"
CLICK_LINK = re.compile(re.escape(PUBLIC_URL) + r"/r/([A-Za-z0-9_-]+)")


@contextlib.contextmanager
def simulated_plan(
    tmp_path: Path, *, seed: int, carts_per_shop: int, as_of: datetime = AS_OF
) -> Iterator[Simulator]:
    """The simulator running (with its SMTP sink), its shops ingested and planned by dbt as of
    ``as_of`` (the simulated history ends there), and the environment (connections, shops file,
    link secret, dispatch settings) pointing at it. Needs the ``module_database``, ``airflow_db``
    and ``dbt_manifest`` fixtures."""
    from airflow.dag_processing.dagbag import DagBag

    with (
        run_simulator(seed=seed, carts_per_shop=carts_per_shop, smtp=True, reference_time=as_of) as sim,
        pytest.MonkeyPatch.context() as env,
    ):
        for name, value in sim.connection_env().items():
            env.setenv(name, value)
        shops_file = tmp_path / "shops.yaml"
        shops_file.write_text(sim.shops_yaml())
        env.setenv("CART_RECOVERY_SHOPS_FILE", str(shops_file))
        env.setenv("CART_RECOVERY_LINK_SECRET", LINK_SECRET)
        env.setenv("CART_RECOVERY_PUBLIC_URL", PUBLIC_URL)
        for name, value in SETTINGS_ENV.items():
            env.setenv(name, value)
        sim.whatsapp.knobs.pair_interval = 0
        ingest = DagBag(dag_folder=str(DAGS / "cart_ingest.py")).dags["cart_ingest"]
        assert ingest.test(logical_date=as_of).state == "success"
        run_dbt("build", "--full-refresh", as_of=as_of)
        yield sim


def reset(url: str, sim: Simulator) -> None:
    """An empty outbox and fresh fakes: nothing sent, no revocation, no coupon, default knobs."""
    execute(
        url,
        "truncate ops.recovery_outbox, ops.consent_revocations, ops.conversations;"
        "update ops.coupon_pool set plan_key = null, claimed_at = null where plan_key is not null",
    )
    sim.whatsapp.reset()
    sim.whatsapp.templates = load_templates()  # a test may have withdrawn one
    sim.whatsapp.knobs.pair_interval = 0
    sim.smtp.clear()
    sim.state.knobs.fail_every = 0
    sim.state.knobs.read_only_keys = False
    sim.state.coupons.clear()


def outbox(url: str, stage: int | None = None) -> dict[str, dict]:
    """The outbox by plan_key (one stage, or all)."""
    where, params = ("where stage = %s", (stage,)) if stage is not None else ("", ())
    return {row["plan_key"]: row for row in rows(url, f"select * from ops.recovery_outbox {where}", params)}


def accepted_per_plan_row(sim: Simulator) -> Counter:
    """How many messages the fake WhatsApp API accepted for each plan row (its callback data)."""
    return Counter(message.callback_data for message in sim.whatsapp.messages())


def emailed_plan_rows(sim: Simulator) -> list[tuple[str | None, str | None]]:
    """(plan_key, Message-ID) of every email the SMTP sink took: the plan row read back from the
    signed click link in its text, as the webhook service reads it when the link is opened."""
    from cart_recovery.dispatch import links

    found = []
    for message in sim.smtp.messages:
        match = CLICK_LINK.search(message.text or "")
        found.append((links.verify(links.CLICK, match.group(1)) if match else None, message.message_id))
    return found


def assert_each_sent_once(sim: Simulator, url: str) -> dict[str, dict]:
    """The exactly-once check: no plan row reached the fake WhatsApp API or the SMTP sink twice,
    and the fakes' logs and the outbox agree: a row the outbox calls sent was taken once, with the
    id recorded; a message taken belongs to a row sent, or left ``sending``/``unknown`` by a crash.
    Returns the outbox by plan_key."""
    stored = outbox(url)
    taken: Counter = Counter()
    ids: dict[str, str] = {}
    for message in sim.whatsapp.messages():
        assert message.callback_data in stored, f"a message for no outbox row: {message}"
        taken[message.callback_data] += 1
        ids[message.callback_data] = message.id
    for plan_key, message_id in emailed_plan_rows(sim):
        assert plan_key in stored, f"an email for no outbox row: {message_id}"
        taken[plan_key] += 1
        ids[plan_key] = message_id
    twice = {key: n for key, n in taken.items() if n > 1}
    assert not twice, f"plan rows sent more than once: {twice}"
    for plan_key, message_id in ids.items():
        row = stored[plan_key]
        # failed: taken, then reported undeliverable in a status callback
        assert row["status"] in ("sent", "delivered", "read", "failed", "sending", "unknown"), row
        assert row["provider_message_id"] in (None, message_id), row
        if row["status"] in ("sent", "delivered", "read", "failed"):
            assert row["provider_message_id"] == message_id, row
    sent = {key for key, row in stored.items() if row["status"] in ("sent", "delivered", "read")}
    assert sent <= set(ids), f"rows recorded as sent that no provider took: {sent - set(ids)}"
    return stored


# -- a dispatcher in a process of its own ---------------------------------------------------------

_PROCESS = """
import json, os, sys, time
from datetime import datetime
from cart_recovery.dispatch.dispatcher import dispatch_due

stage, now, url, claimer, go = sys.argv[1:6]
while go and not os.path.exists(go):
    time.sleep(0.002)
summary = dispatch_due(int(stage), datetime.fromisoformat(now), database_url=url, claimer=claimer)
print(json.dumps(summary.as_dict()))
"""


@dataclass
class DispatcherProcess:
    """``dispatch_due`` in a child Python process, with the test's environment plus ``env``."""

    stage: int
    now: datetime
    url: str
    claimer: str
    go: Path | None = None  # the child waits for this file before it starts (a start line)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def start(self) -> DispatcherProcess:
        args = [str(self.stage), self.now.isoformat(), self.url, self.claimer, str(self.go or "")]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PROCESS, *args],
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self

    def summary(self, timeout: float = 180) -> dict[str, Any]:
        """Wait for the child; its ``Summary.as_dict()``. Fails with its stderr if it failed."""
        assert self.process is not None
        out, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, err[-4000:]
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last record, its connections cut as a crashed worker's are."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.communicate(timeout=30)
        assert self.process.returncode == -signal.SIGKILL


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


# -- Meta's status callbacks, through the webhook service ---------------------------------------


def post_status(client, sim: Simulator, message_id: str, status: str, at: datetime) -> dict:
    """The fake's own status webhook for an accepted message (Meta's envelope, signed with the
    app secret), posted to the webhook service's ``/webhooks/whatsapp``."""
    from cart_recovery.simulator.whatsapp_api import meta_signature

    [message] = [m for m in sim.whatsapp.messages() if m.id == message_id]
    body = sim.whatsapp.status_body(message, status, at.timestamp())
    answer = client.post(
        "/webhooks/whatsapp",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": meta_signature(sim.whatsapp.app_secret, body),
        },
    )
    assert answer.status_code == 200, answer.text
    return answer.json()
